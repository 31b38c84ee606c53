"""A graft written from its index's columns (`Members`) gives the very bytes its entries give
one by one, whatever the members hold, and reads back as the image."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import tarcorpus
from support.imagetools import RootfsBuilder

from fusebundle.bundle.view import Graft, graft_entries, members
from fusebundle.errors import CorruptTar
from fusebundle.images.flatten import merge
from fusebundle.pack import tarball
from fusebundle.pack.tarball import write_entries
from fusebundle.sources.base import ImageInfo
from fusebundle.tar.index import TarIndex

# prefix, raw, docker, resolv_link: a bundle's rootfs, init's root, a raw graft, image export
GRAFTS = [(b"containers/onboot/000-x/lower/", False, True, None),
          (b"", False, True, b"/run/resolvconf/resolv.conf"),
          (b"v/lower/", True, True, None),
          (b"", True, False, None)]


@dataclass
class Indexed:
    """An image handle over an index (no engine, no store)."""

    idx: TarIndex
    info: ImageInfo = field(default_factory=lambda: ImageInfo("local/t", "sha256:t", {}))

    def index(self) -> TarIndex:
        return self.idx


def _written(tmp_path: Path, items: list, name: str) -> tuple[bytes, int]:
    """The tar write_entries makes of `items`, and the file bytes its progress counted."""
    out = tmp_path / name
    counted: list[int] = []
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_entries(items, fd, True, counted.append)
    finally:
        os.close(fd)
    return out.read_bytes(), sum(counted)


def _same_both_ways(tmp_path: Path, idx: TarIndex) -> bytes:
    """Every graft kind of `idx`, written as Members and as entries: the same bytes."""
    for prefix, raw, docker, resolv in GRAFTS:
        g = Graft(prefix=prefix, image=Indexed(idx), raw=raw, docker=docker,  # type: ignore[arg-type]
                  resolv_link=resolv)
        fast = _written(tmp_path, [members(g)], "members.tar")
        one_by_one = _written(tmp_path, list(graft_entries(g)), "entries.tar")
        assert fast == one_by_one, (idx.tar_path, prefix, raw, docker)
        # pack's progress total, from the columns: what the writer then counts, exactly.
        files = sum(e.size for e in graft_entries(g) if e.type == "f")
        assert members(g).file_bytes() == fast[1] == files, (idx.tar_path, prefix, raw)
    return fast[0]


@pytest.fixture(autouse=True)
def _small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    # Slices of 3 members: every test crosses the writer's slice boundaries many times.
    monkeypatch.setattr(tarball, "DROP_EVERY_ENTRIES", 3)


def test_the_tar_corpus_writes_the_same_both_ways(tmp_path) -> None:
    """GNU tar's and tarfile's archives: long and non-UTF-8 names and links, hard links,
    devices, FIFOs, xattrs, sub-second and out-of-range mtimes, large ids, sparse files."""
    written = 0
    (tmp_path / "corpus").mkdir()
    for path in tarcorpus.build(tmp_path / "corpus"):
        idx = TarIndex.scan(str(path), sparse=True)
        _same_both_ways(tmp_path, idx)
        written += 1
    assert written >= 3


def _docker_tree(tmp_path: Path) -> TarIndex:
    r = RootfsBuilder()
    r.file(".dockerenv", "").dir("dev").chardev("dev/console", 5, 1).dir("dev/pts")
    r.dir("etc").file("etc/hostname", "h\n").file("etc/hosts", "image hosts\n")
    r.symlink("etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf")
    r.hardlink("console-copy", "dev/console").file("etc/mtab", "m").dir("proc").dir("sys")
    r.file("Dockerfile", "FROM scratch\n").hardlink("etc/hostname-link", "etc/hostname")
    r.dir("d").file("d/sub-second", "x", mtime=1600000000, pax={"mtime": "1600000000.5"})
    r.file("d/big-uid", "u", uid=0o7777777 + 1).file("d/xattr", "a", xattrs={"user.k": "v"})
    r.file("d/" + "n" * 97, "fits alone, not under a prefix").file("d/ünï", "ü")
    r.symlink("d/far", "t/" * 60).file("d/empty", "").file("d/large", b"L" * 70_000)
    for n in range(300):  # more small bytes than one window: it is read again part way
        r.file(f"d/s{n:03d}", bytes([n % 256]) * (n * 37 % 5000))
    r.fifo("d/fifo").blockdev("d/sda", 8, 0)
    path = r.write(tmp_path / "docker.tar")
    return TarIndex.scan(str(path))


def test_docker_artefacts_and_odd_members_write_the_same_both_ways(tmp_path) -> None:
    data = _same_both_ways(tmp_path, _docker_tree(tmp_path))
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        got = {m.name: m for m in t.getmembers()}
        assert t.extractfile("d/s299").read() == bytes([299 % 256]) * (299 * 37 % 5000)
        assert t.extractfile("d/large").read() == b"L" * 70_000
    assert "d/fifo" in got and got["d/sda"].isblk() and got["console-copy"].islnk()


def test_a_merged_image_reads_each_member_from_its_own_layer(tmp_path) -> None:
    lower = RootfsBuilder().dir("a").file("a/kept", "lower kept").file("a/over", "lower")
    lower.file("a/gone", "lower gone")
    upper = RootfsBuilder().dir("a").file("a/over", "upper").file("a/.wh.gone", "")
    upper.file("a/new", "upper new")
    layers = []
    for n, b in enumerate((lower, upper)):
        layers.append(TarIndex.scan(str(b.write(tmp_path / f"layer{n}.tar"))))
    m = merge(layers, [f"sha256:{n:064x}" for n in range(2)], "t", str(tmp_path / "m.idx"))
    m.save()  # the columns are then read from the mapped file, as a pack reads them
    data = _same_both_ways(tmp_path, m)
    tar = tmp_path / "members.tar"
    tar.write_bytes(data)
    with tarfile.open(tar) as t:
        assert t.extractfile("a/kept").read() == b"lower kept"
        assert t.extractfile("a/over").read() == b"upper"
        assert t.extractfile("a/new").read() == b"upper new"
        assert "a/gone" not in t.getnames()


def test_a_short_source_is_the_same_one_line_both_ways(tmp_path) -> None:
    r = RootfsBuilder().dir("d")
    for n in range(20):
        r.file(f"d/f{n}", bytes(1000))
    path = r.write(tmp_path / "short.tar")
    idx = TarIndex.scan(str(path))
    os.truncate(path, 12 * 1024)  # within the files' data
    g = Graft(prefix=b"p/", image=Indexed(idx))  # type: ignore[arg-type]
    errors = []
    for items in ([members(g)], list(graft_entries(g))):
        with pytest.raises(CorruptTar) as e:
            _written(tmp_path, items, "short-out.tar")
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    assert "ends early" in errors[0] and str(path) in errors[0]
