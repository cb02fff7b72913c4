"""lunakit.pipeline.memory: glibc keeps freed blocks for the inference commands, unless the user says otherwise."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

SNIPPET = """
import ctypes, torch
from lunakit.pipeline.memory import keep_freed_memory
print(keep_freed_memory())
# A 64 MiB block, freed and allocated again: with the heap kept, both come from the heap (same
# address region below the mmap area); glibc's default maps and unmaps it each time.
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
sbrk = libc.sbrk
sbrk.restype = ctypes.c_void_p
sbrk.argtypes = [ctypes.c_long]
block = libc.malloc(64 << 20)
print(block < sbrk(0))  # inside the heap (below its end), not a separate mapping
libc.free(block)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("tunables, expected", [(None, ["True", "True"]), ("glibc.malloc.check=0", ["False", "False"])])
def test_large_blocks_come_from_the_heap_unless_tunables_say_otherwise(tunables, expected):
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == expected
