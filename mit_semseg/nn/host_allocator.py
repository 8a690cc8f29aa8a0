"""Keep freed CPU memory in the process for reuse: glibc malloc settings for long CPU runs.

PyTorch allocates CPU tensors with the C library's ``malloc`` and frees them as soon as the
last reference goes. glibc serves every block above its mmap threshold (at most 32 MiB,
usually much less) with a fresh ``mmap`` and returns it to the kernel on ``free``, so a
training step's large activations, gradients and temporaries (one ``(2, 2048, 48, 48)``
float32 map is 36 MiB) are new pages that the kernel zeroes and faults in again, 4 KiB at a
time, on every step. :func:`keep_freed_memory` makes ``malloc`` serve large blocks from its
heap and stop trimming the heap, so each step reuses the previous step's pages. The cost:
the process keeps its peak memory until it exits, which a training process holds anyway.

``train.py`` applies it (``benchmarks/bench_train.py`` measures steps with it, as train.py
runs them); a script that trains through the library can call it once at start-up. It
changes nothing outside glibc (musl, macOS, Windows): there it returns False.
"""

from __future__ import annotations

import ctypes
import logging
import os

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt() parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # the largest value the int parameter takes


def _glibc_version() -> str | None:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or None
    except (AttributeError, ValueError, OSError):  # not glibc, or no confstr on this OS
        return None


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed blocks for reuse (no mmap per large block, no heap
    trimming). Process-wide and for the process's lifetime; calling it again is harmless.

    Returns:
        whether the settings were applied (False where the C library is not glibc).
    """
    version = _glibc_version()
    if version is None:
        logger.debug("not glibc: malloc settings left as they are")
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) == 1
    if applied:
        logger.debug("%s malloc keeps freed memory for reuse", version)
    else:
        logger.warning("%s refused the malloc settings; freed memory goes back to the "
                       "kernel (slower CPU training)", version)
    return applied
