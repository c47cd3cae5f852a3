"""What the ``tools/`` entry points share: errors a user can fix are printed as a message alone.

Hydra prints "Error executing job with overrides: [...]" and a traceback for any exception a
task raises. For the errors that describe bad input (a config value, a missing folder or file,
dirty data, a diverged run, a failed final evaluation) the message itself says what to fix, so
:func:`user_errors` prints just ``Error: <message>`` and exits with status 1. Other exceptions
(bugs) keep Hydra's traceback, and ``HYDRA_FULL_ERROR=1`` gives the full traceback for every
error, as Hydra users expect.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


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
