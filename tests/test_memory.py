"""keep_freed_memory (fewshot/memory.py): freed tensors' memory is reused without page faults."""

import subprocess
import sys

import pytest

ALLOCATE = """
import resource, sys, torch
from fewshot.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
# A 20-way meta-batch's first-block activations, 48 MB: more than glibc's own mmap threshold ever grows to (32 MB)
activations = lambda: torch.ones(16 * 60, 64, 14, 14).sum()
for _ in range(10):  # the heap grows to what they need
    activations()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    activations()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple:
    output = subprocess.run([sys.executable, "-c", ALLOCATE, mode], capture_output=True, text=True, check=True)
    kept, faults = output.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults():
    kept, faults_kept = page_faults("keep")
    _, faults_default = page_faults("default")
    assert kept == "True"
    assert faults_default > 10 * 48_000_000 / 4096 > 4 * faults_kept, (faults_kept, faults_default)  # a fault a page
