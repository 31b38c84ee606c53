"""The tar header, field by field: numbers, names, PAX and GNU extension records, global
records, sparse maps, and the bounds one archive may ask of us.

Everything here is the scanner's rare or careful path (`scan` keeps only the hot loop): a field
the fast path could not read, an extension header, a sparse member, a link or a device.  Its
public names are that face, for `scan`, `feed` and `index`; the rest of the house reads tars
through `index` and `extent` (and the type codes, TYPE_*, of the index's types column).
"""

from __future__ import annotations

import array
import errno
import os
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Protocol

ZERO_BLOCK = bytes(512)

# Bounds on what one archive may ask of us.  Anything beyond them is refused with CorruptTar,
# so a hostile layer costs at most a fixed factor of its own size in memory and time.
# GNU long names and PAX headers are read into memory whole: 1 MiB, the limit of Go's
# archive/tar (maxSpecialFileSize) and libarchive's pax reader.
_MAX_EXT_HEADER = 1 << 20
# A path or hard link target longer than Linux's PATH_MAX (4096 with its NUL) or with a
# component longer than NAME_MAX (255) could never be created or looked up by the kernel.
_MAX_NAME = 4095
MAX_COMPONENT = 255
# A symlink's target is limited to PATH_MAX - 1 bytes by symlink(2) as well.
MAX_LINK = 4095
# Linux xattr limits (include/uapi/linux/limits.h): XATTR_NAME_MAX, XATTR_SIZE_MAX per value,
# XATTR_LIST_MAX for the NUL-separated list of one file's names (which bounds their count).
_MAX_XATTR_NAME = 255
_MAX_XATTR_VALUE = 64 << 10
_MAX_XATTR_LIST = 64 << 10
# All xattr values of one member together: what a single PAX header of _MAX_EXT_HEADER bytes
# could carry; global records count towards it for every member they apply to.
_MAX_XATTR_BYTES = _MAX_EXT_HEADER
# Global xattrs are shared by the members they apply to; a global header that changes them
# after a member used them copies the set.  The copies are paid from a budget of one xattr per
# 512-byte block of input (plus one full list), which keeps memory linear in the input.
_XATTR_COPY_BUDGET_BASE = _MAX_XATTR_LIST
# Times are kept as int64 nanoseconds (up to 2262-04-11).  GNU tar and bsdtar write later
# times as whole seconds; those are clamped to the largest whole second that fits.  Seconds
# beyond a 64-bit time_t are no time any system can hold: refused.
_MAX_TIME_S = (1 << 63) - 1
_NS_MAX = (1 << 63) - 1
_CLAMP_NS = _NS_MAX // 1_000_000_000 * 1_000_000_000

# The fields every member needs: name, mode+uid+gid (as one key for a cache), size, mtime,
# chksum, typeflag.  The rarely needed linkname (157), magic (257), devmajor/devminor (329,
# 337) and prefix (345) are sliced out of the block on demand.
HEADER = struct.Struct("100s24s12s12s8sB")
USTAR_MAGIC = b"ustar\x00"
ODD_START = (b".", b"/")

TYPE_CODES = bytearray(256)
for _flag, _code in (
    (b"0", b"f"), (b"\x00", b"f"), (b"7", b"f"), (b"1", b"h"), (b"2", b"l"),
    (b"3", b"c"), (b"4", b"b"), (b"5", b"d"), (b"6", b"p"),
):  # fmt: skip
    TYPE_CODES[_flag[0]] = _code[0]
del _flag, _code
TYPE_CODES_SPARSE = bytearray(TYPE_CODES)
TYPE_CODES_SPARSE[ord("S")] = ord("f")
# The index's types column: one byte per entry, its Entry.type letter (these four are the ones
# the merge and the tree branch on; devices and FIFOs keep theirs, b"c", b"b", b"p").
TYPE_F, TYPE_H, TYPE_L, TYPE_D = b"fhld"
TYPE_WORDS = {
    TYPE_F: "regular file", TYPE_H: "hard link", TYPE_L: "symlink", TYPE_D: "directory",
    ord("c"): "character device", ord("b"): "block device", ord("p"): "FIFO",
}  # fmt: skip
TYPE_LINKS = frozenset(b"hl")
TYPE_DEVICES = frozenset(b"cb")  # the types column's device codes: character, block
AREGTYPE = 0
GNU_LONGNAME = ord("L")
GNU_LONGLINK = ord("K")
PAX_LOCAL = frozenset(b"xX")  # 'X' is the old Solaris spelling of 'x'
PAX_GLOBAL = ord("g")
EXT_TYPES = frozenset(b"xXgLK")
# Types refused with a word on what they are, so the user knows what the layer holds.
UNSUPPORTED = {
    ord("S"): "GNU sparse file",
    ord("M"): "GNU multi-volume continuation",
    ord("V"): "GNU volume label",
    ord("D"): "GNU dump directory",
    ord("N"): "old GNU long name",
}

_U32_MAX = 0xFFFFFFFF
_XATTR_PREFIX = b"SCHILY.xattr."
_SPARSE_PREFIX = b"GNU.sparse."
_SPARSE_0_0 = frozenset([b"GNU.sparse.offset", b"GNU.sparse.numbytes"])
GNU_SPARSE = ord("S")
SPARSE_CARRIERS = frozenset(b"0\x007")  # the regular-file types a PAX sparse map may ride on


class Corrupt(Exception):
    """A problem found while scanning (the tar package's own: the index adds the path and
    offset and raises CorruptTar)."""


class TarBytes(Protocol):
    """The bytes of the tar being scanned: a whole file, or one still being written (feed.py)."""

    def read(self, n: int, pos: int) -> bytes:
        """Bytes [pos, pos + n) of the tar, as pread gives them: fewer only where it ends."""
        ...

    def at_least(self, size: int) -> int:
        """A size the tar is known to have: `size` or more, or its whole size if shorter."""
        ...


class FileBytes:
    """A tar that is all there: a file open on `fd`, `size` bytes long."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def read(self, n: int, pos: int) -> bytes:
        """Bytes [pos, pos + n), fewer only at the end of the file."""
        return os.pread(self.fd, n, pos)

    def at_least(self, size: int) -> int:
        """The file's size (it is known whatever `size` asks)."""
        return self.size


# ---------------------------------------------------------------------------------------------
# Field parsing


def number_field(fld: bytes, what: str) -> int:
    """Parse the numeric header field *what*: octal text ended by NUL/space, or GNU base-256."""
    if fld and fld[0] & 0x80:
        # Base-256: big-endian two's complement over all bits but the marker bit, so both
        # the 0x80 (positive) and 0xff (negative) lead bytes of GNU tar decode correctly.
        bits = 8 * len(fld) - 1
        value = int.from_bytes(fld, "big") & ((1 << bits) - 1)
        if value >> (bits - 1):
            value -= 1 << bits
        return value
    text = fld.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0
    # int() would also take signs, underscores and other whitespace; octal fields may not.
    if not text.isdigit():
        raise Corrupt(f"bad {what} field {fld!r}")
    try:
        return int(text, 8)
    except ValueError:
        raise Corrupt(f"bad {what} field {fld!r}") from None


def _pax_int(key: bytes, value: bytes) -> int:
    if not value.isdigit() or len(value) > 30:
        raise Corrupt(f"malformed PAX {key.decode('ascii', 'replace')} value {value[:40]!r}")
    return int(value)


def seconds_ns(seconds: int) -> int:
    """Nanoseconds for a header's whole seconds, clamped to int64 (see _CLAMP_NS)."""
    if not -_MAX_TIME_S <= seconds <= _MAX_TIME_S:
        raise Corrupt("mtime out of range")
    ns = seconds * 1_000_000_000
    if -_CLAMP_NS <= ns <= _CLAMP_NS:
        return ns
    return _CLAMP_NS if ns > 0 else -_CLAMP_NS


def _pax_time_ns(value: bytes) -> int:
    """Exact nanoseconds from a PAX time such as b'1600000000.123456789' (no float rounding)."""
    neg = value[:1] == b"-"
    whole, dot, frac = (value[1:] if neg else value).partition(b".")
    if not whole.isdigit() or (dot and frac and not frac.isdigit()) or len(whole) > 30:
        raise Corrupt(f"malformed PAX mtime {value[:40]!r}")
    seconds = int(whole)
    ns = seconds * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0"))
    if ns > _NS_MAX:
        return seconds_ns(-seconds if neg else seconds)
    return -ns if neg else ns


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Split PAX records ``b"%d %s=%s\\n"``; values are raw bytes (xattrs may be binary)."""
    records: dict[bytes, bytes] = {}
    sparse_0_0: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            # Some writers pad the record area; only NULs may follow the last record.
            if data.count(0, pos) != end - pos:
                raise Corrupt("malformed PAX header (data after NUL padding)")
            break
        sp = data.find(b" ", pos, pos + 21)
        if sp <= pos:
            raise Corrupt("malformed PAX record (no length)")
        length_text = data[pos:sp]
        if not length_text.isdigit():
            raise Corrupt("malformed PAX record (bad length)")
        length = int(length_text)
        rec_end = pos + length
        if rec_end > end or length <= sp - pos + 2 or data[rec_end - 1] != 0x0A:
            raise Corrupt("malformed PAX record (bad length)")
        key, eq, value = data[sp + 1 : rec_end - 1].partition(b"=")
        if not eq or not key:
            raise Corrupt("malformed PAX record (no key=value)")
        if key in _SPARSE_0_0:
            # Format 0.0 repeats these two keywords, once per fragment, in order: kept as
            # the comma-separated map of format 0.1 (as Go's reader does).
            if b"," in value:
                raise Corrupt("malformed PAX GNU sparse record")
            sparse_0_0.append(value)
        else:
            records[key] = value
        pos = rec_end
    if sparse_0_0:
        records[b"GNU.sparse.map"] = b",".join(sparse_0_0)
    return records


# Keywords that override header fields; a global header's others (comment, ...) are not kept.
_PAX_FIELDS = frozenset([b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime"])


def xattrs_of(records: dict[bytes, bytes]) -> dict[str, bytes]:
    """The SCHILY.xattr.* records of one PAX header, each checked against the Linux limits."""
    attrs: dict[str, bytes] = {}
    for key, value in records.items():
        if key.startswith(_XATTR_PREFIX):
            attr = key[len(_XATTR_PREFIX) :]
            if not attr:
                raise Corrupt("malformed PAX record (empty xattr name)")
            if b"\x00" in attr:
                raise Corrupt(f"NUL byte in xattr name {attr[:100]!r}")
            if len(attr) > _MAX_XATTR_NAME:
                raise Corrupt(f"xattr name of {len(attr)} bytes (limit {_MAX_XATTR_NAME})")
            if len(value) > _MAX_XATTR_VALUE:
                raise Corrupt(
                    f"xattr {attr[:100]!r} value of {len(value)} bytes (limit {_MAX_XATTR_VALUE})"
                )
            attrs[attr.decode("utf-8", "surrogateescape")] = value
    return attrs


def _attr_len(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def _check_xattr_totals(names_len: int, values_len: int) -> None:
    if names_len > _MAX_XATTR_LIST:
        raise Corrupt(f"xattr names of {names_len} bytes for one member (limit {_MAX_XATTR_LIST})")
    if values_len > _MAX_XATTR_BYTES:
        raise Corrupt(
            f"xattr values of {values_len} bytes for one member (limit {_MAX_XATTR_BYTES})"
        )


class Globals:
    """What the global PAX headers seen so far say about every following member.

    Like GNU tar and tarfile (Go and libarchive ignore them), their keywords apply to each
    later member unless its own header overrides them; an empty value deletes one (POSIX).
    The xattrs are one dict shared by all the members they apply to, never copied into each.
    """

    __slots__ = ("fields", "xattrs", "view", "names_len", "values_len", "spent", "src")

    def __init__(self, src: TarBytes) -> None:
        self.fields: dict[bytes, bytes] = {}
        self.xattrs: dict[str, bytes] = {}
        self.view: Mapping[str, bytes] | None = None  # read-only, once a member shares it
        self.names_len = 0
        self.values_len = 0
        self.spent = 0  # xattr copies paid so far
        self.src = src  # its size sets the budget

    def update(self, records: dict[bytes, bytes]) -> None:
        """Apply one global header's records."""
        fields = self.fields
        for key, value in records.items():
            if key in _PAX_FIELDS or key.startswith(_SPARSE_PREFIX):
                if value:
                    fields[key] = value
                else:
                    fields.pop(key, None)
        attrs = xattrs_of(records)
        if not attrs:
            return
        if self.view is not None:
            # Members already share the current set: change a copy, paid from the budget.
            self.spend(len(self.xattrs))
            self.xattrs = dict(self.xattrs)
            self.view = None
        xattrs = self.xattrs
        for attr, value in attrs.items():
            # An empty xattr is a real value, not a deletion (Go's archive/tar writes them).
            old = xattrs.get(attr)
            if old is None:
                self.names_len += _attr_len(attr) + 1
            else:
                self.values_len -= len(old)
            self.values_len += len(value)
            xattrs[attr] = value
        _check_xattr_totals(self.names_len, self.values_len)

    def spend(self, entries: int) -> None:
        """Pay for copying global xattrs; refuse an archive that makes them cost too much."""
        self.spent += entries
        # The budget is the base plus one per block of the whole tar: asked of the tar only
        # when the base is spent, and only as far as this payment needs it to reach.
        over = self.spent - _XATTR_COPY_BUDGET_BASE
        if over > 0 and self.src.at_least(512 * over) // 512 < over:
            raise Corrupt("global PAX headers change xattrs too often")

    def shared(self) -> Mapping[str, bytes]:
        """The current global xattrs as one read-only mapping for all the members using it."""
        if self.view is None:
            self.view = MappingProxyType(self.xattrs)
        return self.view

    def check_member(self, local: dict[str, bytes]) -> None:
        """Refuse a member whose own xattrs and the global ones together pass the limits."""
        names_len, values_len = self.names_len, self.values_len
        shared = self.xattrs
        for attr, value in local.items():
            old = shared.get(attr)
            if old is None:
                names_len += _attr_len(attr) + 1
            else:
                values_len -= len(old)
            values_len += len(value)
        _check_xattr_totals(names_len, values_len)


def check_name(name: bytes, what: str) -> None:
    """Refuse a normalised name the kernel could not create (see _MAX_NAME)."""
    if len(name) > _MAX_NAME:
        raise Corrupt(f"{what} of {len(name)} bytes (limit {_MAX_NAME}) {name[:100]!r}...")
    if len(name) > MAX_COMPONENT and max(map(len, name.split(b"/"))) > MAX_COMPONENT:
        raise Corrupt(f"{what} with a component over {MAX_COMPONENT} bytes {name[:100]!r}...")


def normalize_name(name: bytes, what: str = "name") -> bytes:
    """Normalise a member name: no leading './' or '/', no empty or '.' components.

    Raises Corrupt for a component '..' (the member would escape the tree) or a NUL byte.
    """
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise Corrupt(f"hostile {what} {name[:200]!r}")
    if b"\x00" in name:
        raise Corrupt(f"NUL byte in {what} {name[:200]!r}")
    return b"/".join(parts)


# ---------------------------------------------------------------------------------------------
# GNU sparse members: the stored fragments, one after another, and where they go


def checked_fragments(numbers: list[int], real_size: int, stored: int) -> array.array[int]:
    """Check a map of (offset, length) pairs as Go's reader does, drop empty fragments.

    Fragments must be in order, not overlap, end within the real size and together hold
    exactly the bytes stored in the archive.
    """
    if not 0 <= real_size <= _NS_MAX:
        raise Corrupt(f"GNU sparse real size {real_size} out of range")
    out = array.array("q")
    end = total = 0
    for k in range(0, len(numbers) - 1, 2):
        offset, length = numbers[k], numbers[k + 1]
        if offset < end or length < 0 or offset + length > real_size:
            raise Corrupt("GNU sparse map out of order, overlapping or past the real size")
        end = offset + length
        total += length
        if length:
            out.append(offset)
            out.append(length)
    if total != stored:
        raise Corrupt(f"GNU sparse map holds {total} bytes, the member {stored}")
    return out


def old_gnu_map(src: TarBytes, blk: bytes, data_pos: int) -> tuple[list[int], int, int]:
    """(map numbers, real size, data start) of an old GNU 'S' header and its extension blocks."""
    numbers: list[int] = []

    def take(area: bytes, count: int) -> None:
        for k in range(0, 24 * count, 24):
            if area[k] == 0:
                return  # an empty offset ends the list (as in GNU tar, bsdtar and Go)
            numbers.append(number_field(area[k : k + 12], "sparse offset"))
            numbers.append(number_field(area[k + 12 : k + 24], "sparse length"))

    take(blk[386:482], 4)
    real_size = number_field(blk[483:495], "sparse real size")
    extended = blk[482]
    while extended:
        ext = src.read(512, data_pos)
        if len(ext) != 512:
            raise Corrupt("truncated file (GNU sparse extension block past end of file)")
        take(ext, 21)
        extended = ext[504]
        data_pos += 512
    return numbers, real_size, data_pos


def _map_1_0(src: TarBytes, data_pos: int, size: int) -> tuple[list[int], int]:
    """(map numbers, bytes the map takes) of PAX sparse format 1.0: decimal lines at the
    start of the data (a count, then offset and length pairs), padded to a whole block."""
    chunk = b""
    numbers: list[int] = []
    need = 1
    at = 0
    limit = min(size, _MAX_EXT_HEADER)
    while len(numbers) < need:
        nl = chunk.find(b"\n", at)
        if nl < 0:
            if len(chunk) >= limit:
                raise Corrupt(f"GNU sparse map longer than the member or {_MAX_EXT_HEADER} bytes")
            want = min(max(512, len(chunk)), limit - len(chunk))
            more = src.read(want, data_pos + len(chunk))
            if not more:
                raise Corrupt("truncated file (GNU sparse map past end of file)")
            chunk += more
            continue
        numbers.append(_pax_int(b"GNU sparse map", chunk[at:nl]))
        at = nl + 1
        if len(numbers) == 1:
            if numbers[0] > _MAX_EXT_HEADER // 4:  # each pair takes at least four bytes
                raise Corrupt(f"GNU sparse map of {numbers[0]} fragments")
            need = 1 + 2 * numbers[0]
    map_len = (at + 511) & ~511
    if map_len > size:
        raise Corrupt("GNU sparse map longer than the member")
    return numbers[1:], map_len


def pax_sparse_format(pax: dict[bytes, bytes]) -> str | None:
    """The PAX sparse format of a member ('0.x' or '1.0'), None if it is not sparse."""
    get = pax.get
    major, minor = get(b"GNU.sparse.major"), get(b"GNU.sparse.minor")
    if major == b"1" and minor == b"0":
        return "1.0"
    if major == b"0" and minor in (b"0", b"1"):
        return "0.x"
    if major or minor:
        raise Corrupt(f"unsupported GNU sparse version {major!r}.{minor!r}")
    if get(b"GNU.sparse.map") is not None or get(b"GNU.sparse.size"):
        return "0.x"  # 0.0 and 0.1 wrote no version
    return None  # other GNU.sparse records alone mean nothing (Go ignores them too)


def pax_sparse_layout(
    pax: dict[bytes, bytes], version: str, src: TarBytes, data_pos: int, size: int
) -> tuple[list[int], int, int]:
    """(map numbers, real size, bytes of map before the data) of a PAX sparse member."""
    get = pax.get
    real = get(b"GNU.sparse.size") or get(b"GNU.sparse.realsize")
    if not real:
        raise Corrupt("GNU sparse member without its real size")
    real_size = _pax_int(b"GNU.sparse.size", real)
    if version == "1.0":
        numbers, map_len = _map_1_0(src, data_pos, size)
        return numbers, real_size, map_len
    count = _pax_int(b"GNU.sparse.numblocks", get(b"GNU.sparse.numblocks") or b"")
    text = get(b"GNU.sparse.map") or b""
    parts = text.split(b",") if text else []
    if len(parts) != 2 * count:
        raise Corrupt(f"GNU sparse map of {len(parts)} numbers for {count} fragments")
    return [_pax_int(b"GNU.sparse.map", x) for x in parts], real_size, 0


def read_sparse(
    fd: int, offset: int, fragments: array.array[int], size: int, pos: int, n: int
) -> bytes:
    """Bytes [pos, pos+n) of a sparse member of *size* bytes, holes read as zeros.

    *fragments* are TarIndex.sparse_map's (offset, length) pairs, stored one after another
    from *offset* in the file open on *fd*.
    """
    end = min(pos + n, size)
    if pos >= end:
        return b""
    out = bytearray(end - pos)
    physical = offset
    for k in range(0, len(fragments), 2):
        frag, length = fragments[k], fragments[k + 1]
        lo, hi = max(frag, pos), min(frag + length, end)
        if lo < hi:
            data = os.pread(fd, hi - lo, physical + (lo - frag))
            if len(data) != hi - lo:
                raise OSError(errno.EIO, "sparse member data past end of file")
            out[lo - pos : hi - pos] = data
        elif frag >= end:
            break
        physical += length
    return bytes(out)


def owner_fields(fld: bytes) -> tuple[int, int, int]:
    """Parse the 24 bytes of mode, uid and gid fields into (mode & 0o7777, uid, gid)."""
    mode, uid, gid = (
        number_field(fld[:8], "mode") & 0o7777,
        number_field(fld[8:16], "uid"),
        number_field(fld[16:], "gid"),
    )
    if not (0 <= uid <= _U32_MAX and 0 <= gid <= _U32_MAX):
        raise Corrupt("uid/gid out of range")
    return mode, uid, gid


def device_fields(blk: bytes) -> tuple[int, int]:
    """(devmajor, devminor) of a device header, each a 32-bit number as Linux's dev_t holds."""
    major, minor = number_field(blk[329:337], "devmajor"), number_field(blk[337:345], "devminor")
    if not (0 <= major <= _U32_MAX and 0 <= minor <= _U32_MAX):
        raise Corrupt("device number out of range")
    return major, minor


def read_ext(
    src: TarBytes, buf: bytes, buf_start: int, data_pos: int, size: int, flag: int
) -> bytes:
    """Return the data of a GNU long name/link or PAX header, from *buf* if it holds it."""
    if size < 0:
        raise Corrupt("negative size")
    if size > _MAX_EXT_HEADER:
        raise Corrupt(
            f"extension header {chr(flag)!r} of {size} bytes is too large"
            f" (limit {_MAX_EXT_HEADER})"
        )
    if data_pos + size > src.at_least(data_pos + size):
        raise Corrupt("truncated file (extension header data past end of file)")
    rel = data_pos - buf_start
    if rel >= 0 and rel + size <= len(buf):
        return buf[rel : rel + size]
    data = src.read(size, data_pos)
    if len(data) != size:
        raise Corrupt("truncated file (extension header data past end of file)")
    return data


def checksum_ok(blk: bytes, f_chk: bytes) -> bool:
    """Exact checksum test, accepting the signed-byte sums some historic tars wrote."""
    try:
        chk = number_field(f_chk, "checksum")
    except Corrupt:
        return False
    rest = blk[:148] + blk[156:]
    unsigned = sum(rest) + 8 * 32
    if unsigned == chk:
        return True
    high = len(rest) - len(rest.translate(None, bytes(range(128, 256))))
    return unsigned - 256 * high == chk


def apply_pax(
    pax: dict[bytes, bytes],
    name: bytes,
    link: bytes,
    size: int,
    uid: int,
    gid: int,
    mtime_ns: int,
) -> tuple[bytes, bytes, int, int, int, int, bool]:
    """Let PAX records override the header fields (xattrs are xattrs_of's job).

    The last value says whether GNU.sparse records are present.

    An empty value means the keyword was deleted (POSIX): the header field stands.
    hdrcharset needs no handling as names are kept as bytes; atime, ctime, uname, comment...
    are not indexed.
    """
    get = pax.get
    if value := get(b"path"):
        if b"\x00" in value:
            raise Corrupt(f"NUL byte in PAX path {value[:200]!r}")
        name = value
    if value := get(b"linkpath"):
        if b"\x00" in value:
            raise Corrupt(f"NUL byte in PAX linkpath {value[:200]!r}")
        link = value
    if value := get(b"size"):
        size = _pax_int(b"size", value)
    if value := get(b"uid"):
        uid = _pax_int(b"uid", value)
    if value := get(b"gid"):
        gid = _pax_int(b"gid", value)
    if value := get(b"mtime"):
        mtime_ns = _pax_time_ns(value)
    if uid > _U32_MAX or gid > _U32_MAX:
        raise Corrupt("uid/gid out of range")
    sparse_keys = any(key.startswith(_SPARSE_PREFIX) for key in pax)
    return name, link, size, uid, gid, mtime_ns, sparse_keys


def shown_name(
    name: bytes,
    blk: bytes,
    pend_name: bytes | None,
    pend_pax: dict[bytes, bytes] | None,
    gfields: dict[bytes, bytes],
) -> bytes:
    """The name a member would have had, for an error message about it."""
    if pend_pax and pend_pax.get(b"path"):
        return pend_pax[b"path"][:200]
    if pend_name is not None:
        return pend_name[:200]
    if gfields.get(b"path"):
        return gfields[b"path"][:200]
    name = name.partition(b"\x00")[0]
    if blk[345] and blk[257:263] == USTAR_MAGIC:
        name = blk[345:500].partition(b"\x00")[0] + b"/" + name
    return name[:200]
