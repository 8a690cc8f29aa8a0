"""keep_freed_memory(): a freed large block is reused instead of faulted in afresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mit_semseg.nn import host_allocator

# In a fresh interpreter: minor page faults of malloc'ing, filling and freeing a 64 MiB block,
# the third time round. The block comes from the C library's malloc itself: torch's
# posix_memalign asks for a little more than a freed block of the same tensor size, so which
# round reuses which freed block depends on the heap's layout, while the setting under test
# (large blocks from the heap, no trimming) is glibc's.
_PROBE = """
import ctypes, json, resource, sys
from mit_semseg.nn.host_allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def faults_of_one_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(64 * 2**20)
    ctypes.memset(block, 1, 64 * 2**20)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_one_block()
faults_of_one_block()
print(json.dumps({"applied": applied, "faults": faults_of_one_block()}))
"""
PAGES_PER_BLOCK = 64 * 2**20 // 4096


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(host_allocator._glibc_version() is None, reason="glibc only")
def test_a_freed_block_is_reused_without_page_faults():
    default = _probe("default")
    assert default["faults"] > PAGES_PER_BLOCK // 2  # glibc maps and unmaps it every time
    kept = _probe("keep")
    assert kept["applied"] is True
    assert kept["faults"] < PAGES_PER_BLOCK // 20


def test_elsewhere_it_changes_nothing(monkeypatch):
    monkeypatch.setattr(host_allocator, "_glibc_version", lambda: None)
    assert host_allocator.keep_freed_memory() is False
