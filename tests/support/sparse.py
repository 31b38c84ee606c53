"""A layer with a sparse file in it, written by GNU tar in the format asked for."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

MIB = 1 << 20


def sparse_file(path: Path) -> bytes:
    """An 8 MiB file that is mostly holes, with data at its start, middle and end."""
    with open(path, "wb") as f:
        for offset, data in ((0, b"head" * 1000), (3 * MIB + 7, b"middle" * 3000),
                             (8 * MIB - 5000, b"tail!" * 1000)):
            f.seek(offset)
            f.write(data)
    return path.read_bytes()


def sparse_layer(tmp: Path, fmt: str, version: str | None) -> tuple[Path, bytes]:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    root = tmp / f"root-{fmt}-{version}"
    (root / "data").mkdir(parents=True)
    want = sparse_file(root / "data" / "sparse.bin")
    (root / "data" / "plain.txt").write_text("plain\n")
    out = tmp / f"layer-{fmt}-{version}.tar"
    cmd = ["tar", "--sparse", f"--format={fmt}", "--owner=0", "--group=0", "--numeric-owner",
           "--mtime=@1600000000", "-C", str(root), "-cf", str(out), "data"]
    if version:
        cmd.insert(2, f"--sparse-version={version}")
    subprocess.run(cmd, check=True)
    assert out.stat().st_size < 2 * MIB  # really stored sparse, not as 8 MiB of zeros
    return out, want
