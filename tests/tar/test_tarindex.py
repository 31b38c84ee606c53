"""Tests for fusebundle.tar (scan and index): the tar header scanner and its saved index."""

from __future__ import annotations

import io
import os
import random
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.tarbytes import (
    END,
    b256,
    check_against_tarfile,
    gnu_long,
    header,
    member,
    pad,
    pax,
    pax_raw,
    write,
)

from fusebundle.errors import CorruptTar, UserError
from fusebundle.tar.index import FORMAT_MAGIC, TarIndex, open_index

# ---------------------------------------------------------------------------------------------
# Hand-made archives, for what tarfile cannot or will not write.

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service


def add(
    tf: tarfile.TarFile,
    name: str,
    data: bytes | None = None,
    *,
    type: bytes = tarfile.REGTYPE,
    **attrs: object,
) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.mtime = 1_650_000_000
    ti.mode = 0o644
    for key, value in attrs.items():
        setattr(ti, key, value)
    if data is not None:
        ti.size = len(data)
    tf.addfile(ti, io.BytesIO(data) if data is not None else None)


def build_with_tarfile(path: str, fmt: int) -> None:
    """A varied archive in format *fmt*; only what that format can express."""
    long_dir = "/".join([f"d{i:02d}-long-directory-name" for i in range(6)])  # ~150 bytes
    with tarfile.open(path, "w", format=fmt) as tf:
        add(tf, "./", type=tarfile.DIRTYPE, mode=0o755)
        add(tf, "./etc", type=tarfile.DIRTYPE, mode=0o755)
        add(tf, "./etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        add(tf, "usr/bin/sudo", b"\x7fELF" + bytes(700), mode=0o4755)
        add(tf, "usr/bin/wall", b"#!/bin/sh\n", mode=0o2755, gid=5)
        add(tf, "tmp", type=tarfile.DIRTYPE, mode=0o1777)
        add(tf, "home/alice/notes.txt", b"hi", uid=1000, gid=1000, uname="alice")
        add(tf, "empty", b"")
        add(tf, "exact512", bytes(range(256)) * 2)
        add(tf, "exact513", b"y" * 513)
        add(tf, "bigger", os.urandom(100_000))
        add(tf, "usr/lib/ünïcødé-文件.txt", "ü".encode())
        add(tf, "usr/bin/link", type=tarfile.SYMTYPE, linkname="../../outside/target")
        add(tf, "usr/bin/sudo-hard", type=tarfile.LNKTYPE, linkname="./usr/bin/sudo")
        add(tf, "dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
        add(tf, "dev/sda", type=tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660)
        add(tf, "run/fifo", type=tarfile.FIFOTYPE, mode=0o600)
        add(tf, long_dir + "/file-in-a-prefixed-path.txt", b"prefix")
        add(tf, "etc/passwd", b"overwritten\n")  # a duplicate: the later one wins in find()
        if fmt != tarfile.USTAR_FORMAT:
            long_name = "/".join([f"component-{i:03d}" for i in range(25)])  # > 256 bytes
            add(tf, long_name, b"long")
            add(tf, "long-symlink", type=tarfile.SYMTYPE, linkname="t/" * 80)
            add(tf, "long-hardlink", type=tarfile.LNKTYPE, linkname=long_name)
            add(tf, "big-ids", b"", uid=3_000_000, gid=2**31)
        if fmt == tarfile.PAX_FORMAT:
            add(tf, "fractional", b"f", mtime=1_600_000_000.123456)
            add(
                tf,
                "usr/bin/ping",
                b"ping",
                pax_headers={
                    "SCHILY.xattr.security.capability": CAPABILITY.decode(
                        "utf-8", "surrogateescape"
                    ),
                    "SCHILY.xattr.user.comment": "plain text",
                },
            )


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_matches_tarfile(tmp_path: Path, fmt: int) -> None:
    path = str(tmp_path / "t.tar")
    build_with_tarfile(path, fmt)
    index = check_against_tarfile(path)
    by_name = {e.name: e for e in index}
    assert b"" not in by_name  # the root './' is not indexed
    assert by_name[b"usr/bin/sudo"].mode == 0o4755
    assert by_name[b"tmp"].mode == 0o1777
    assert by_name[b"home/alice/notes.txt"].uid == 1000
    assert by_name[b"usr/bin/link"].linkname == b"../../outside/target"
    assert by_name[b"usr/bin/sudo-hard"].linkname == b"usr/bin/sudo"
    assert by_name[b"usr/bin/sudo-hard"].size == 0
    assert (by_name[b"dev/null"].type, by_name[b"dev/null"].devmajor) == ("c", 1)
    assert by_name[b"dev/sda"].type == "b"
    assert by_name[b"run/fifo"].type == "p"
    assert by_name["usr/lib/ünïcødé-文件.txt".encode()].size == 2
    last = index.find(b"etc/passwd")
    assert last is not None and index.entry(last).size == len(b"overwritten\n")
    assert index.find(b"etc/nothing") is None
    if fmt == tarfile.PAX_FORMAT:
        assert by_name[b"usr/bin/ping"].xattrs == {
            "security.capability": CAPABILITY,
            "user.comment": b"plain text",
        }
        assert by_name[b"fractional"].mtime_ns == 1_600_000_000_123_456_000
    if fmt != tarfile.USTAR_FORMAT:
        assert len(by_name[b"long-symlink"].linkname) == 160
        assert by_name[b"big-ids"].uid == 3_000_000
        assert by_name[b"big-ids"].gid == 2**31


def test_big_members_and_buffer_boundaries(tmp_path: Path) -> None:
    # Members larger than the read buffer make the scanner seek; long names and PAX headers
    # land across buffer boundaries.
    path = str(tmp_path / "big.tar")
    rng = random.Random(7)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for i, size in enumerate([3 << 20, 1_500_000, 10, (1 << 20) - 300, 5, 2 << 20, 0]):
            add(tf, f"big{i}", rng.randbytes(size))
            add(tf, f"dir{i}/" + "n" * 150 + f"/ünï{i}", b"small", uid=70_000_000)
            for j in range(3):
                add(tf, f"small{i}-{j}", b"s" * (j * 300))
    seen: list[int] = []
    index = check_against_tarfile(path)
    TarIndex.scan(path, seen.append)
    assert len(index) == 7 * 5
    assert seen[-1] == os.path.getsize(path)


# ---------------------------------------------------------------------------------------------
# Hand-made archives


def test_hand_made_features(tmp_path: Path) -> None:
    long_name = b"/".join(b"n%03d" % i for i in range(80))  # 399 bytes
    long_link = b"L" * 300
    data = b"".join(
        [
            member(b"./", typeflag=b"5"),  # the root: skipped
            member(b"././dot/", typeflag=b"5"),
            member(b"/abs//path/file", b"abs"),
            member(
                b"./base256",
                b"base-256 numbers",
                fields={
                    108: b256(70000, 8),
                    116: b256(1234567, 8),
                    136: b256(1_700_000_000, 12),
                },
            ),
            member(b"base256-size", fields={124: b256(5, 12)}) + pad(b"12345"),
            member(b"negative-mtime", b"x", fields={136: b256(-1000, 12)}),
            member(b"spaces", b"sp", fields={100: b"  644 \x00\x00", 108: b"   12 \x00 "}),
            member(b"file.txt", prefix=b"a/very/deep/prefix"),
            pax([(b"mtime", b"1600000000.123456789"), (b"uid", b"4000000000")]),
            member(b"frac", b"fraction"),
            pax([(b"mtime", b"-1.5")]),
            member(b"before-epoch"),
            gnu_long(long_name),
            member(b"truncated-short-name", b"long name data"),
            gnu_long(long_link, b"K"),
            header(b"short", b"2", linkname=b"ignored"),
            gnu_long(b"./hard/" + long_name, b"K"),
            header(b"hard-to-long", b"1", linkname=b"ignored"),
            pax(
                [
                    (b"path", "pax/ünï".encode()),
                    (b"linkpath", b"/some/where/../x"),
                    (b"SCHILY.xattr.security.capability", CAPABILITY),
                    (b"SCHILY.xattr.user.nl", b"a\nb=c"),
                    (b"atime", b"123.5"),
                    (b"comment", b"ignored"),
                ]
            ),
            header(b"s", b"2", linkname=b"x"),
            pax([(b"hdrcharset", b"BINARY"), (b"path", b"bin\xff\xfe-name")]),
            member(b"x", b"binary name"),
            pax([(b"size", b"3")]),
            member(b"pax-size", fields={124: b"77777777777\x00"}) + pad(b"abc"),
            member(b"dev/tty", typeflag=b"3", devmajor=5, devminor=0, mode=0o20666),
            member(b"v7-dir/", magic=bytes(8), typeflag=b"\x00"),
            member(b"v7-file", b"old", magic=bytes(8), typeflag=b"\x00"),
            member(b"contiguous", b"c7", typeflag=b"7"),
            member("héllo-\u00ff".encode("latin-1"), b"signed", signed_checksum=True),
            member(b"dir-with-size/", b"", typeflag=b"5", fields={124: b"00000001000\x00"}),
            member(b"after-dir"),
        ]
    )
    path = write(tmp_path, data + END)
    index = check_against_tarfile(path)
    e = {x.name: x for x in index}
    assert list(e)[:3] == [b"dot", b"abs/path/file", b"base256"]
    assert (e[b"base256"].uid, e[b"base256"].gid) == (70000, 1234567)
    assert e[b"base256"].mtime_ns == 1_700_000_000 * 10**9
    assert e[b"base256-size"].size == 5
    assert e[b"negative-mtime"].mtime_ns == -1000 * 10**9
    assert (e[b"spaces"].mode, e[b"spaces"].uid) == (0o644, 0o12)
    assert b"a/very/deep/prefix/file.txt" in e
    assert e[b"frac"].mtime_ns == 1_600_000_000_123_456_789
    assert e[b"frac"].uid == 4_000_000_000
    assert e[b"before-epoch"].mtime_ns == -1_500_000_000
    assert long_name in e and e[long_name].size == len(b"long name data")
    assert e[b"short"].linkname == long_link
    assert e[b"hard-to-long"].linkname == b"hard/" + long_name
    pax_member = e["pax/ünï".encode()]
    assert pax_member.linkname == b"/some/where/../x"  # symlink targets are left alone
    assert pax_member.xattrs == {"security.capability": CAPABILITY, "user.nl": b"a\nb=c"}
    assert e[b"bin\xff\xfe-name"].size == len(b"binary name")
    assert e[b"pax-size"].size == 3
    assert e[b"dev/tty"].mode == 0o666 and e[b"dev/tty"].devmajor == 5
    assert e[b"v7-dir"].type == "d"
    assert e[b"v7-file"].type == "f"
    assert e[b"contiguous"].type == "f"
    assert e[b"dir-with-size"].size == 0
    assert e[b"after-dir"].offset == e[b"dir-with-size"].offset + 512


def test_global_pax_headers(tmp_path: Path) -> None:
    data = b"".join(
        [
            pax([(b"mtime", b"1000"), (b"uid", b"7"), (b"SCHILY.xattr.user.g", b"global")], b"g"),
            member(b"a"),
            pax([(b"uid", b"8"), (b"SCHILY.xattr.user.g", b"local")]),
            member(b"b"),
            pax([(b"mtime", b"")]),  # an empty value deletes the global one for this member
            member(b"c", mtime=42),
            pax([(b"uid", b"")], b"g"),  # ... and in a global header, for good
            member(b"d", uid=3),
        ]
    )
    index = TarIndex.scan(write(tmp_path, data + END))
    e = {x.name: x for x in index}
    assert (e[b"a"].uid, e[b"a"].mtime_ns, e[b"a"].xattrs) == (7, 10**12, {"user.g": b"global"})
    assert (e[b"b"].uid, e[b"b"].xattrs) == (8, {"user.g": b"local"})
    assert (e[b"c"].uid, e[b"c"].mtime_ns) == (7, 42 * 10**9)
    assert (e[b"d"].uid, e[b"d"].mtime_ns) == (3, 10**12)


@pytest.mark.parametrize(
    "tail",
    [END, bytes(512), b"", END + b"garbage after the end marker" * 50, bytes(100)],
    ids=["two-zero-blocks", "one-zero-block", "clean-eof", "junk-after-end", "short-zeros"],
)
def test_end_of_archive(tmp_path: Path, tail: bytes) -> None:
    path = write(tmp_path, member(b"a", b"1") + member(b"b", b"22") + tail)
    assert [e.name for e in TarIndex.scan(path)] == [b"a", b"b"]


def test_empty_archives(tmp_path: Path) -> None:
    assert len(TarIndex.scan(write(tmp_path, b"", "empty.tar"))) == 0
    assert len(TarIndex.scan(write(tmp_path, END, "zeros.tar"))) == 0


def test_progress_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, member(b"a", b"1") + END)
    seen: list[int] = []
    TarIndex.scan(path, seen.append)
    assert seen and seen[-1] == os.path.getsize(path)
    assert seen == sorted(seen)


# ---------------------------------------------------------------------------------------------
# Corrupt and hostile archives


GOOD = member(b"dir/", typeflag=b"5") + member(b"dir/file", b"x" * 700) + member(b"z", b"zz")


def flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


CORRUPT_CASES: dict[str, tuple[bytes, str, int | None]] = {
    # name: (archive, words expected in the message, offset expected in the message)
    "truncated-in-header": (GOOD[: 2048 + 100], "truncated", 2048),
    "truncated-in-data": (GOOD[: 1024 + 300], "truncated", 512),
    "truncated-in-pax-data": (pax([(b"path", b"p" * 600)])[:900], "truncated", 0),
    "flipped-checksum-digit": (flip(GOOD, 512 + 150), "checksum", 512),
    "flipped-name-byte": (flip(GOOD, 512 + 3) + END, "checksum", 512),
    "garbage": (random.Random(1).randbytes(4096), "checksum", 0),
    "text-file": (b"hello world\n" * 100, "checksum", 0),
    "dotdot": (member(b"../x", b"1"), "hostile name", 0),
    "dotdot-inside": (GOOD + member(b"a/b/../../../etc/passwd"), "hostile name", len(GOOD)),
    "dotdot-dot-slash": (member(b"./../x"), "hostile name", 0),
    "dotdot-last": (member(b"a/.."), "hostile name", 0),
    "dotdot-in-prefix": (member(b"x", prefix=b"../up"), "hostile name", 0),
    "dotdot-pax-path": (pax([(b"path", b"ok/../../bad")]) + member(b"a"), "hostile name", 0),
    "dotdot-gnu-longname": (gnu_long(b"../" * 50) + member(b"a"), "hostile name", 0),
    "dotdot-hardlink": (header(b"h", b"1", linkname=b"../../etc/shadow"), "hostile", 0),
    "empty-hardlink": (header(b"h", b"1"), "empty target", 0),
    "nul-in-pax-path": (pax([(b"path", b"a\x00b")]) + member(b"a"), "NUL", 0),
    "sparse": (member(b"s", b"x", b"S"), "unsupported entry type 'S'", 0),
    "multivolume": (member(b"m", b"x", b"M"), "unsupported entry type 'M'", 0),
    "unknown-type": (member(b"q", b"x", b"\x01"), "unsupported entry type", 0),
    "pax-sparse": (pax([(b"GNU.sparse.major", b"1")]) + member(b"a"), "sparse", 0),
    "pax-bad-length": (pax_raw(b"99 path=x\n") + member(b"a"), "malformed PAX", 0),
    "pax-short-length": (pax_raw(b"5 path=abc\n") + member(b"a"), "malformed PAX", 0),
    "pax-no-length": (pax_raw(b"path=abc\n") + member(b"a"), "malformed PAX", 0),
    "pax-no-equals": (pax_raw(b"9 pathx\n\n") + member(b"a"), "malformed PAX", 0),
    "pax-bad-uid": (pax([(b"uid", b"-5")]) + member(b"a"), "malformed PAX uid", 0),
    "pax-bad-size": (pax([(b"size", b"1e3")]) + member(b"a"), "malformed PAX size", 0),
    "pax-bad-mtime": (pax([(b"mtime", b"12:30")]) + member(b"a"), "malformed PAX mtime", 0),
    "pax-junk-after-nul": (pax_raw(b"9 a=bcd\n\x00junk") + member(b"a"), "malformed PAX", 0),
    "pax-huge-uid": (pax([(b"uid", b"99999999999")]) + member(b"a"), "out of range", 0),
    "pax-at-eof": (pax([(b"path", b"p")]), "not followed by a member", 0),
    "longname-at-end": (gnu_long(b"n") + END, "not followed by a member", 0),
    "negative-size": (member(b"n", fields={124: b256(-5, 12)}), "negative size", 0),
    "huge-uid": (member(b"u", fields={108: b256(2**40, 8)}), "out of range", 0),
    "huge-mtime": (member(b"t", fields={136: b256(2**80, 12)}), "out of range", 0),
    "bad-octal": (member(b"o", fields={100: b"06x4\x00\x00\x00\x00"}), "bad mode field", 0),
    "octal-sign": (member(b"o", fields={124: b"-0000000001\x00"}), "bad size field", 0),
    "huge-size": (member(b"h", fields={124: b"77777777777\x00"}), "truncated", 0),
    "huge-extension": (
        header(b"x", b"x", size=100 << 20) + bytes(1024),
        "too large",
        0,
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_CASES))
def test_corrupt_archives(tmp_path: Path, case: str) -> None:
    data, words, offset = CORRUPT_CASES[case]
    path = write(tmp_path, data)
    with pytest.raises(CorruptTar) as info:
        TarIndex.scan(path)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert words in message
    if offset is not None:
        assert message.endswith(f" at offset {offset}")


def test_fuzzed_archives_only_raise_corrupt_tar(tmp_path: Path) -> None:
    # Random damage to a valid archive must give an index or CorruptTar, never a crash.
    base = (
        b"".join(
            [
                pax([(b"path", b"p/x"), (b"mtime", b"1.5"), (b"SCHILY.xattr.user.a", b"\xff")]),
                member(b"f", b"data"),
                gnu_long(b"long/" * 30),
                header(b"l", b"2", linkname=b"t"),
                member(b"d", typeflag=b"3", devmajor=1, devminor=2),
                member(b"b256", fields={108: b256(9, 8), 124: b256(1, 12)}) + pad(b"1"),
            ]
        )
        + END
    )
    path = tmp_path / "fuzz.tar"
    rng = random.Random(1234)
    outcomes = {"ok": 0, "corrupt": 0}
    for i in range(600):
        data = bytearray(base)
        if i % 3 == 0:
            data = data[: rng.randrange(len(data))]
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(data)) if data else 0
            if data:
                data[pos] = rng.randrange(256)
        if i % 2:
            # Fix up the checksums so that the damage reaches the field parsers.
            for off in range(0, len(data) - 511, 512):
                blk = data[off : off + 512]
                if blk[156:157] in b"0x2L3" and any(blk[:8]):
                    blk[148:156] = b" " * 8
                    blk[148:156] = b"%06o\x00 " % (sum(blk) & 0o777777)
                    data[off : off + 512] = blk
        path.write_bytes(bytes(data))
        try:
            TarIndex.scan(str(path))
            outcomes["ok"] += 1
        except CorruptTar as exc:
            assert "\n" not in str(exc)
            outcomes["corrupt"] += 1
    assert outcomes["ok"] and outcomes["corrupt"]


# ---------------------------------------------------------------------------------------------
# Saving and loading


def tar_with_xattrs(tmp_path: Path) -> str:
    data = b"".join(
        [
            member(b"a", b"aaa", uid=1, gid=2),
            pax(
                [
                    (b"SCHILY.xattr.security.capability", CAPABILITY),
                    ("SCHILY.xattr.user.ü".encode(), b""),
                ]
            ),
            member(b"b", b"bbbb"),
            header(b"c", b"2", linkname=b"a"),
            header(b"d", b"1", linkname=b"a"),
            member(b"e", typeflag=b"4", devmajor=8, devminor=1),
        ]
    )
    return write(tmp_path, data + END)


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = tar_with_xattrs(tmp_path)
    index = TarIndex.scan(path)
    index.save(path + ".idx")
    assert sorted(os.listdir(tmp_path)) == ["t.tar", "t.tar.idx"]  # no temp file left behind
    with open(path + ".idx", "rb") as f:
        assert f.read(5) == FORMAT_MAGIC
    loaded = TarIndex.load(path + ".idx", path)
    assert loaded is not None
    assert loaded.tar_path == path
    assert list(loaded) == list(index)
    assert [loaded.entry(i) for i in range(len(loaded))] == list(index)
    assert loaded.entry(-1) == index.entry(len(index) - 1)
    assert loaded.entry(1).xattrs == {"security.capability": CAPABILITY, "user.ü": b""}
    assert loaded.find(b"d") == 3
    assert loaded.verify_unchanged()
    with pytest.raises(IndexError):
        loaded.entry(len(loaded))


def test_empty_index_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, END)
    TarIndex.scan(path).save(path + ".idx")
    loaded = TarIndex.load(path + ".idx", path)
    assert loaded is not None and len(loaded) == 0 and list(loaded) == []


def _append(path: str) -> None:
    with open(path, "ab") as f:
        f.write(bytes(512))


def _touch(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def _replace(path: str) -> None:
    # Same bytes and mtime, new inode: a re-exported image.
    shutil.copy2(path, path + ".new")
    os.replace(path + ".new", path)


def _corrupt_index(offset: int) -> Callable[[str], None]:
    def damage(path: str) -> None:
        with open(path + ".idx", "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))

    return damage


def _truncate_index(path: str) -> None:
    with open(path + ".idx", "r+b") as f:
        f.truncate(os.path.getsize(path + ".idx") - 3)


@pytest.mark.parametrize(
    "change",
    [
        _append,
        _touch,
        _replace,
        _corrupt_index(0),  # magic
        _corrupt_index(5),  # format version
        _corrupt_index(100),  # payload: crc mismatch
        _truncate_index,
        lambda path: os.unlink(path + ".idx"),
        lambda path: os.unlink(path),
    ],
    ids=[
        "size",
        "mtime",
        "inode",
        "magic",
        "version",
        "payload",
        "truncated",
        "no-index",
        "no-tar",
    ],
)
def test_load_rejects_stale_or_damaged(tmp_path: Path, change: Callable[[str], None]) -> None:
    path = tar_with_xattrs(tmp_path)
    index = TarIndex.scan(path)
    index.save(path + ".idx")
    assert TarIndex.load(path + ".idx", path) is not None
    change(path)
    assert TarIndex.load(path + ".idx", path) is None
    if change in (_append, _touch, _replace):
        assert not index.verify_unchanged()


def test_open_index_scans_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tar_with_xattrs(tmp_path)
    first = open_index(path)
    assert os.path.exists(path + ".idx")

    def no_scan(*args: object, **kwargs: object) -> TarIndex:
        raise AssertionError("should have loaded the saved index")

    monkeypatch.setattr(TarIndex, "scan", classmethod(no_scan))
    assert list(open_index(path)) == list(first)
    monkeypatch.undo()

    _touch(path)  # stale: scanned and saved again
    again = open_index(path)
    assert list(again) == list(first)
    assert TarIndex.load(path + ".idx", path) is not None


def test_open_index_survives_unwritable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tar_with_xattrs(tmp_path)

    def fail(self: TarIndex, index_path: str) -> None:
        raise PermissionError(13, "Permission denied", index_path)

    monkeypatch.setattr(TarIndex, "save", fail)
    assert len(open_index(path)) == 5


def test_open_index_reports_corruption(tmp_path: Path) -> None:
    path = write(tmp_path, member(b"../evil", b"x"))
    with pytest.raises(CorruptTar):
        open_index(path)
    assert not os.path.exists(path + ".idx")


# ---------------------------------------------------------------------------------------------
# A sanity benchmark: printed (run with -s), not asserted.


def _many_members_tar(path: Path, count: int) -> None:
    template = bytearray(header(b"", size=1))
    template[0:100] = bytes(100)
    template[148:156] = b" " * 8
    base_sum = sum(template)
    parts = []
    data_block = pad(b"x")
    for i in range(count):
        name = b"usr/share/pkg%05d/file%05d.txt" % (i // 100, i)
        template[0 : len(name)] = name
        template[148:156] = b"%06o\x00 " % (base_sum + sum(name))
        parts.append(bytes(template))
        parts.append(data_block)
    parts.append(END)
    path.write_bytes(b"".join(parts))


def test_benchmark_100k(tmp_path: Path) -> None:
    path = tmp_path / "many.tar"
    _many_members_tar(path, 100_000)
    started = time.perf_counter()
    index = TarIndex.scan(str(path))
    scanned = time.perf_counter()
    index.save(str(path) + ".idx")
    saved = time.perf_counter()
    loaded = TarIndex.load(str(path) + ".idx", str(path))
    done = time.perf_counter()
    assert loaded is not None and len(loaded) == 100_000
    assert loaded.entry(99_999).name == b"usr/share/pkg00999/file99999.txt"
    print(
        f"\n100k members: scan {scanned - started:.3f}s, save {saved - scanned:.3f}s, "
        f"load {done - saved:.3f}s, index {os.path.getsize(str(path) + '.idx') / 1e6:.1f} MB"
    )
