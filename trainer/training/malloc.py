"""Keep freed large buffers in the process instead of handing them back to the kernel.

glibc serves every allocation above ~32 MB with a fresh mmap and unmaps it on free, so
each (batch, d_sae) temporary of a training step (about ten of 128 MB at 4096 x 8192) is
page-faulted in and zeroed by the kernel again on every step: ~350,000 page faults and
about half of a d_in=640 CPU step (benchmarks/train_step.py). Turning off mmap for large
blocks and never trimming the heap lets the allocator reuse those buffers. The cost: the
process keeps its peak memory until it exits, which is what a training process wants.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Tell glibc to reuse freed large blocks (idempotent); False where that is not glibc."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = ok
    log.debug("glibc mallopt keep-freed-memory: %s", ok)
    return ok
