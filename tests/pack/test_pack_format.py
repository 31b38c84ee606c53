"""The tar writer alone: its output must read back, field by field, in tarfile and GNU tar."""

from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from fusebundle.bundle.entry import Entry, directory, regular
from fusebundle.errors import CorruptTar, UserError
from fusebundle.pack.tarball import _pax_record, header, write_entries
from fusebundle.tar import Extent, Source

CAP = bytes.fromhex("0100000200200000000000000000000000000000")


def _write(tmp_path, entries: list[Entry]) -> str:
    out = tmp_path / "out.tar"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_entries(entries, fd, True)
    finally:
        os.close(fd)
    return str(out)


def _members(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as t:
        return t.getmembers()


def test_pax_record_length_counts_itself() -> None:
    for n in range(0, 300):
        rec = _pax_record(b"path", b"x" * n)
        length, _ = rec.split(b" ", 1)
        assert int(length) == len(rec)


def test_plain_entries_are_single_ustar_blocks() -> None:
    assert len(header(directory(b"containers"))) == 512
    assert len(header(regular(b"a/config.json", b"{}"))) == 512


def test_round_trip_of_every_kind(tmp_path) -> None:
    long_dir = ("d" * 60 + "/") * 5
    src = tmp_path / "src.bin"
    src.write_bytes(b"HEAD" + b"0123456789" * 10000 + b"TAIL")
    entries = [
        directory(b"top", 0o750, 1000, 1000),
        regular(b"top/small", b"hello\n", 0o4755, 0, 0),
        Entry(path=b"top/big", type="f", mode=0o644, size=100000,
              body=Extent(Source(str(src)), 4, 100000), mtime_ns=1600000000_500000000),
        Entry(path=b"top/hard", type="h", mode=0o644, linkname=b"top/small"),
        Entry(path=b"top/sym", type="l", mode=0o777, linkname=b"../" + b"t" * 150),
        Entry(path=b"top/null", type="c", mode=0o666, devmajor=1, devminor=3),
        Entry(path=b"top/sda", type="b", mode=0o660, gid=6, devmajor=8, devminor=0),
        Entry(path=b"top/fifo", type="p", mode=0o600),
        Entry(path=(long_dir + "f" * 120).encode(), type="f", mode=0o600, size=3,
              body=b"abc"),
        Entry(path="top/ünïcødé-名前".encode(), type="f", mode=0o644, size=1, body=b"u"),
        Entry(path=b"top/cap", type="f", mode=0o755, size=2, body=b"#!",
              xattrs={"security.capability": CAP, "user.note": b"v"}),
        Entry(path=b"top/bigid", type="f", mode=0o644, uid=3_000_000, gid=4_000_000),
        Entry(path=b"top/old", type="d", mode=0o755, mtime_ns=-5_000_000_000),
    ]
    members = {m.name: m for m in _members(_write(tmp_path, entries))}
    assert members["top"].isdir() and members["top"].mode == 0o750
    assert (members["top"].uid, members["top"].gid) == (1000, 1000)
    assert members["top/small"].mode == 0o4755
    big = members["top/big"]
    assert big.size == 100000 and big.mtime == pytest.approx(1600000000.5)
    assert members["top/hard"].islnk() and members["top/hard"].linkname == "top/small"
    assert members["top/sym"].linkname == "../" + "t" * 150
    assert members["top/null"].ischr() and (members["top/null"].devmajor,
                                            members["top/null"].devminor) == (1, 3)
    assert members["top/sda"].isblk() and members["top/sda"].devmajor == 8
    assert members["top/fifo"].isfifo()
    assert (long_dir + "f" * 120) in members
    assert "top/ünïcødé-名前" in members
    cap = members["top/cap"].pax_headers
    assert cap["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == CAP
    assert members["top/bigid"].uid == 3_000_000 and members["top/bigid"].gid == 4_000_000
    assert members["top/old"].mtime == -5
    with tarfile.open(tmp_path / "out.tar") as t:
        data = t.extractfile("top/big").read()
    assert data == (b"0123456789" * 10000)


def test_gnu_tar_reads_it(tmp_path) -> None:
    path = _write(tmp_path, [
        directory(b"a"),
        Entry(path=("a/" + "n" * 200).encode(), type="f", mode=0o644, size=2, body=b"hi"),
        Entry(path=b"a/l", type="l", mode=0o777, linkname=("x" * 180).encode()),
    ])
    listing = subprocess.run(["tar", "-tvf", path], check=True, capture_output=True,
                             text=True).stdout
    assert "n" * 200 in listing and "x" * 180 in listing


def test_non_utf8_name_survives(tmp_path) -> None:
    name = b"dir/caf\xe9-" + b"z" * 100
    members = _members(_write(tmp_path, [Entry(path=name, type="f", mode=0o644)]))
    assert members[0].name.encode("utf-8", "surrogateescape") == name


def test_short_source_is_reported_not_padded(tmp_path) -> None:
    src = tmp_path / "short"
    src.write_bytes(b"x" * 10)
    with pytest.raises(CorruptTar, match="ends early"):
        _write(tmp_path, [Entry(path=b"f", type="f", mode=0o644, size=100,
                                body=Extent(Source(str(src)), 0, 100))])


def test_a_source_that_cannot_be_opened_is_one_user_line(tmp_path) -> None:
    gone = tmp_path / "gone.tar"
    with pytest.raises(UserError) as e:
        _write(tmp_path, [Entry(path=b"f", type="f", mode=0o644, size=100,
                                body=Extent(Source(str(gone)), 0, 100))])
    assert str(e.value) == f"{gone}: cannot open: No such file or directory"


def test_large_copy_through_a_pipe(tmp_path) -> None:
    # stdout may be a pipe: copy_file_range cannot write there, the writer must fall back.
    src = tmp_path / "src.bin"
    payload = os.urandom(300_000)
    src.write_bytes(payload)
    r, w = os.pipe()
    with open(tmp_path / "piped.tar", "wb") as sink:
        reader = subprocess.Popen(["cat"], stdin=r, stdout=sink)
        os.close(r)
        write_entries([Entry(path=b"f", type="f", mode=0o644, size=len(payload),
                             body=Extent(Source(str(src)), 0, len(payload)))], w, False)
        os.close(w)
        assert reader.wait(timeout=30) == 0
    with tarfile.open(tmp_path / "piped.tar") as t:
        assert t.extractfile("f").read() == payload
