"""Process-wide memory allocator setting for fast training and scoring on CPU.

PyTorch's CPU tensors come straight from `malloc`. glibc serves a block above its
mmap threshold with a fresh mapping and unmaps it when freed, so every activation of
a training step costs page faults again. For the 20 MB activations of a 100-image
ProtoNet episode, the page faults took longer than the convolutions
(docs/benchmarks.md, "Fine-tuning speed"). `keep_freed_memory` makes glibc serve
large blocks from its heap and keep freed memory for reuse. The process's resident
memory then stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30
"""Blocks up to 1 GiB come from the heap. Larger ones are still mapped."""

TRIM_THRESHOLD = 2**31 - 1
"""The heap gives memory back to the system only when 2 GiB at its top are free
(mallopt takes an int, so this is the most it accepts)."""

_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed memory, and return whether it was set.

    Does nothing on a system without glibc, or where the user set one of the
    `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` environment variables
    (their choice wins).
    """
    if platform.system() != "Linux" or any(name in os.environ for name in _ENVIRONMENT):
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    applied = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and applied
    logger.debug("glibc malloc keeps freed memory: %s", applied)
    return applied
