"""What the ``tools/`` entry points share: process settings, and errors a user can fix printed
as a message alone.

:func:`configure_process` applies the settings that belong to the whole process before any
work: ``cpu_allocator`` (:mod:`detector.utils.cpu_memory`; ``retain`` by default).

Hydra prints "Error executing job with overrides: [...]" and a traceback for any exception a
task raises. For the errors that describe bad input (a config value, a missing folder or file,
dirty data, a diverged run, a failed final evaluation) the message itself says what to fix, so
:func:`user_errors` prints just ``Error: <message>`` and exits with status 1. Other exceptions
(bugs) keep Hydra's traceback, and ``HYDRA_FULL_ERROR=1`` gives the full traceback for every
error, as Hydra users expect.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from omegaconf import DictConfig

from detector.utils.cpu_memory import configure_cpu_allocator

logger = logging.getLogger(__name__)


class UserError(Exception):
    """An error whose message tells the user what to fix (e.g. a failed final evaluation)."""


#: Exceptions whose message is the whole story for a user.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # ConfigError, DatasetError, bad values
    OSError,  # missing files and folders, undecodable images, full disks
    FloatingPointError,  # diverged training (names the last good checkpoint)
    UserError,
)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn :data:`USER_ERRORS` into ``Error: <message>`` on stderr and exit status 1 (unless
    ``HYDRA_FULL_ERROR=1``, which keeps the traceback)."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {err}", file=sys.stderr, flush=True)
        print("(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr, flush=True)
        sys.exit(1)


def configure_process(cfg: DictConfig) -> None:
    """Apply ``cfg.cpu_allocator`` (``retain`` | ``system``; ``retain`` when absent)."""
    mode = str(cfg.get("cpu_allocator", "retain"))
    if not configure_cpu_allocator(mode):
        return
    if mode == "retain":
        logger.info(
            "cpu_allocator=retain: freed CPU memory stays in the process (no page faults "
            "after the first iteration; cpu_allocator=system turns it off)"
        )
    else:  # an earlier job of this process (a sweep) retained
        logger.info("cpu_allocator=system: glibc's thresholds set back (mmap above 32 MiB)")
