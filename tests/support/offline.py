"""Running the CLI without an engine (configs of files: only), bounded in time and memory."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MEMORY = 1 << 30  # address space of one hostile run: far above what a bounded run needs


def _limits(memory: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def run_fb(cache: Path, *args: str | os.PathLike, timeout: float = 60,
           memory: int = MEMORY) -> subprocess.CompletedProcess:
    """The CLI with a store at `cache`, no engine (a socket that is not there), bounded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = f"unix://{cache}/no-engine.sock"
    env["FUSEBUNDLE_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "fusebundle", *map(os.fspath, args)],
                          env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False,
                          preexec_fn=lambda: _limits(memory))


def one_line(r: subprocess.CompletedProcess, *words: str, code: int = 1) -> str:
    """Assert a failure with exactly one fusebundle line on stderr holding `words`."""
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("fusebundle: ") and "internal error" not in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def store_listable(cache: Path) -> None:
    """`cache ls` still works on the store the run used."""
    r = run_fb(cache, "cache", "ls")
    assert r.returncode == 0, r.stderr
