"""Allocator settings for the long inference commands (`lunakit analyze`, `lunakit validate`).

glibc serves every block above its mmap threshold (at most 32 MiB: each U-Net and classifier
activation of a batch) with a fresh mmap and unmaps it on free, so the kernel zeroes every
page again on first touch. For a process that runs the same batches over and over, that page
zeroing costs as much as the convolutions (luna_infer does the same; docs/pipeline.md,
Benchmarks). Keeping freed memory in the heap trades it for a higher resident peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse; False where it does not apply (not glibc, or
    the user set GLIBC_TUNABLES, which wins)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or "GLIBC_TUNABLES" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 1 << 30) and mallopt(_M_TOP_PAD, 64 << 20))
