"""Tar members built byte by byte, and the check of a scan against tarfile's reading."""

from __future__ import annotations

import tarfile
from decimal import Decimal
from pathlib import Path

from fusebundle.tar.index import IndexEntry, TarIndex

END = bytes(1024)


def pad(data: bytes) -> bytes:
    """Pad member data to a whole number of 512-byte blocks."""
    return data + bytes(-len(data) % 512)


def b256(value: int, width: int) -> bytes:
    """GNU base-256 encoding of *value* in a field of *width* bytes."""
    if value >= 0:
        return b"\x80" + value.to_bytes(width - 1, "big")
    return (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")


def header(
    name: bytes,
    typeflag: bytes = b"0",
    *,
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1_600_000_000,
    linkname: bytes = b"",
    prefix: bytes = b"",
    magic: bytes = b"ustar\x0000",
    devmajor: int = 0,
    devminor: int = 0,
    fields: dict[int, bytes] | None = None,
    signed_checksum: bool = False,
) -> bytes:
    """One 512-byte header; *fields* maps offsets to raw bytes pasted in before the checksum."""
    h = bytearray(512)
    h[0 : len(name)] = name
    h[100:108] = b"%07o\x00" % mode
    h[108:116] = b"%07o\x00" % uid
    h[116:124] = b"%07o\x00" % gid
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"%011o\x00" % mtime
    h[156:157] = typeflag
    h[157 : 157 + len(linkname)] = linkname
    h[257:265] = magic
    h[265:269] = b"user"
    h[297:302] = b"group"
    h[329:337] = b"%07o\x00" % devmajor
    h[337:345] = b"%07o\x00" % devminor
    h[345 : 345 + len(prefix)] = prefix
    for offset, raw in (fields or {}).items():
        h[offset : offset + len(raw)] = raw
    assert len(h) == 512
    h[148:156] = b" " * 8
    chk = sum(b - 256 if signed_checksum and b >= 128 else b for b in h)
    h[148:156] = b"%06o\x00 " % (chk & 0o777777)
    return bytes(h)


def member(name: bytes, data: bytes = b"", typeflag: bytes = b"0", **kw: object) -> bytes:
    """A header plus its padded data."""
    return header(name, typeflag, size=len(data), **kw) + pad(data)  # type: ignore[arg-type]


def pax_record(key: bytes, value: bytes) -> bytes:
    """One PAX record; its decimal length prefix counts itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(body) + len(str(length)) != length:
        length = len(body) + len(str(length))
    return str(length).encode() + body


def pax(records: list[tuple[bytes, bytes]], typeflag: bytes = b"x") -> bytes:
    """A PAX extended ('x') or global ('g') header with its records."""
    return member(b"PaxHeaders/x", b"".join(pax_record(k, v) for k, v in records), typeflag)


def pax_raw(data: bytes, typeflag: bytes = b"x") -> bytes:
    """A PAX header with arbitrary (possibly malformed) record data."""
    return member(b"PaxHeaders/x", data, typeflag)


def gnu_long(value: bytes, typeflag: bytes = b"L") -> bytes:
    """A GNU long name ('L') or long link name ('K') pseudo-member."""
    return member(b"././@LongLink", value + b"\x00", typeflag, magic=b"ustar  \x00")


def write(tmp_path: Path, data: bytes, name: str = "t.tar") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------------------------------------
# What tarfile says about an archive, in IndexEntry terms.


def norm(name: str) -> bytes:
    """Independent re-statement of the normalisation rules, for expected values."""
    raw = name.encode("utf-8", "surrogateescape")
    return b"/".join(p for p in raw.split(b"/") if p not in (b"", b"."))


def expected_from_tarfile(path: str) -> list[IndexEntry]:
    type_codes = {
        tarfile.REGTYPE: "f",
        tarfile.AREGTYPE: "f",
        tarfile.CONTTYPE: "f",
        tarfile.GNUTYPE_SPARSE: "f",  # read with its holes (TarIndex.scan(sparse=True))
        tarfile.LNKTYPE: "h",
        tarfile.SYMTYPE: "l",
        tarfile.CHRTYPE: "c",
        tarfile.BLKTYPE: "b",
        tarfile.DIRTYPE: "d",
        tarfile.FIFOTYPE: "p",
    }
    out = []
    with tarfile.open(path) as tf:
        for ti in tf:
            name = norm(ti.name)
            if not name:
                continue
            code = type_codes[ti.type]
            if code == "l":
                link = ti.linkname.encode("utf-8", "surrogateescape")
            elif code == "h":
                link = norm(ti.linkname)
            else:
                link = b""
            # tarfile turns a fractional PAX mtime into a float; the record itself is exact.
            if "mtime" in ti.pax_headers:
                mtime_ns = int(Decimal(ti.pax_headers["mtime"]) * 10**9)
            else:
                mtime_ns = int(ti.mtime) * 10**9
            xattrs = {
                k[len("SCHILY.xattr.") :]: v.encode("utf-8", "surrogateescape")
                for k, v in ti.pax_headers.items()
                if k.startswith("SCHILY.xattr.")
            }
            out.append(
                IndexEntry(
                    name=name,
                    type=code,
                    mode=ti.mode & 0o7777,
                    uid=ti.uid,
                    gid=ti.gid,
                    size=ti.size if code == "f" else 0,
                    mtime_ns=mtime_ns,
                    linkname=link,
                    devmajor=ti.devmajor if code in "cb" else 0,
                    devminor=ti.devminor if code in "cb" else 0,
                    offset=ti.offset_data,
                    xattrs=xattrs,
                )
            )
    return out


def check_against_tarfile(path: str) -> TarIndex:
    """Scan *path* and require every field to match tarfile's view, and the data offsets."""
    index = TarIndex.scan(path)
    expected = expected_from_tarfile(path)
    got = list(index)
    assert [e.name for e in got] == [e.name for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g == e, e.name
    with open(path, "rb") as f, tarfile.open(path) as tf:
        members = [m for m in tf.getmembers() if norm(m.name)]
        for e, ti in zip(got, members, strict=True):
            if e.type == "f":
                f.seek(e.offset)
                data = f.read(e.size)
                member_file = tf.extractfile(ti)
                assert member_file is not None
                assert data == member_file.read()
                assert len(data) == e.size
    assert len(index) == len(expected)
    return index


# ---------------------------------------------------------------------------------------------
# Archives written by tarfile
