"""keep_freed_memory(): a freed large block is reused instead of faulted in afresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mit_semseg.nn import host_allocator

# In a fresh interpreter: minor page faults of allocating, filling and freeing a 64 MiB
# tensor, the third time round (the heap settles in the first two).
_PROBE = """
import json, resource, sys
import torch
from mit_semseg.nn.host_allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults_of_one_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(16 * 2**20)  # 64 MiB of float32
    del block
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
