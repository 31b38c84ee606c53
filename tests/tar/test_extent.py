"""tar.extent: where a regular file's bytes are, read one way for dense and sparse members,
and the guard that says when a source no longer holds the offsets."""

from __future__ import annotations

import array
import errno
import io
import os
import tarfile

import pytest

from fusebundle.errors import UserError
from fusebundle.tar import Extent, Source, SourceFds, TarIndex, body_size, read_sparse


def _sparse_file(tmp_path) -> tuple[Extent, bytes]:
    """A sparse member's stored bytes and its map, and the file it stands for."""
    stored = b"ABCDEFGHIJ"
    path = tmp_path / "stored"
    path.write_bytes(b"\xff" * 7 + stored)  # offset 7: the map's fragments start there
    frags = array.array("q", [3, 4, 100, 6])  # 4 bytes at 3, then 6 at 100
    want = bytearray(120)
    want[3:7] = stored[:4]
    want[100:106] = stored[4:]
    return Extent(Source(str(path)), 7, 120, frags), bytes(want)


def test_a_sparse_extent_reads_as_read_sparse_does_at_every_window(tmp_path) -> None:
    ext, want = _sparse_file(tmp_path)
    with open(ext.source.path, "rb") as f:
        fd = f.fileno()
        for pos in range(0, 121, 5):
            for n in (1, 4, 13, 200):
                buf = bytearray(n)
                got = ext.read_into(fd, pos, memoryview(buf))
                assert got == max(0, min(n, 120 - pos))
                assert bytes(buf[:got]) == want[pos : pos + n]
                assert bytes(buf[:got]) == read_sparse(fd, 7, ext.fragments, 120, pos, n)
        assert b"".join(ext.chunks(fd, 16)) == want


def test_a_dense_extent_is_its_one_run(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"head" + b"0123456789" + b"tail")
    ext = Extent(Source(str(path)), 4, 10)
    assert list(ext.runs(2, 5)) == [(2, 6, 5)]
    assert list(ext.runs(8, 100)) == [(8, 12, 2)]
    assert ext.span() == (4, 14)
    with open(path, "rb") as f:
        assert bytes(ext.read(f.fileno(), 3, 100)) == b"3456789"
        buf = bytearray(20)
        assert ext.read_into(f.fileno(), 0, memoryview(buf)) == 10
        assert bytes(buf[:10]) == b"0123456789"


def test_runs_skip_holes_and_span_counts_stored_bytes(tmp_path) -> None:
    ext, _ = _sparse_file(tmp_path)
    assert list(ext.runs(0, 120)) == [(3, 7, 4), (100, 11, 6)]
    assert list(ext.runs(5, 97)) == [(5, 9, 2), (100, 11, 2)]
    assert list(ext.runs(10, 50)) == []  # all hole
    assert ext.span() == (7, 17)


def test_a_short_source_is_a_short_count_and_chunks_stop(tmp_path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"x" * 10)
    dense = Extent(Source(str(path)), 4, 100)
    sparse = Extent(Source(str(path)), 4, 100, array.array("q", [0, 4, 50, 40]))
    with open(path, "rb") as f:
        for ext in (dense, sparse):
            buf = memoryview(bytearray(100))
            assert ext.read_into(f.fileno(), 0, buf) < 100
            with pytest.raises(EOFError):
                list(ext.chunks(f.fileno()))


def test_members_of_a_real_tar_read_through_their_extents(tmp_path) -> None:
    path = tmp_path / "t.tar"
    payloads = {f"f{n}": os.urandom(n * 1000 + 1) for n in range(5)}
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as t:
        for name, data in payloads.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    idx = TarIndex.scan(str(path))
    with open(path, "rb") as f:
        for i, e in enumerate(idx):
            ext = idx.extent(i)
            assert ext == idx.extent_of(e)
            assert ext.source is idx.source(str(path))  # one Source per file, shared
            assert b"".join(ext.chunks(f.fileno(), 777)) == payloads[e.name.decode()]


def test_the_guard_of_an_indexed_tar(tmp_path) -> None:
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as t:
        info = tarfile.TarInfo("a")
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    idx = TarIndex.scan(str(path))
    ext = idx.extent(0)
    assert ext.source.indexed and ext.source.changed() is None
    with open(path, "ab") as f:
        f.write(b"\0" * 512)
    assert ext.source.changed() == f"{path}: changed or removed since it was indexed"
    os.unlink(path)
    assert ext.source.changed() == f"{path}: changed or removed since it was indexed"


def test_the_guard_of_a_whole_file(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    ext = Extent.whole(str(path), 5)
    assert not ext.source.indexed and ext.source.changed() is None
    path.write_bytes(b"123")
    assert ext.source.changed() == f"{path}: its size changed from 5 to 3 bytes"
    os.unlink(path)
    assert ext.source.changed() == f"{path}: No such file or directory"


def test_the_file_view_seeks_reads_and_refuses_a_short_source(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"..hello world")
    with Extent(Source(str(path)), 2, 11).open(lambda: UserError("short")) as f:
        assert f.read(5) == b"hello"
        assert f.seek(-5, io.SEEK_END) == 6 and f.read() == b"world"
        f.seek(0)
        buf = bytearray(20)
        assert f.readinto(buf) == 11 and bytes(buf[:11]) == b"hello world"
    with Extent(Source(str(path)), 2, 50).open(lambda: UserError("short")) as f, \
            pytest.raises(UserError, match="short"):
        f.read()


def test_body_size_is_the_file_size_not_the_tuple_length(tmp_path) -> None:
    assert body_size(Extent(Source("x"), 0, 1000)) == 1000
    assert body_size(b"abc") == 3 and body_size(None) == 0


class _Refused(Exception):
    """A caller's own error for a source that cannot be opened."""


def test_source_fds_open_each_source_once_until_closed(tmp_path) -> None:
    path = tmp_path / "src"
    path.write_bytes(b"bytes")
    fds = SourceFds(_Refused)
    assert fds.opened(str(path)) == -1  # asking opens nothing
    fd = fds.fd(str(path))
    assert fds.fd(str(path)) == fd and fds.opened(str(path)) == fd
    assert os.pread(fd, 5, 0) == b"bytes"
    fds.close()
    assert fds.opened(str(path)) == -1
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF


def test_source_fds_say_a_failed_open_in_the_callers_error(tmp_path) -> None:
    missing = tmp_path / "gone.tar"
    for error in (_Refused, UserError):
        with pytest.raises(error) as e:
            SourceFds(error).fd(str(missing))
        assert str(e.value) == f"{missing}: cannot open: No such file or directory"
