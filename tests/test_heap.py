"""heap.give_back: freed heap pages go back to the system (RssAnon of a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
from fusebundle import heap

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1])

big = bytearray(16 << 20)  # mapped on its own; freeing it raises glibc's mmap threshold
del big
blocks, pins = [], []
for _ in range(100):  # 50 MB now from the heap, each block held in place by a small one after
    blocks.append(bytearray(512 << 10))
    pins.append(bytearray(4096))  # so no freed block is the heap's top, which free() trims
del blocks
before = anon()
heap.give_back()
print(before, anon())
"""


def test_give_back_returns_freed_heap_pages() -> None:
    r = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    before, after = map(int, r.stdout.split())
    assert before - after > 40_000, (before, after)  # kB: most of the 50 MB freed
