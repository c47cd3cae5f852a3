"""The C library's allocator on CPU: keep freed memory in the process instead of returning it.

Every activation of a CPU forward pass is a fresh tensor. glibc's ``malloc`` serves blocks above
its mmap threshold (128 KiB at start, raised up to 32 MiB as such blocks are freed) with a new
``mmap`` and returns them to the kernel on ``free``; it also trims the top of its heap once more
than twice that threshold is free. The next call then gets fresh pages again, and the kernel
zero-fills each 4 KiB page on first touch (a minor page fault). An R50-FPN inference at 800 px
touches about 190,000 such pages per image and torchvision's twin about 550,000 (counted with
``getrusage``); on this project's 2-core VM a fault costs about 3 us, so they are a fifth of our
inference time and a third of torchvision's (docs/benchmarks.md, ``run=[allocator]``).

:func:`retain_freed_memory` sets ``mallopt(M_MMAP_MAX, 0)`` (every block from the heap) and
``mallopt(M_TRIM_THRESHOLD, INT_MAX)`` (the heap never shrinks): after the first call the
process reuses its own pages and takes no page faults. This is what PyTorch's CPU launcher
(``torch.backends.xeon.run_cpu``) does by preloading jemalloc or tcmalloc configured to never
return memory, done here with glibc alone. The price: the process keeps its peak heap
(resident memory does not shrink after a large batch). Arithmetic is unchanged, so results stay
bit-identical. Processes forked afterwards (DataLoader workers) inherit the setting, so each
keeps its own peak heap too. Only glibc has these knobs; elsewhere (macOS, Windows, musl) it does
nothing and says so.

:func:`glibc_default_malloc` sets thresholds with glibc's steady-state behaviour (mmap above
32 MiB, trim above 64 MiB free) for A/B timing in one process (``detector.benchmarks.allocator``)
and to undo ``retain``. These are fixed thresholds: glibc's dynamic threshold, which starts at
128 KiB and follows the blocks freed, is not switched back on (mallopt cannot).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: mallopt takes a C int
INT_MAX = (1 << 31) - 1
#: glibc's defaults for M_MMAP_MAX, and where its dynamic mmap threshold stops (64-bit)
GLIBC_MMAP_MAX = 65536
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20

#: the config values of ``cpu_allocator``
MODES = ("retain", "system")
#: what this module last set: "system" until :func:`retain_freed_memory` runs
_state = {"mode": "system"}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc with ``mallopt``, else ``None``."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def glibc_available() -> bool:
    """Whether this process's allocator can be tuned (Linux with glibc)."""
    return _glibc() is not None


def _mallopt(libc: ctypes.CDLL, param: int, value: int) -> None:
    if libc.mallopt(param, value) != 1:
        raise OSError(f"mallopt({param}, {value}) failed")


def retain_freed_memory() -> bool:
    """Keep freed memory in the process (see the module doc); ``False`` where not glibc."""
    libc = _glibc()
    if libc is None:
        logger.info(
            "cpu_allocator=retain: not glibc (%s), the C allocator is left as it is",
            platform.libc_ver()[0] or sys.platform,
        )
        return False
    _state["mode"] = "retain"  # set first: a failure below leaves it partly applied
    _mallopt(libc, M_MMAP_MAX, 0)
    _mallopt(libc, M_TRIM_THRESHOLD, INT_MAX)
    return True


def glibc_default_malloc() -> bool:
    """glibc's steady-state thresholds (mmap above 32 MiB, trim above 64 MiB), freed memory
    returned now; ``False`` where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    _mallopt(libc, M_MMAP_MAX, GLIBC_MMAP_MAX)
    _mallopt(libc, M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)
    _mallopt(libc, M_TRIM_THRESHOLD, 2 * GLIBC_MMAP_THRESHOLD_MAX)
    libc.malloc_trim(0)
    _state["mode"] = "system"
    return True


def configure_cpu_allocator(mode: str) -> bool:
    """Apply the ``cpu_allocator`` config value: ``retain`` (:func:`retain_freed_memory`) or
    ``system`` (leave the C library's allocator alone; if this process retained before, e.g. an
    earlier job of a Hydra sweep, :func:`glibc_default_malloc`). Returns whether anything was
    changed."""
    if mode not in MODES:
        raise ValueError(f"cpu_allocator must be one of {MODES}, got {mode!r}")
    if mode == "retain":
        return retain_freed_memory()
    if _state["mode"] == "retain":  # an earlier job of this process retained (a Hydra sweep)
        return glibc_default_malloc()
    return False


def current_mode() -> str:
    """``retain`` after :func:`retain_freed_memory` took effect, else ``system``."""
    return _state["mode"]


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far (``getrusage``); ``None`` where there is no
    ``resource`` module (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
