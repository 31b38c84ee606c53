"""Flattening layers into an export-like index (fusebundle.images.flatten).

Unit tests write layer tars with tarfile (imagetools.RootfsBuilder) and state by hand what the
merged tree must be; the docker tests compare against `docker export` of a container made from
images built by a private dockerd, and against `umoci unpack` where the engine is the odd one
out.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from support.imagetools import T0, T1, RootfsBuilder, docker_archive
from support.trees import INIT_NAMES, data, mapped_layer, tree_of_dir, tree_of_merged

from fusebundle.bundle import view
from fusebundle.errors import CorruptTar, UserError
from fusebundle.images import flatten as L
from fusebundle.images.flatten import MergedIndex, merge
from fusebundle.tar.index import TarIndex

PINNED = 1492533000 * 10**9
CAP_V2 = bytes.fromhex("01000002") + bytes.fromhex("00200000") + bytes(12)  # cap_net_bind_service
CAP_V3 = bytes.fromhex("01000003") + bytes.fromhex("00200000") + bytes(12) + (1000).to_bytes(4,
                                                                                        "little")


def layer_files(tmp: Path, *builders: RootfsBuilder) -> list[TarIndex]:
    out = []
    for n, b in enumerate(builders):
        p = tmp / f"layer{n}.tar"
        b.write(p)
        out.append(TarIndex.scan(str(p)))
    return out


def flatten(tmp: Path, *builders: RootfsBuilder, **kw: Any) -> MergedIndex:
    idx = layer_files(tmp, *builders)
    return merge(idx, [f"sha256:{n:064x}" for n in range(len(idx))], "fbtest/img:1",
                 str(tmp / "merged.idx"), **kw)


def rows(idx: TarIndex, init: bool = False) -> list[tuple]:
    """(name, type, mode, uid, gid, size, mtime, link, dev, xattrs, bytes) in index order."""
    out = []
    for i, e in enumerate(idx):
        if not init and e.name in INIT_NAMES:
            continue
        out.append((e.name, e.type, e.mode, e.uid, e.gid, e.size, e.mtime_ns, e.linkname,
                    (e.devmajor, e.devminor), e.xattrs, data(idx, i) if e.type == "f" else None))
    return out


def names(idx: TarIndex, init: bool = False) -> list[bytes]:
    return [r[0] for r in rows(idx, init)]


def by_name(idx: TarIndex) -> dict[bytes, tuple]:
    return {r[0]: r for r in rows(idx, init=True)}


T0NS, T1NS = T0 * 10**9, T1 * 10**9


# ------------------------------------------------------------------------------ layer rules
def test_whiteout_hides_lower_file_and_dir_and_never_shows(tmp_path: Path) -> None:
    low = (RootfsBuilder().dir("a").file("a/f", "x").file("a/g", "g").dir("a/d")
           .file("a/d/deep", "d").file("top", "t"))
    up = RootfsBuilder().dir("a").file("a/.wh.f").file("a/.wh.d").file(".wh.top")
    m = flatten(tmp_path, low, up)
    assert names(m) == [b"a", b"a/g"]
    assert not any(b".wh." in n for n in names(m, init=True))


def test_whiteout_of_missing_path_is_ignored(tmp_path: Path) -> None:
    low = RootfsBuilder().dir("a").file("a/f", "x")
    up = RootfsBuilder().file(".wh.nothing").dir("a").file("a/.wh.ghost").file("b/.wh.c")
    assert names(flatten(tmp_path, low, up)) == [b"a", b"a/f"]


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_dir_hides_lower_children_wherever_the_marker_is(tmp_path: Path,
                                                                marker_first: bool) -> None:
    low = RootfsBuilder().dir("d", mode=0o700).file("d/old", "o").dir("d/sub").file("d/sub/x")
    up = RootfsBuilder().dir("d", mode=0o750)
    if marker_first:
        up.file("d/.wh..wh..opq").file("d/new", "n")
    else:
        up.file("d/new", "n").file("d/.wh..wh..opq")
    m = flatten(tmp_path, low, up)
    assert names(m) == [b"d", b"d/new"]
    assert by_name(m)[b"d"][2] == 0o750  # the directory stays, with the upper attributes


def test_whiteout_then_recreated_dir_without_opaque_has_no_old_content(tmp_path: Path) -> None:
    # overlay2 shows q/d/old again here (notes 1.8); the OCI rule and umoci do not.
    low = RootfsBuilder().dir("q").dir("q/d").file("q/d/old", "o")
    up = RootfsBuilder().dir("q").file("q/.wh.d").dir("q/d").file("q/d/new", "n")
    assert names(flatten(tmp_path, low, up)) == [b"q", b"q/d", b"q/d/new"]


def test_same_layer_whiteout_does_not_hide_that_layers_file(tmp_path: Path) -> None:
    # vfs removes t/new (and overlay2 refuses the layer); the spec keeps it.
    low = RootfsBuilder().dir("t").file("t/new", "lower")
    up = RootfsBuilder().dir("t").file("t/new", "upper").file("t/.wh.new")
    m = flatten(tmp_path, low, up)
    assert [(r[0], r[10]) for r in rows(m)] == [(b"t", None), (b"t/new", b"upper")]


def test_type_changes_file_dir_and_back(tmp_path: Path) -> None:
    l1 = RootfsBuilder().dir("w").file("w/f2d", "file").dir("w/d2f").file("w/d2f/kid", "k")
    l2 = RootfsBuilder().dir("w").dir("w/f2d").file("w/f2d/in", "i").file("w/d2f", "now file")
    l3 = RootfsBuilder().dir("w").file("w/f2d", "file again").dir("w/d2f")
    m2 = flatten(tmp_path, l1, l2)
    assert [(r[0], r[1], r[10]) for r in rows(m2)] == [
        (b"w", "d", None), (b"w/d2f", "f", b"now file"), (b"w/f2d", "d", None),
        (b"w/f2d/in", "f", b"i")]
    m3 = flatten(tmp_path, l1, l2, l3)
    # back again: neither the first layer's w/d2f/kid nor the second's w/f2d/in come back
    assert [(r[0], r[1], r[10]) for r in rows(m3)] == [
        (b"w", "d", None), (b"w/d2f", "d", None), (b"w/f2d", "f", b"file again")]


def test_file_replacing_an_implicit_dir_removes_its_subtree(tmp_path: Path) -> None:
    l1 = RootfsBuilder().file("a/b/c", "c")  # a and a/b only implied
    l2 = RootfsBuilder().dir("a").file("a/b", "b")
    assert [(r[0], r[1]) for r in rows(flatten(tmp_path, l1, l2))] == [(b"a", "d"),
                                                                        (b"a/b", "f")]


def test_dir_over_dir_merges_and_upper_attributes_win(tmp_path: Path) -> None:
    low = RootfsBuilder().dir("d", mode=0o755, uid=1, mtime=T1).file("d/a", "a")
    up = RootfsBuilder().dir("d", mode=0o711, uid=2, gid=3, mtime=T0).file("d/b", "b")
    m = flatten(tmp_path, low, up)
    assert names(m) == [b"d", b"d/a", b"d/b"]
    d = by_name(m)[b"d"]
    assert (d[2], d[3], d[4], d[6]) == (0o711, 2, 3, T0NS)


def test_metadata_only_change_replaces_the_lower_entry(tmp_path: Path) -> None:
    low = RootfsBuilder().file("f", "same", mode=0o644, uid=0, mtime=T1).symlink("s", "f")
    up = RootfsBuilder().file("f", "same", mode=0o4755, uid=7, gid=8, mtime=T0)
    f = by_name(flatten(tmp_path, low, up))[b"f"]
    assert f[1:7] == ("f", 0o4755, 7, 8, 4, T0NS)
    assert f[10] == b"same"


def test_data_comes_from_the_layer_that_holds_it(tmp_path: Path) -> None:
    low = RootfsBuilder().file("keep", "from layer 0").file("over", "old")
    up = RootfsBuilder().file("over", "from layer 1")
    m = flatten(tmp_path, low, up)
    got = {e.name: (e.src, data(m, i)) for i, e in enumerate(m) if e.name in (b"keep", b"over")}
    assert got == {b"keep": (str(tmp_path / "layer0.tar"), b"from layer 0"),
                   b"over": (str(tmp_path / "layer1.tar"), b"from layer 1")}
    i = m.find(b"over")
    assert i is not None and m.data_path(i) == m.entry(i).src == str(tmp_path / "layer1.tar")


# ------------------------------------------------------------------------------ hard links
def test_links_within_a_layer_are_re_elected_in_walk_order(tmp_path: Path) -> None:
    layer = RootfsBuilder().dir("z").file("z/first", "shared", mode=0o600).dir("b")
    layer.hardlink("b/second", "z/first")
    m = flatten(tmp_path, layer)
    r = by_name(m)
    assert names(m) == [b"b", b"b/second", b"z", b"z/first"]
    assert r[b"b/second"][1] == "f" and r[b"b/second"][10] == b"shared"
    assert r[b"b/second"][2] == 0o600 and r[b"b/second"][5] == 6
    assert r[b"z/first"][1] == "h" and r[b"z/first"][7] == b"b/second"
    assert r[b"z/first"][5] == 0 and r[b"z/first"][2] == 0o600


def test_link_chains_are_followed(tmp_path: Path) -> None:
    # buildah >= 1.41 writes links to links
    b = RootfsBuilder().file("c", "data").hardlink("b", "c").hardlink("a", "b")
    r = by_name(flatten(tmp_path, b))
    assert r[b"a"][1] == "f" and r[b"a"][10] == b"data"
    assert (r[b"b"][1], r[b"b"][7]) == ("h", b"a")
    assert (r[b"c"][1], r[b"c"][7]) == ("h", b"a")


def test_link_to_a_lower_layer_file_joins_its_inode(tmp_path: Path) -> None:
    # overlay2 refuses to load this; vfs and umoci link to the file now at that path.
    low = RootfsBuilder().dir("t").file("t/target", "low", mode=0o640).hardlink("t/x", "t/target")
    up = RootfsBuilder().dir("t").hardlink("t/link", "t/target")
    r = by_name(flatten(tmp_path, low, up))
    assert r[b"t/link"][1] == "f" and r[b"t/link"][10] == b"low"
    assert (r[b"t/target"][1], r[b"t/target"][7]) == ("h", b"t/link")
    assert (r[b"t/x"][1], r[b"t/x"][7]) == ("h", b"t/link")


def test_link_to_a_lower_name_replaced_in_between_links_the_current_file(tmp_path: Path) -> None:
    l1 = RootfsBuilder().file("a", "first")
    l2 = RootfsBuilder().file("a", "second")
    l3 = RootfsBuilder().hardlink("b", "a")
    r = by_name(flatten(tmp_path, l1, l2, l3))
    assert r[b"a"][10] == b"second" and (r[b"b"][1], r[b"b"][7]) == ("h", b"a")


def test_broken_link_group_falls_apart(tmp_path: Path) -> None:
    low = RootfsBuilder().dir("hl").file("hl/one", "old").hardlink("hl/two", "hl/one")
    low.hardlink("hl/three", "hl/one").hardlink("hl/zfour", "hl/one")
    up = RootfsBuilder().dir("hl").file("hl/one", "new").file("hl/.wh.zfour")
    r = by_name(flatten(tmp_path, low, up))
    assert (r[b"hl/one"][1], r[b"hl/one"][10]) == ("f", b"new")
    # the names still visible share the old inode only with each other
    assert (r[b"hl/three"][1], r[b"hl/three"][10]) == ("f", b"old")
    assert (r[b"hl/two"][1], r[b"hl/two"][7]) == ("h", b"hl/three")
    assert b"hl/zfour" not in r


def test_group_reduced_to_one_name_is_a_plain_file(tmp_path: Path) -> None:
    low = RootfsBuilder().file("a", "x").hardlink("b", "a")
    up = RootfsBuilder().file(".wh.a")
    r = by_name(flatten(tmp_path, low, up))
    assert (r[b"b"][1], r[b"b"][5], r[b"b"][10]) == ("f", 1, b"x")


def test_last_link_header_sets_the_inodes_metadata(tmp_path: Path) -> None:
    # docker re-applies each link header's chown/chmod/mtime to the shared inode
    b = RootfsBuilder().file("a", "x", mode=0o644, uid=1, mtime=T1)
    b.hardlink("b", "a", mode=0o600, uid=5, gid=6, mtime=T0)
    r = by_name(flatten(tmp_path, b))
    for name in (b"a", b"b"):
        assert r[name][2:5] == (0o600, 5, 6) and r[name][6] == T0NS


def test_linked_symlink_keeps_its_target(tmp_path: Path) -> None:
    b = RootfsBuilder().symlink("z", "somewhere").hardlink("a", "z")
    r = by_name(flatten(tmp_path, b))
    assert (r[b"a"][1], r[b"a"][7]) == ("l", b"somewhere")
    assert (r[b"z"][1], r[b"z"][7]) == ("h", b"a")


# ------------------------------------------------------------------------------ export shape
def test_walk_order_is_preorder_with_names_sorted_as_bytes(tmp_path: Path) -> None:
    b = RootfsBuilder().file("a0").file("a.txt").dir("a").file("a/c").file(b"\xff-raw")
    b.file("\xe9t\xe9".encode()).dir("B").file("B/x")
    got = names(flatten(tmp_path, b))
    assert got == [b"B", b"B/x", b"a", b"a/c", b"a.txt", b"a0", "\xe9t\xe9".encode(), b"\xff-raw"]


def test_implicit_dirs_get_0755_root_and_the_pinned_mtime(tmp_path: Path) -> None:
    b = RootfsBuilder(uid=5, gid=5).file("x/y/z", "z")
    r = by_name(flatten(tmp_path, b))
    for d in (b"x", b"x/y"):
        assert r[d][1:7] == ("d", 0o755, 0, 0, 0, PINNED)
    assert r[b"x/y/z"][3] == 5


def test_mtimes_truncated_to_seconds(tmp_path: Path) -> None:
    b = RootfsBuilder().file("f", "x", pax={"mtime": "1600000000.987654321"})
    b.dir("d", pax={"mtime": "1500000000.5"})
    r = by_name(flatten(tmp_path, b))
    assert r[b"f"][6] == 1600000000 * 10**9 and r[b"d"][6] == 1500000000 * 10**9


def test_long_names_and_big_ids(tmp_path: Path) -> None:
    long = "l/" + "n" * 150 + "/" + "m" * 120
    b = RootfsBuilder().file(long, "deep", uid=4_000_000_000, gid=3_000_000)
    b.symlink("s", "t" * 300)
    r = by_name(flatten(tmp_path, b))
    assert r[long.encode()][3:5] == (4_000_000_000, 3_000_000)
    assert r[long.encode()][10] == b"deep" and r[b"s"][7] == b"t" * 300


def test_devices_fifos_and_modes(tmp_path: Path) -> None:
    b = RootfsBuilder().chardev("c", 1, 3).blockdev("b", 8, 1).fifo("p", mode=0o600)
    b.file("suid", "x", mode=0o6755).dir("tmp", mode=0o1777)
    r = by_name(flatten(tmp_path, b))
    assert r[b"c"][1:3] == ("c", 0o666) and r[b"c"][8] == (1, 3)
    assert r[b"b"][1] == "b" and r[b"b"][8] == (8, 1)
    assert r[b"p"][1:3] == ("p", 0o600)
    assert r[b"suid"][2] == 0o6755 and r[b"tmp"][2] == 0o1777


def test_xattrs_only_capability_v3_converted_to_v2(tmp_path: Path) -> None:
    # tarfile writes PAX values as UTF-8: the binary records are written by hand
    lay = _cap_layer(tmp_path / "caps.tar")
    idx = TarIndex.scan(str(lay))
    assert idx.entry(idx.find(b"v3")).xattrs["security.capability"] == CAP_V3  # the input
    m = merge([idx], ["sha256:" + "c" * 64], "caps", str(tmp_path / "m.idx"))
    r = by_name(m)
    assert r[b"v3"][9] == {"security.capability": CAP_V2}
    assert r[b"v2"][9] == {"security.capability": CAP_V2}
    assert r[b"plain"][9] == {}
    m = merge([idx], ["sha256:" + "c" * 64], "caps", str(tmp_path / "m.idx"), all_xattrs=True)
    r = by_name(m)
    assert r[b"v3"][9] == {"security.capability": CAP_V2, "user.note": b"hello"}
    assert r[b"plain"][9] == {"user.only": b"u"}


def _pax_member(name: bytes, records: dict[bytes, bytes], data: bytes) -> bytes:
    """One PAX header (binary-safe records) plus a ustar regular file member."""
    body = b""
    for k, v in records.items():
        rec = b" " + k + b"=" + v + b"\n"
        n = len(rec) + 1
        while len(str(n).encode()) + len(rec) != n:
            n += 1
        body += str(n).encode() + rec
    return _ustar(b"PaxHeaders/" + name, b"x", body) + _ustar(name, b"0", data)


def _ustar(name: bytes, flag: bytes, data: bytes, mode: int = 0o644) -> bytes:
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"%07o\x00" % mode
    h[108:116] = b"0000000\x00"
    h[116:124] = b"0000000\x00"
    h[124:136] = b"%011o\x00" % len(data)
    h[136:148] = b"%011o\x00" % T0
    h[148:156] = b" " * 8
    h[156:157] = flag
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h) + data + bytes(-len(data) % 512)


def _cap_layer(path: Path) -> Path:
    cap = b"security.capability"
    out = (_pax_member(b"v3", {b"SCHILY.xattr." + cap: CAP_V3,
                               b"SCHILY.xattr.user.note": b"hello"}, b"x")
           + _pax_member(b"v2", {b"SCHILY.xattr." + cap: CAP_V2}, b"y")
           + _pax_member(b"plain", {b"SCHILY.xattr.user.only": b"u"}, b"z") + bytes(1024))
    path.write_bytes(out)
    return path


# ------------------------------------------------------------------------------ init layer
def test_init_layer_entries_on_an_image_without_them(tmp_path: Path) -> None:
    r = by_name(flatten(tmp_path, RootfsBuilder().file("bin", "x")))
    expect = {
        b".dockerenv": ("f", 0o755, 0), b"dev": ("d", 0o755, 0), b"dev/console": ("f", 0o755, 0),
        b"dev/pts": ("d", 0o755, 0), b"dev/shm": ("d", 0o755, 0), b"etc": ("d", 0o755, 0),
        b"etc/hostname": ("f", 0o755, 0), b"etc/hosts": ("f", 0o755, 0),
        b"etc/mtab": ("l", 0o777, 0), b"etc/resolv.conf": ("f", 0o755, 0),
        b"proc": ("d", 0o755, 0), b"sys": ("d", 0o755, 0),
    }
    assert {n: (v[1], v[2], v[5]) for n, v in r.items() if n != b"bin"} == expect
    assert r[b"etc/mtab"][7] == b"/proc/mounts"
    assert all(r[n][3:5] == (0, 0) and r[n][6] == PINNED for n in expect)


def test_init_layer_replaces_files_and_keeps_image_directories(tmp_path: Path) -> None:
    b = RootfsBuilder(uid=3, gid=4, mtime=T1)
    b.dir("etc", mode=0o750).symlink("etc/resolv.conf", "/run/x").file("etc/hosts", "h" * 50)
    b.file("etc/hostname", "name", mode=0o600).file("etc/mtab", "m").file("etc/keep", "k")
    b.dir("dev", mode=0o700).chardev("dev/console", 5, 1).dir("dev/pts", mode=0o700)
    b.dir("dev/shm", mode=0o1777).file("proc", "not a dir").dir("sys", mode=0o555)
    b.file(".dockerenv", "x" * 9).hardlink("keeper", "etc/hosts")
    r = by_name(flatten(tmp_path, b))
    for n in (b".dockerenv", b"etc/resolv.conf", b"etc/hosts", b"etc/hostname", b"dev/console"):
        assert r[n][1:6] == ("f", 0o755, 0, 0, 0), n
    assert r[b"etc/mtab"][1:3] == ("l", 0o777) and r[b"etc/mtab"][7] == b"/proc/mounts"
    # directories the image has keep its attributes; etc/ and dev/ get the creation mtime
    assert r[b"etc"][1:7] == ("d", 0o750, 3, 4, 0, PINNED)
    assert r[b"dev"][1:7] == ("d", 0o700, 3, 4, 0, PINNED)
    assert r[b"dev/pts"][1:7] == ("d", 0o700, 3, 4, 0, T1NS)
    assert r[b"dev/shm"][2] == 0o1777 and r[b"sys"][1:3] == ("d", 0o555)
    assert r[b"proc"][1:5] == ("d", 0o755, 0, 0)  # a file there is replaced by a directory
    # etc/hosts was hard-linked: the other name keeps the image's bytes, alone now
    assert r[b"keeper"][1] == "f" and r[b"keeper"][10] == b"h" * 50
    assert r[b"etc/keep"][10] == b"k"


def test_pinned_mtime_is_the_views(tmp_path: Path) -> None:
    assert L.PINNED_MTIME_NS == view.PINNED_MTIME_NS == PINNED


# ------------------------------------------------------------------------------ hostile input
def _fails(tmp: Path, *builders: RootfsBuilder) -> str:
    with pytest.raises(CorruptTar) as ei:
        flatten(tmp, *builders)
    msg = str(ei.value)
    assert "\n" not in msg and "fbtest/img:1" in msg and "sha256:" in msg
    assert isinstance(ei.value, UserError)
    assert not list(tmp.glob("*merged.idx*"))  # nothing written
    return msg


@pytest.mark.parametrize("wh", [".wh.", ".wh..", ".wh..."])
def test_whiteout_of_an_invalid_name(tmp_path: Path, wh: str) -> None:
    low = RootfsBuilder().dir("d").file("d/x")
    up = RootfsBuilder(raw_names=True).add(_info("d/" + wh))
    msg = _fails(tmp_path, low, up)
    assert f"layer sha256:{1:064x}" in msg and "whiteout" in msg and wh in msg


def _info(name: str, typ: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mtime = T0
    return ti


def test_entry_inside_a_whiteout(tmp_path: Path) -> None:
    up = RootfsBuilder().dir(".wh.d").file(".wh.d/x")
    assert "inside a whiteout" in _fails(tmp_path, RootfsBuilder().dir("d"), up)


def test_aufs_metadata_is_hidden(tmp_path: Path) -> None:
    b = RootfsBuilder().dir(".wh..wh.plnk").file(".wh..wh.plnk/123.456", "x").file("a", "a")
    b.file(".wh..wh.aufs")
    assert names(flatten(tmp_path, b)) == [b"a"]


def test_hard_link_to_a_missing_name(tmp_path: Path) -> None:
    b = RootfsBuilder().file("a", "x").add(_link("b", "nowhere"))
    msg = _fails(tmp_path, b)
    assert "'b'" in msg and "'nowhere'" in msg and "not in this layer or below" in msg


def _link(name: str, target: str) -> tarfile.TarInfo:
    ti = _info(name, tarfile.LNKTYPE)
    ti.linkname = target
    return ti


def test_hard_link_to_an_entry_later_in_its_layer(tmp_path: Path) -> None:
    b = RootfsBuilder().add(_link("b", "a")).file("a", "x")
    assert "not in this layer or below" in _fails(tmp_path, b)


def test_hard_link_to_a_whited_out_name(tmp_path: Path) -> None:
    low = RootfsBuilder().dir("d").file("d/a", "x")
    up = RootfsBuilder().file(".wh.d").add(_link("b", "d/a"))
    assert "not in this layer or below" in _fails(tmp_path, low, up)


def test_hard_link_to_itself(tmp_path: Path) -> None:
    low = RootfsBuilder().file("a", "x")
    up = RootfsBuilder().add(_link("a", "a"))
    assert "not in this layer or below" in _fails(tmp_path, low, up)


@pytest.mark.parametrize("implicit", [False, True])
def test_hard_link_to_a_directory(tmp_path: Path, implicit: bool) -> None:
    b = RootfsBuilder().file("d/x") if implicit else RootfsBuilder().dir("d")
    b.add(_link("l", "d"))
    assert "hard link to the directory 'd'" in _fails(tmp_path, b)


def test_entry_below_a_symlink_or_file(tmp_path: Path) -> None:
    # docker would write through the symlink (vfs) or hide it behind a new directory
    # (overlay2): refused instead.
    low = RootfsBuilder().symlink("lib", "usr/lib").file("f", "x")
    msg = _fails(tmp_path, low, RootfsBuilder().file("lib/evil", "x"))
    assert "'lib/evil'" in msg and "symlink" in msg and f"sha256:{1:064x}" in msg
    msg = _fails(tmp_path, low, RootfsBuilder().file("f/under", "x"))
    assert "'f/under'" in msg and "non-directory" in msg


def test_dotdot_in_a_stored_index_is_refused(tmp_path: Path) -> None:
    # The scanner refuses '..'; an index from elsewhere (say, a tampered .idx) is checked too.
    idx = layer_files(tmp_path, RootfsBuilder().file("aa/x", "x"))[0]
    idx._names = idx._names.replace(b"aa/", b"../")
    with pytest.raises(CorruptTar, match="escapes the image root"):
        merge([idx], ["sha256:" + "e" * 64], "img", str(tmp_path / "m.idx"))
    idx = layer_files(tmp_path, RootfsBuilder().file("x", "x").hardlink("y", "x"))[0]
    idx._links = idx._links.replace(b"x", b"..")
    idx._link_ends = type(idx._link_ends)("q", [0, 2])
    with pytest.raises(CorruptTar, match="escapes the image root"):
        merge([idx], ["sha256:" + "e" * 64], "img", str(tmp_path / "m.idx"))


def test_symlinks_may_point_above_their_directory(tmp_path: Path) -> None:
    # busybox images are full of sbin/halt -> ../bin/busybox; only names and hard links
    # must stay inside the root, a symlink's target is the runtime's business.
    b = RootfsBuilder().dir("bin").file("bin/busybox", "bb").dir("sbin")
    b.symlink("sbin/halt", "../bin/busybox").symlink("sbin/up", "../../../etc")
    r = by_name(flatten(tmp_path, b))
    assert r[b"sbin/halt"][7] == b"../bin/busybox" and r[b"sbin/up"][7] == b"../../../etc"


def test_an_image_without_layers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CorruptTar, match="image img: no layers"):
        merge([], [], "img", str(tmp_path / "m.idx"))


def test_scanner_refuses_escaping_names(tmp_path: Path) -> None:
    b = RootfsBuilder(raw_names=True).add(_info("../evil")).add(_info("a/../../b"))
    p = b.write(tmp_path / "bad.tar")
    with pytest.raises(CorruptTar, match="hostile"):
        TarIndex.scan(str(p))
    # an absolute name is cleaned to a relative one: it stays inside the root
    p = RootfsBuilder(raw_names=True).add(_info("/etc/abs")).write(tmp_path / "abs.tar")
    m = merge([TarIndex.scan(str(p))], ["sha256:" + "a" * 64], "img", str(tmp_path / "m.idx"))
    assert b"etc/abs" in names(m)


# ------------------------------------------------------------------------------ save / load
def test_save_and_load_round_trip(tmp_path: Path) -> None:
    low = RootfsBuilder().dir("a").file("a/x", "x").file("a/y", "yy").hardlink("a/z", "a/x")
    up = RootfsBuilder().dir("a").file("a/.wh.y").symlink("a/s", "x")
    up.add(_cap_info())
    m = flatten(tmp_path, low, up)
    m.save()
    paths = [str(tmp_path / "layer0.tar"), str(tmp_path / "layer1.tar")]
    back = MergedIndex.load(m.tar_path, paths)
    assert back is not None
    assert rows(back, init=True) == rows(m, init=True)
    assert [back.data_path(i) for i in range(len(back))] == [m.data_path(i) for i in
                                                               range(len(m))]
    assert back.verify_unchanged() and back.find(b"a/x") == m.find(b"a/x")
    entries = [back.entry(i) for i in range(len(back))]
    assert entries == list(back) and back.entry(-1) == entries[-1]
    assert [e.src for e in back] == [e.src for e in entries] == [back.data_path(i) for i in
                                                                  range(len(back))]
    assert any(e.xattrs for e in back)
    assert not list(tmp_path.glob(".merged.idx.*"))  # no temporary left
    # foreign layers, a changed layer, a corrupt or missing file: None
    assert MergedIndex.load(m.tar_path, paths[::-1]) is None
    assert MergedIndex.load(m.tar_path, paths[:1]) is None
    assert MergedIndex.load(str(tmp_path / "none"), paths) is None
    raw = Path(m.tar_path).read_bytes()
    Path(m.tar_path).write_bytes(raw[:-3] + bytes([raw[-3] ^ 1]) + raw[-2:])
    assert MergedIndex.load(m.tar_path, paths) is None
    Path(m.tar_path).write_bytes(b"garbage\n")
    assert MergedIndex.load(m.tar_path, paths) is None
    Path(m.tar_path).write_bytes(raw)
    assert MergedIndex.load(m.tar_path, paths) is not None
    os.utime(paths[1], ns=(T1NS, T1NS))
    assert not back.verify_unchanged()
    assert MergedIndex.load(m.tar_path, paths) is None


def _cap_info() -> tarfile.TarInfo:
    ti = _info("cap")
    ti.pax_headers = {"SCHILY.xattr.security.capability": "\x01"}
    return ti


def test_save_is_atomic_on_failure(tmp_path: Path) -> None:
    m = flatten(tmp_path, RootfsBuilder().file("a", "a"))
    m.tar_path = str(tmp_path / "missing-dir" / "m.idx")
    with pytest.raises(OSError):
        m.save()
    assert not (tmp_path / "missing-dir").exists()


# ------------------------------------------------------------------------------ against docker
LONG_DIR = "long/" + "d" * 120
LONG_FILE = LONG_DIR + "/" + "f" * 110
APPLETS = ("sh", "rm", "mkdir", "echo", "chmod", "chown", "ln", "touch", "cat", "mv")
DOCKERFILE = f"""FROM fbtest/layers-base:1
RUN rm /data/gone.txt && rm -r /data/gonedir
RUN rm -rf /opq && mkdir /opq && echo new > /opq/new
RUN rm /f2d && mkdir /f2d && echo in > /f2d/in && rm -r /d2f && echo file > /d2f
RUN chmod 600 /data/keep.txt && chown 1234:5678 /data/owned.txt && chmod 700 /data \\
    && chown 3000000:3000001 /data/big && chmod 750 /bin/capped
RUN ln /data/keep.txt /data/keep-link && mkdir /hl && echo a > /hl/z && ln /hl/z /hl/b \\
    && echo more >> /hl2/one && echo longer >> /{LONG_FILE}
"""


def base_rootfs() -> RootfsBuilder:
    from support.imagetools import busybox_bytes
    r = RootfsBuilder()
    r.dir("bin").file("bin/busybox", busybox_bytes(), mode=0o755)
    for applet in APPLETS:
        r.symlink("bin/" + applet, "busybox")
    cap = {"security.capability": CAP_V2.decode("latin-1"), "user.drop": "me"}
    r.file("bin/capped", "cap me", mode=0o755, xattrs=cap)
    r.file("bin/capkeep", "cap v3", mode=0o755,
           xattrs={"security.capability": CAP_V3.decode("utf-8", "surrogateescape")})
    # docker applies the link header last: its chown clears the file's capability and its
    # own xattrs are set, so the group's capability is the one on the link header.
    r.file("bin/lcap", "linked", mode=0o755, xattrs=cap).hardlink("bin/lcap-link", "bin/lcap")
    r.file("bin/lcap2", "linked2", mode=0o755).hardlink("bin/lcap2-link", "bin/lcap2", xattrs=cap)
    r.dir("data", mode=0o755, mtime=T1).file("data/gone.txt", "bye").file("data/keep.txt", "k")
    r.file("data/owned.txt", "o").file("data/big", "b").dir("data/gonedir")
    r.file("data/gonedir/x", "x")
    r.dir("opq").file("opq/old", "old").dir("opq/olddir").file("opq/olddir/y", "y")
    r.file("f2d", "was a file").dir("d2f").file("d2f/kid", "kid")
    r.dir("hl2").file("hl2/one", "shared").hardlink("hl2/two", "hl2/one")
    r.dir("long").dir(LONG_DIR).file(LONG_FILE, "long name", uid=4_000_000_000, gid=7)
    r.dir("etc").file("etc/passwd", "root:x:0:0::/:/bin/sh\n").file("etc/hostname", "base")
    r.symlink("etc/resolv.conf", "/run/elsewhere").chardev("devnull", 1, 3).fifo("fifo")
    r.dir("tmp", mode=0o1777)
    # what docker's init layer replaces, keeps or recreates
    r.dir("dev", mode=0o750, uid=2).dir("dev/pts", mode=0o700, uid=3, mtime=T1)
    r.chardev("dev/console", 5, 1).file("proc", "not a directory").file(".dockerenv", "x")
    return r


def _build(api: Any, dockerfile: str, tag: str) -> None:
    import io
    out = api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True,
                    network_mode="none", decode=True)
    log = []
    for msg in out:
        if "error" in msg:
            raise RuntimeError(f"docker build failed: {msg['error']}\n{''.join(log)}")
        log.append(str(msg.get("stream", "")))


def save_layers(api: Any, ref: str, dest: Path) -> tuple[Path, list[Path], list[str]]:
    """`docker save` (20.10 format) to dest/save.tar; the layer tars extracted, in order."""
    import json
    save = dest / "save.tar"
    with open(save, "wb") as f:
        for chunk in api.get_image(ref):
            f.write(chunk)
    out, digests = [], []
    with tarfile.open(save) as t:
        manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
        for n, member in enumerate(manifest[0]["Layers"]):
            p = dest / f"layer{n}.tar"
            src = t.extractfile(member)
            assert src is not None
            p.write_bytes(src.read())
            out.append(p)
        config = json.load(t.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        digests = config["rootfs"]["diff_ids"]
    return save, out, digests


def export_of(api: Any, ref: str, path: Path) -> Path:
    cid = api.create_container(ref, command=["/dev/null"])["Id"]
    try:
        with open(path, "wb") as f:
            for chunk in api.export(cid, chunk_size=1 << 20):
                f.write(chunk)
    finally:
        api.remove_container(cid, force=True)
    return path


@pytest.fixture(scope="module")
def built(dockerd: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from support.imagetools import import_image
    api = dockerd.client.api
    tmp = tmp_path_factory.mktemp("layers-docker")
    base = base_rootfs().write(tmp / "base.tar")
    import_image(api, base, "fbtest/layers-base:1", ["ENV PATH=/bin"])
    _build(api, DOCKERFILE, "fbtest/layers:1")
    save, layer_paths, digests = save_layers(api, "fbtest/layers:1", tmp)
    export = export_of(api, "fbtest/layers:1", tmp / "export.tar")
    return {"tmp": tmp, "save": save, "layers": layer_paths, "digests": digests,
            "export": export, "driver": dockerd.driver}


def comparable(idx: TarIndex) -> list[tuple]:
    """Every field of every entry, mtimes of the container-creation entries masked."""
    out = []
    for r in rows(idx, init=True):
        mtime = None if r[0] in view.DOCKER_CREATED else r[6]
        out.append((*r[:6], mtime, *r[7:]))
    return out


def test_merge_equals_docker_export(built: dict[str, Any]) -> None:
    tmp = built["tmp"]
    idx = [TarIndex.scan(str(p)) for p in built["layers"]]
    assert len(idx) == 6
    merged = merge(idx, built["digests"], "fbtest/layers:1", str(tmp / "merged.idx"))
    export = TarIndex.scan(str(built["export"]))
    got, want = comparable(merged), comparable(export)
    assert [r[0] for r in got] == [r[0] for r in want]
    for g, w in zip(got, want, strict=True):
        assert g == w, g[0]
    # the cases the image was built to show are really in it
    r = by_name(export)
    assert b"data/gone.txt" not in r and b"opq/old" not in r and r[b"opq/new"][10] == b"new\n"
    assert r[b"f2d"][1] == "d" and r[b"d2f"][1] == "f"
    assert r[b"proc"][1:3] == ("d", 0o755) and r[b"dev/pts"][1:4] == ("d", 0o700, 3)
    assert r[b"dev/console"][1:6] == r[b".dockerenv"][1:6] == ("f", 0o755, 0, 0, 0)
    assert r[b"etc/resolv.conf"][1:6] == ("f", 0o755, 0, 0, 0)  # was a symlink in the image
    assert r[b"data/keep.txt"][2] == 0o600 and r[b"data/owned.txt"][3:5] == (1234, 5678)
    assert r[b"data/big"][3] == 3000000 and r[LONG_FILE.encode()][3] == 4_000_000_000
    assert r[b"bin/capped"][9] == {"security.capability": CAP_V2}  # copied up by chmod
    assert r[b"bin/capkeep"][9] == {"security.capability": CAP_V2}  # v3 exported as v2
    assert r[b"bin/lcap"][9] == r[b"bin/lcap-link"][9] == {}
    assert r[b"bin/lcap2"][9] == r[b"bin/lcap2-link"][9] == {"security.capability": CAP_V2}
    assert r[b"hl/b"][1] == "f" and r[b"hl/z"][1:8:6] == ("h", b"hl/b")
    # docker 20.10 writes the S_IFMT bits into the mode field; the index keeps 0o7777 of it,
    # for the export as for the layers, so the merged modes need no conversion
    e = export.entry(export.find(b"etc/passwd"))
    with open(built["export"], "rb") as f:
        raw = int(os.pread(f.fileno(), 8, e.offset - 512 + 100).rstrip(b"\0 "), 8)
    assert raw & 0o170000 in (0o100000, 0) and raw & 0o7777 == e.mode == 0o644
    if built["driver"] == "overlay2":
        # copy-up: the layer holds both names, so they stay one inode; the hard-linked pair
        # of the base falls apart once one name is written (no index=on)
        assert r[b"data/keep-link"][1] == "f" and r[b"data/keep.txt"][7] == b"data/keep-link"
        assert r[b"hl2/one"][1] == r[b"hl2/two"][1] == "f"
    elif built["driver"] == "vfs":
        # vfs's diff holds the new name only, as a file of its own; writing one name of the
        # base's pair writes both
        assert r[b"data/keep-link"][1] == r[b"data/keep.txt"][1] == "f"
        assert r[b"hl2/one"][1] == "f" and r[b"hl2/two"][7] == b"hl2/one"


def test_merged_index_saved_and_loaded_equals_export(built: dict[str, Any]) -> None:
    tmp = built["tmp"]
    idx = [TarIndex.scan(str(p)) for p in built["layers"]]
    merged = merge(idx, built["digests"], "fbtest/layers:1", str(tmp / "saved.idx"))
    merged.save()
    back = MergedIndex.load(str(tmp / "saved.idx"), [str(p) for p in built["layers"]])
    assert back is not None
    assert comparable(back) == comparable(TarIndex.scan(str(built["export"])))


# ------------------------------------------------------------------------------ against umoci
def umoci_rootfs(save: Path, dest: Path) -> Path:
    import shutil
    import subprocess
    if not (shutil.which("skopeo") and shutil.which("umoci")):
        pytest.skip("skopeo and umoci are needed (Debian packages skopeo, umoci)")
    if os.geteuid() != 0:
        pytest.skip("umoci unpack needs root")
    layout, bundle = dest / "oci", dest / "bundle"
    subprocess.run(["skopeo", "--insecure-policy", "copy", f"docker-archive:{save}",
                    f"oci:{layout}:t"], check=True, capture_output=True)
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:t", str(bundle)], check=True,
                   capture_output=True)
    return bundle / "rootfs"


def _engine_odd_cases() -> list[RootfsBuilder]:
    """The notes' table (1.8): cases overlay2 refuses or gets wrong."""
    low = RootfsBuilder().dir("t").file("t/target", "target").file("t/new", "lower")
    low.dir("q").dir("q/d").file("q/d/old", "old").dir("hl").file("hl/one", "one")
    low.hardlink("hl/two", "hl/one").hardlink("hl/three", "hl/one").file("x/implicit", "i")
    up = RootfsBuilder().dir("t").hardlink("t/link", "t/target")  # link to a lower file
    up.file("t/new", "upper").file("t/.wh.new")  # a whiteout beside its layer's file
    up.dir("q").file("q/.wh.d").dir("q/d").file("q/d/new", "new")  # no opaque marker
    up.dir("hl").file("hl/one", "replaced")  # breaks the group
    return [low, up]


def test_merge_equals_umoci_where_the_engine_is_the_odd_one_out(tmp_path: Path) -> None:
    builders = _engine_odd_cases()
    paths = []
    for n, b in enumerate(builders):
        paths.append(b.write(tmp_path / f"layer{n}.tar"))
    merged = merge([TarIndex.scan(str(p)) for p in paths], ["sha256:" + "0" * 64] * 2,
                   "odd", str(tmp_path / "m.idx"))
    rootfs = umoci_rootfs(docker_archive(tmp_path, paths, "fbtest/odd:1"), tmp_path)
    got, want = tree_of_merged(merged), tree_of_dir(rootfs)
    assert got == want
    assert b"q/d/old" not in got[0] and got[0][b"t/new"][5] is not None
    assert frozenset({b"hl/two", b"hl/three"}) in got[1]
    assert frozenset({b"t/link", b"t/target"}) in got[1]


def test_merge_of_docker_built_image_equals_umoci(built: dict[str, Any]) -> None:
    tmp = built["tmp"]
    merged = merge([TarIndex.scan(str(p)) for p in built["layers"]], built["digests"],
                   "fbtest/layers:1", str(tmp / "m2.idx"))
    dest = tmp / "umoci"
    dest.mkdir()
    got, want = tree_of_merged(merged), tree_of_dir(umoci_rootfs(built["save"], dest))
    # umoci does not re-apply a link header's metadata (notes 3.7); none differ here
    assert got == want
    assert len(got[0]) > 40 and frozenset({b"hl/b", b"hl/z"}) in got[1]


# ------------------------------------------------------------------------------ downstream
class _Handle:
    """The least an ImageHandle needs to be for view and tree: an index."""

    def __init__(self, idx: TarIndex) -> None:
        self.idx = idx

    def index(self) -> TarIndex:
        return self.idx


def _view_entries(idx: TarIndex, prefix: bytes) -> list[tuple]:
    g = view.Graft(prefix=prefix, image=_Handle(idx))  # type: ignore[arg-type]
    out = []
    for e in view.graft_entries(g):
        body = e.body
        if body is not None and not isinstance(body, bytes):
            with open(body.source.path, "rb") as f:
                body = os.pread(f.fileno(), body.size, body.offset)
        out.append((e.path, e.type, e.mode, e.uid, e.gid, e.mtime_ns, e.size, e.linkname,
                    e.devmajor, e.devminor, dict(e.xattrs or {}), body))
    return out


def _tree_walk(idx: TarIndex, prefix: bytes) -> list[tuple]:
    from fusebundle.fs.graft_tree import GraftTree
    g = view.Graft(prefix=prefix, image=_Handle(idx))  # type: ignore[arg-type]
    t = GraftTree(0, g, idx)
    out = []

    def walk(d: int, path: bytes) -> None:
        for pos in range(t.child_count(d)):
            name, i = t.child(d, pos)
            c = t.content(i)
            body = None
            if c is not None:
                body = c
                if not isinstance(c, bytes):
                    with open(c.source.path, "rb") as f:
                        body = os.pread(f.fileno(), c.size, c.offset)
            out.append((path + name, t.stat(i), t.readlink(i), dict(t.xattrs(i) or {}), body))
            if t.is_dir(i):
                walk(i, path + name + b"/")

    walk(t.root, b"")
    return out


@pytest.mark.parametrize("prefix", [b"", b"containers/onboot/000-x/lower/"])
def test_view_and_tree_see_the_merged_image_as_the_export(built: dict[str, Any],
                                                          prefix: bytes) -> None:
    tmp = built["tmp"]
    merged = merge([TarIndex.scan(str(p)) for p in built["layers"]], built["digests"],
                   "fbtest/layers:1", str(tmp / "view.idx"))
    merged.save()  # the tree keeps its arrays beside the index
    export = TarIndex.scan(str(built["export"]))
    got, want = _view_entries(merged, prefix), _view_entries(export, prefix)
    assert got == want and len(got) > 40
    assert _tree_walk(merged, prefix) == _tree_walk(export, prefix)


# ------------------------------------------------------------------------------ more choices
def test_duplicates_in_a_layer_last_one_wins_in_tar_order(tmp_path: Path) -> None:
    b = RootfsBuilder().file("f", "first").file("f", "second").file("a/b/c", "c")
    b.file("a/b", "file now")  # replaces the directory its layer implied just before
    b.dir("x").file("x/y", "y").dir("x", mode=0o700)  # dir again: merged, new attributes
    r = by_name(flatten(tmp_path, b))
    assert r[b"f"][10] == b"second"
    assert r[b"a/b"][1] == "f" and b"a/b/c" not in r
    assert r[b"x"][2] == 0o700 and b"x/y" in r


def test_char_device_0_0_is_a_device_not_a_whiteout(tmp_path: Path) -> None:
    # overlay2 would take it for its own whiteout format; in a layer tar it is a device
    low = RootfsBuilder().file("keep", "k")
    up = RootfsBuilder().chardev("keep", 0, 0).chardev("new", 0, 0)
    r = by_name(flatten(tmp_path, low, up))
    assert r[b"keep"][1] == "c" and r[b"keep"][8] == (0, 0) and r[b"new"][1] == "c"


def test_overlay_opaque_xattr_is_no_marker(tmp_path: Path) -> None:
    low = RootfsBuilder().dir("d").file("d/old", "o")
    up = RootfsBuilder().dir("d", xattrs={"trusted.overlay.opaque": "y"}).file("d/new", "n")
    m = flatten(tmp_path, low, up)
    assert names(m) == [b"d", b"d/new", b"d/old"]
    assert by_name(m)[b"d"][9] == {}


def test_whiteout_of_a_dir_also_hides_what_only_implied_it(tmp_path: Path) -> None:
    low = RootfsBuilder().file("d/e/f", "f")  # d and d/e implied
    up = RootfsBuilder().file(".wh.d").file("d2/x", "x")
    assert names(flatten(tmp_path, low, up)) == [b"d2", b"d2/x"]


def test_a_single_layer_and_an_empty_layer(tmp_path: Path) -> None:
    m = flatten(tmp_path, RootfsBuilder().file("a", "a"), RootfsBuilder())
    assert names(m) == [b"a"] and len(m) == 1 + len(INIT_NAMES)
    assert {m.data_path(i) for i in range(len(m))} <= {str(tmp_path / "layer0.tar"),
                                                       str(tmp_path / "layer1.tar")}


# ------------------------------------------------------------------------------ one layer
def _walk_ordered(kind: str) -> RootfsBuilder:
    """One-layer trees written in docker's walk order (as docker and tar write layers)."""
    b = RootfsBuilder(uid=3, gid=4)
    if kind == "implied":  # parents missing at every depth, names sorting around '/'
        b.file("a/b/c/d", "2").file("a/b/c0", "3").dir("a/b0").file("a!", "1").file("a-", "4")
        b.file("z/y", "5", pax={"mtime": "1600000000.5"}).symlink("zz", "../../etc")
    elif kind == "init":  # the init layer's paths there as files, links, devices, dirs
        b.file(".dockerenv", "x").dir("dev", mode=0o700).chardev("dev/console", 5, 1)
        b.file("dev/pts", "p").dir("etc", mode=0o750).symlink("etc/hosts", "/x")
        b.file("etc/keep", "k").file("etc/mtab", "m").file("proc", "not a dir")
        b.dir("sys", mode=0o555).fifo("tmp")
    elif kind == "implied-init":  # dev and etc only implied; xattrs; a sub-second mtime
        b.file("dev/null-ish", "n", xattrs={"security.capability": CAP_V2, "user.a": "b"})
        b.file("etc/passwd", "root", pax={"mtime": "1700000000.25"}).blockdev("sda", 8, 0)
    else:  # an empty layer
        pass
    return b


@pytest.mark.parametrize("kind", ["implied", "init", "implied-init", "empty"])
@pytest.mark.parametrize("kw", [{}, {"docker": False}, {"all_xattrs": True}])
def test_one_layer_in_walk_order_is_flattened_as_the_full_merge(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, kw: dict[str, Any]) -> None:
    lay = layer_files(tmp_path, _walk_ordered(kind))
    digests = ["sha256:" + "a" * 64]
    apply = L.Merge.apply
    monkeypatch.setattr(L.Merge, "apply", _no_dict_merge)
    fast = merge(lay, digests, "one", str(tmp_path / "fast.idx"), **kw)
    monkeypatch.setattr(L.Merge, "apply", apply)
    monkeypatch.setattr(L, "_one_layer_walk", lambda m: None)
    full = merge(lay, digests, "one", str(tmp_path / "full.idx"), **kw)
    assert rows(fast, init=True) == rows(full, init=True)
    assert [fast.layer_of(i) for i in range(len(fast))] == \
        [full.layer_of(i) for i in range(len(full))]
    if kind == "implied":
        assert names(fast)[:8] == [b"a", b"a/b", b"a/b/c", b"a/b/c/d", b"a/b/c0", b"a/b0",
                                   b"a!", b"a-"]


def _no_dict_merge(self: Any, layer: int) -> None:
    raise AssertionError("the layer went through the path dict")


def test_one_layer_in_walk_order_is_not_merged(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(L.Merge, "apply", _no_dict_merge)
    m = flatten(tmp_path, _walk_ordered("implied"))
    assert names(m)[:3] == [b"a", b"a/b", b"a/b/c"]
    with pytest.raises(AssertionError, match="path dict"):  # out of walk order: merged
        flatten(tmp_path, RootfsBuilder().file("b").file("a"))


@pytest.mark.parametrize("kind", ["dup", "below-file", "hardlink", "whiteout"])
def test_one_layer_that_needs_the_merge_gets_it(tmp_path: Path, kind: str) -> None:
    b = RootfsBuilder()
    if kind == "dup":  # the same name twice, in walk order otherwise: the last one wins
        b.file("a", "old").file("a", "new")
        assert by_name(flatten(tmp_path, b))[b"a"][10] == b"new"
    elif kind == "below-file":
        b.file("a", "x").file("a/b", "y")
        with pytest.raises(CorruptTar, match="'a/b': is below 'a', a non-directory"):
            flatten(tmp_path, b)
    elif kind == "hardlink":
        b.file("a", "x").hardlink("b", "a")
        r = by_name(flatten(tmp_path, b))
        assert r[b"a"][1] == "f" and r[b"b"][1:8:6] == ("h", b"a")
    else:  # a whiteout in the only layer hides nothing and never shows
        b.file(".wh.a").file("b", "x")
        assert names(flatten(tmp_path, b)) == [b"b"]


def test_one_index_over_several_sources(tmp_path: Path) -> None:
    """entry, iteration and data_path name the same layer tar; any layer changing is seen."""
    low = RootfsBuilder().file("a", "from low").file("b", "b")
    up = RootfsBuilder().file("b", "from up").file("c", "c")
    lay = layer_files(tmp_path, low, up)
    assert lay[0].sources == [str(tmp_path / "layer0.tar")] and lay[0].verify_unchanged()
    m = merge(lay, ["sha256:" + "1" * 64, "sha256:" + "2" * 64], "two",
              str(tmp_path / "m.idx"))
    m.save()
    loaded = MergedIndex.load(str(tmp_path / "m.idx"), m.layer_paths)
    assert loaded is not None
    for idx in (m, loaded):
        assert idx.sources == [str(tmp_path / "layer0.tar"), str(tmp_path / "layer1.tar")]
        got = {e.name: e.src for e in idx}
        assert got == {idx.entry(i).name: idx.data_path(i) for i in range(len(idx))}
        assert got[b"a"] == idx.sources[0] and got[b"b"] == got[b"c"] == idx.sources[1]
        assert idx.entry(-1).src == idx.data_path(len(idx) - 1)
        assert data(idx, names(idx, init=True).index(b"b")) == b"from up"
        assert idx.verify_unchanged()
    os.utime(tmp_path / "layer0.tar", ns=(0, 0))
    assert not m.verify_unchanged() and not loaded.verify_unchanged()
    assert not lay[0].verify_unchanged() and lay[1].verify_unchanged()


def test_one_layer_merge_holds_no_object_per_entry(tmp_path: Path) -> None:
    """The heap a one-layer merge peaks at, per entry: arrays only (about 41 B measured at
    20k entries; the path dict of the full merge took 156 B)."""
    import tracemalloc

    idx = mapped_layer(tmp_path / "layer.tar", 20_000)
    tracemalloc.start()
    try:
        m = merge([idx], ["sha256:" + "0" * 64], "big", str(tmp_path / "m.idx"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(m) == 20_200 + len(INIT_NAMES)
    assert peak / len(m) < 64  # 64: between the two, with room for the allocator's rounding


def test_find_by_bisection_agrees_with_the_name_dict(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # The first lookups bisect the names (walk order: '/' below every byte); later ones use
    # the dict of every name. Both must give the same entry, and None for what is not there.
    b = RootfsBuilder()
    for d in (b"a", b"a-b", b"a/b", b"a/b/c", b"a.b", b"z", b"\xc3\xa9"):
        b.dir(d.decode())
    b.file("a/b/c/f", b"x").file("a-b/g", b"y").file("a.b/h", b"").symlink("a/l", "/z")
    m = flatten(tmp_path, b)
    names = [e.name for e in m]
    assert len(names) > 10
    absent = [b"a/b/c/nope", b"a/", b"", b"zz", b"a-b/g/x", b"\xc3"]
    monkeypatch.setattr(MergedIndex, "BISECT_LOOKUPS", len(names) + len(absent))
    bisected = [m.find(n) for n in names + absent]
    assert m._by_name is None
    assert bisected == [*range(len(names)), *[None] * len(absent)]
    dicted = [m.find(n) for n in names + absent]  # the budget is spent: the dict now
    assert m._by_name is not None and dicted == bisected
