"""The CLI as a process of its own, bounded in address space and time, its peak RSS measured.

A child forked from pytest starts with pytest's resident pages counted in its peak (Linux keeps
the high-water mark across exec), so a test suite grown to 350 MiB would read as a 350 MiB CLI.
A fresh small Python forks the CLI instead, waits for it and writes its `ru_maxrss` to a file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_LAUNCHER = """
import os, resource, signal, sys
rss_file, memory, seconds, *argv = sys.argv[1:]
resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *argv])
signal.signal(signal.SIGALRM, lambda *_: os.kill(pid, signal.SIGKILL))
signal.alarm(int(seconds))
_, status, usage = os.wait4(pid, 0)
with open(rss_file, "w") as f:
    f.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


@dataclass
class Measured:
    """One bounded run: exit status, stderr, wall seconds and peak RSS in bytes."""

    returncode: int
    stderr: str
    seconds: float
    rss: int


def run_measured(args: list[str], env: dict[str, str], *, memory: int, timeout: int,
                 scratch: Path) -> Measured:
    """`python -m fusebundle ARGS` limited to `memory` bytes of address space and `timeout`
    seconds; fails the test if the time ran out."""
    rss = scratch / f"rss.{time.monotonic_ns()}"
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss), str(memory), str(timeout),
                        "-m", "fusebundle", *args], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout + 30, check=False)
    assert r.returncode != -signal.SIGKILL % 256, f"{args} killed after {timeout} s: {r.stderr}"
    seconds = time.monotonic() - start
    return Measured(r.returncode, r.stderr, seconds, int(rss.read_text()))
