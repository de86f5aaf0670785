"""The allocator thresholds the embedding loop sets: freed batch-sized blocks are reused."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

_ALLOCATE = r"""
import resource, sys
import torch
from bilaf.features._memory import retain_freed_memory
retained = retain_freed_memory() if sys.argv[1] == "retain" else None
def batch():  # an activation-sized tensor (32 MB), allocated and freed like each batch's
    block = torch.ones(64, 32, 64, 64)
    del block
for _ in range(6):  # warm-up: the heap settles after two or three blocks (small allocations interleave)
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    batch()
print(retained, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _ALLOCATE, mode], check=True, capture_output=True, text=True)
    retained, faults = out.stdout.split()
    return retained, int(faults)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's"
)
def test_freed_batch_sized_blocks_are_reused_instead_of_faulted_in_again():
    _, default_faults = _faults("default")
    retained, retained_faults = _faults("retain")
    assert retained == "True"
    # Once settled, every default block is faulted in anew (6 x 8,192 pages); retained ones are reused.
    assert retained_faults * 3 < default_faults, (retained_faults, default_faults)
