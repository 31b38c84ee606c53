"""colfile.scratch: a writable mapping backed by an unnamed file, whose written pages can leave
our RSS (drop_range) and are saved piece by piece (write), and the one-layer merge's use of it.
Read from /proc/self/maps and /proc/self/smaps: what backs the mapping, and what of it is ours.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from support.trees import mapped_layer

from fusebundle.images.flatten import merge
from fusebundle.tar import colfile

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def _region(m: mmap.mmap) -> tuple[str, int]:
    """The path backing mapping m (as /proc/self/maps names it) and its resident kB."""
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for k, line in enumerate(lines):
        head = line.split()
        if "-" not in head[0] or len(head) < 5:
            continue
        lo, hi = (int(x, 16) for x in head[0].split("-"))
        if lo <= addr < hi:
            rss = next(int(x.split()[1]) for x in lines[k + 1:] if x.startswith("Rss:"))
            return " ".join(head[5:]), rss
    raise AssertionError("mapping not found in /proc/self/smaps")


def test_scratch_is_an_unnamed_file_in_the_directory_and_leaves_nothing(tmp_path: Path) -> None:
    m = colfile.scratch(8 * MIB, str(tmp_path))
    backing, _ = _region(m)
    assert backing.startswith(str(tmp_path) + "/") and backing.endswith("(deleted)"), backing
    assert os.listdir(tmp_path) == []
    m.close()


def test_written_pages_leave_rss_and_keep_their_bytes(tmp_path: Path) -> None:
    m = colfile.scratch(8 * MIB + 100, str(tmp_path))
    data = os.urandom(8 * MIB + 100)
    m[:] = data
    assert _region(m)[1] >= 8 * 1024  # written: every page is ours
    mark = colfile.drop_range(m, 0, 5 * MIB + 7)  # the cut page may still be written
    assert mark == 5 * MIB
    mark = colfile.drop_range(m, mark, len(m))
    assert mark == len(m)
    assert _region(m)[1] < 64  # kB: gone from our RSS (a page or two of smaps' own reading)
    assert m[:] == data  # and back from the page cache when read
    m.close()


def test_a_mapped_blob_is_saved_whole_and_leaves_rss(tmp_path: Path) -> None:
    blob = colfile.scratch(9 * MIB + 5, str(tmp_path))
    blob[:] = bytes(range(256)) * (len(blob) // 256) + b"x" * (len(blob) % 256)
    out = tmp_path / "f.col"
    colfile.write(str(out), b"TESTCOL", 1, b"meta", [("names", "s", blob)])
    assert _region(blob)[1] < 64, "the save mapped the whole blob into our RSS"
    got = colfile.read(str(out), b"TESTCOL", 1)
    assert got is not None and bytes(got["names"]) == blob[:]
    assert zlib.crc32(bytes(got["names"])) == zlib.crc32(blob[:])
    blob.close()


def test_where_no_file_can_be_made_the_mapping_is_anonymous(tmp_path: Path) -> None:
    m = colfile.scratch(MIB, str(tmp_path / "missing"))  # as a read-only store refuses one
    m[:4] = b"abcd"
    assert m[:4] == b"abcd" and _region(m)[0].startswith("/dev/zero")
    m.close()


_FILL = r"""
import sys
from fusebundle.tar import colfile
m = colfile.scratch(8 << 20, sys.argv[1])
m[:] = b"x" * len(m)  # on a sparse file the disk cannot hold: SIGBUS here
print(m[-1:].decode())
"""


def test_a_full_disk_gets_an_anonymous_mapping_not_a_sigbus(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        r = subprocess.run([sys.executable, "-c", _FILL, str(small)], capture_output=True,
                           text=True, timeout=60, check=False,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert (r.returncode, r.stdout) == (0, "x\n"), (r.returncode, r.stderr[-300:])
        assert os.listdir(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_one_layer_merge_builds_its_names_beside_the_merged_index(tmp_path: Path) -> None:
    idx = mapped_layer(tmp_path / "layer.tar", 3000, "file-with-a-longish-name-{i:06d}")
    out = tmp_path / "merged"
    out.mkdir()
    m = merge([idx], ["sha256:" + "0" * 64], "img", str(out / "m.idx"))
    assert isinstance(m._names, mmap.mmap)
    backing, rss = _region(m._names)
    assert backing.startswith(str(out) + "/") and backing.endswith("(deleted)"), backing
    assert rss * 1024 < len(m._names) // 2, (rss, len(m._names))
    assert os.listdir(out) == []
