"""The exit status after an interrupt, under `python -m fusebundle` as the tests and many
wrappers run it: 130 for Ctrl-C and 143 for SIGTERM, never a death by signal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# A command whose work is interrupted inside a string `exec`, as an import that builds a
# dataclass or a namedtuple is when Ctrl-C lands at that moment (CI saw it once: -2).
_PROBE = """
from fusebundle.cli import commands

def interrupted(args):
    exec("raise {error}")

real = commands.parse
def parse(argv=None):
    args = real(["cache", "ls"])
    args.run = interrupted
    return args

commands.parse = parse
raise SystemExit(commands.main())
"""


@pytest.mark.parametrize(("error", "status", "word"), [
    ("KeyboardInterrupt", 130, "interrupted"),
    ("commands._Terminated", 143, "terminated"),
])
def test_interrupt_in_a_string_exec_keeps_the_status(tmp_path: Path, error: str, status: int,
                                                    word: str) -> None:
    (tmp_path / "probe.py").write_text(_PROBE.format(error=error))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]),
               FUSEBUNDLE_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "probe"], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == status, (r.returncode, r.stderr)
    assert r.stderr == f"fusebundle: {word}\n"
