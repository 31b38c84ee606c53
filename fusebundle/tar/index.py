"""A compact, persistent index of the members of a tar archive.

One pass over the 512-byte headers records, for every member, its metadata and the byte offset
of its data, so the files can later be served straight out of the tar with ``pread``.  The
index is columnar (``array.array`` per numeric field, one blob per string column) to stay
small for images with hundreds of thousands of files, and it is saved beside the tar so the
next run only has to read it back.

The header parser is our own: :mod:`tarfile` builds one ``TarInfo`` object per member and is
about ten times slower, and it is lenient in ways a server of untrusted images cannot be.
"""

from __future__ import annotations

import array
import errno
import logging
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from types import MappingProxyType
from typing import NamedTuple

from fusebundle.errors import CorruptTar
from fusebundle.tar import colfile

__all__ = [
    "Columns", "IndexEntry", "TarIndex", "open_index", "read_sparse", "FORMAT_MAGIC",
    "FORMAT_VERSION",
]  # fmt: skip

log = logging.getLogger(__name__)

FORMAT_MAGIC = b"FBIDX"
# 2: shared xattr sets of global PAX headers; GNU sparse maps.  3: laid out to be mapped
# (colfile), numbers in the narrowest type that holds them.
FORMAT_VERSION = 3

_ZERO_BLOCK = bytes(512)
# Reads start small after a jump over a big member (its data would be skipped anyway) and
# double while the headers keep coming densely, so runs of small files (most of a root
# filesystem) cost few syscalls.
_READ_MIN = 16 << 10
_READ_MAX = 512 << 10
_PROGRESS_STEP = 8 << 20
_OWNER_CACHE_LIMIT = 4096

# Bounds on what one archive may ask of us.  Anything beyond them is refused with CorruptTar,
# so a hostile layer costs at most a fixed factor of its own size in memory and time.
# GNU long names and PAX headers are read into memory whole: 1 MiB, the limit of Go's
# archive/tar (maxSpecialFileSize) and libarchive's pax reader.
_MAX_EXT_HEADER = 1 << 20
# A path or hard link target longer than Linux's PATH_MAX (4096 with its NUL) or with a
# component longer than NAME_MAX (255) could never be created or looked up by the kernel.
_MAX_NAME = 4095
_MAX_COMPONENT = 255
# A symlink's target is limited to PATH_MAX - 1 bytes by symlink(2) as well.
_MAX_LINK = 4095
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
_HEADER = struct.Struct("100s24s12s12s8sB")
_USTAR_MAGIC = b"ustar\x00"
_ODD_START = (b".", b"/")

_TYPE_CODES = bytearray(256)
for _flag, _code in (
    (b"0", b"f"), (b"\x00", b"f"), (b"7", b"f"), (b"1", b"h"), (b"2", b"l"),
    (b"3", b"c"), (b"4", b"b"), (b"5", b"d"), (b"6", b"p"),
):  # fmt: skip
    _TYPE_CODES[_flag[0]] = _code[0]
del _flag, _code
_TYPE_CODES_SPARSE = bytearray(_TYPE_CODES)
_TYPE_CODES_SPARSE[ord("S")] = ord("f")
_F, _H, _L, _D = b"fhld"
_TYPE_WORDS = {
    _F: "regular file", _H: "hard link", _L: "symlink", _D: "directory",
    ord("c"): "character device", ord("b"): "block device", ord("p"): "FIFO",
}  # fmt: skip
_LINKS = frozenset(b"hl")
_DEVICES = frozenset(b"cb")
_AREGTYPE = 0
_GNU_LONGNAME = ord("L")
_GNU_LONGLINK = ord("K")
_PAX_LOCAL = frozenset(b"xX")  # 'X' is the old Solaris spelling of 'x'
_PAX_GLOBAL = ord("g")
_EXT_TYPES = frozenset(b"xXgLK")
# Types refused with a word on what they are, so the user knows what the layer holds.
_UNSUPPORTED = {
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
_GNU_SPARSE = ord("S")
_SPARSE_CARRIERS = frozenset(b"0\x007")  # the regular-file types a PAX sparse map may ride on


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One member of the tar, with its name normalised and its data located."""

    name: bytes
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    offset: int
    # A read-only mapping shared between entries when it comes from global PAX headers.
    xattrs: Mapping[str, bytes] = field(hash=False)
    # The file the data is in at `offset`: the tar itself, or for a merged image one layer's.
    src: str = field(default="", compare=False)
    # A sparse member's (offset, length) fragments, stored one after another from `offset`
    # (read them with read_sparse); None for a member stored whole.
    sparse: array.array[int] | None = field(default=None, compare=False)


class _Corrupt(Exception):
    """Internal: a problem found while scanning; the scanner adds the path and offset."""


# ---------------------------------------------------------------------------------------------
# Field parsing


def _num(fld: bytes, what: str) -> int:
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
        raise _Corrupt(f"bad {what} field {fld!r}")
    try:
        return int(text, 8)
    except ValueError:
        raise _Corrupt(f"bad {what} field {fld!r}") from None


def _pax_int(key: bytes, value: bytes) -> int:
    if not value.isdigit() or len(value) > 30:
        raise _Corrupt(f"malformed PAX {key.decode('ascii', 'replace')} value {value[:40]!r}")
    return int(value)


def _time_ns(seconds: int) -> int:
    """Nanoseconds for a header's whole seconds, clamped to int64 (see _CLAMP_NS)."""
    if not -_MAX_TIME_S <= seconds <= _MAX_TIME_S:
        raise _Corrupt("mtime out of range")
    ns = seconds * 1_000_000_000
    if -_CLAMP_NS <= ns <= _CLAMP_NS:
        return ns
    return _CLAMP_NS if ns > 0 else -_CLAMP_NS


def _pax_time_ns(value: bytes) -> int:
    """Exact nanoseconds from a PAX time such as b'1600000000.123456789' (no float rounding)."""
    neg = value[:1] == b"-"
    whole, dot, frac = (value[1:] if neg else value).partition(b".")
    if not whole.isdigit() or (dot and frac and not frac.isdigit()) or len(whole) > 30:
        raise _Corrupt(f"malformed PAX mtime {value[:40]!r}")
    seconds = int(whole)
    ns = seconds * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0"))
    if ns > _NS_MAX:
        return _time_ns(-seconds if neg else seconds)
    return -ns if neg else ns


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Split PAX records ``b"%d %s=%s\\n"``; values are raw bytes (xattrs may be binary)."""
    records: dict[bytes, bytes] = {}
    sparse_0_0: list[bytes] = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:
            # Some writers pad the record area; only NULs may follow the last record.
            if data.count(0, pos) != end - pos:
                raise _Corrupt("malformed PAX header (data after NUL padding)")
            break
        sp = data.find(b" ", pos, pos + 21)
        if sp <= pos:
            raise _Corrupt("malformed PAX record (no length)")
        length_text = data[pos:sp]
        if not length_text.isdigit():
            raise _Corrupt("malformed PAX record (bad length)")
        length = int(length_text)
        rec_end = pos + length
        if rec_end > end or length <= sp - pos + 2 or data[rec_end - 1] != 0x0A:
            raise _Corrupt("malformed PAX record (bad length)")
        key, eq, value = data[sp + 1 : rec_end - 1].partition(b"=")
        if not eq or not key:
            raise _Corrupt("malformed PAX record (no key=value)")
        if key in _SPARSE_0_0:
            # Format 0.0 repeats these two keywords, once per fragment, in order: kept as
            # the comma-separated map of format 0.1 (as Go's reader does).
            if b"," in value:
                raise _Corrupt("malformed PAX GNU sparse record")
            sparse_0_0.append(value)
        else:
            records[key] = value
        pos = rec_end
    if sparse_0_0:
        records[b"GNU.sparse.map"] = b",".join(sparse_0_0)
    return records


# Keywords that override header fields; a global header's others (comment, ...) are not kept.
_PAX_FIELDS = frozenset([b"path", b"linkpath", b"size", b"uid", b"gid", b"mtime"])


def _xattrs_of(records: dict[bytes, bytes]) -> dict[str, bytes]:
    """The SCHILY.xattr.* records of one PAX header, each checked against the Linux limits."""
    attrs: dict[str, bytes] = {}
    for key, value in records.items():
        if key.startswith(_XATTR_PREFIX):
            attr = key[len(_XATTR_PREFIX) :]
            if not attr:
                raise _Corrupt("malformed PAX record (empty xattr name)")
            if b"\x00" in attr:
                raise _Corrupt(f"NUL byte in xattr name {attr[:100]!r}")
            if len(attr) > _MAX_XATTR_NAME:
                raise _Corrupt(f"xattr name of {len(attr)} bytes (limit {_MAX_XATTR_NAME})")
            if len(value) > _MAX_XATTR_VALUE:
                raise _Corrupt(
                    f"xattr {attr[:100]!r} value of {len(value)} bytes (limit {_MAX_XATTR_VALUE})"
                )
            attrs[attr.decode("utf-8", "surrogateescape")] = value
    return attrs


def _attr_len(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def _check_xattr_totals(names_len: int, values_len: int) -> None:
    if names_len > _MAX_XATTR_LIST:
        raise _Corrupt(f"xattr names of {names_len} bytes for one member (limit {_MAX_XATTR_LIST})")
    if values_len > _MAX_XATTR_BYTES:
        raise _Corrupt(
            f"xattr values of {values_len} bytes for one member (limit {_MAX_XATTR_BYTES})"
        )


class _Globals:
    """What the global PAX headers seen so far say about every following member.

    Like GNU tar and tarfile (Go and libarchive ignore them), their keywords apply to each
    later member unless its own header overrides them; an empty value deletes one (POSIX).
    The xattrs are one dict shared by all the members they apply to, never copied into each.
    """

    __slots__ = ("fields", "xattrs", "view", "names_len", "values_len", "budget")

    def __init__(self, file_size: int) -> None:
        self.fields: dict[bytes, bytes] = {}
        self.xattrs: dict[str, bytes] = {}
        self.view: Mapping[str, bytes] | None = None  # read-only, once a member shares it
        self.names_len = 0
        self.values_len = 0
        self.budget = _XATTR_COPY_BUDGET_BASE + file_size // 512

    def update(self, records: dict[bytes, bytes]) -> None:
        """Apply one global header's records."""
        fields = self.fields
        for key, value in records.items():
            if key in _PAX_FIELDS or key.startswith(_SPARSE_PREFIX):
                if value:
                    fields[key] = value
                else:
                    fields.pop(key, None)
        attrs = _xattrs_of(records)
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
        self.budget -= entries
        if self.budget < 0:
            raise _Corrupt("global PAX headers change xattrs too often")

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


def _check_name(name: bytes, what: str) -> None:
    """Refuse a normalised name the kernel could not create (see _MAX_NAME)."""
    if len(name) > _MAX_NAME:
        raise _Corrupt(f"{what} of {len(name)} bytes (limit {_MAX_NAME}) {name[:100]!r}...")
    if len(name) > _MAX_COMPONENT and max(map(len, name.split(b"/"))) > _MAX_COMPONENT:
        raise _Corrupt(f"{what} with a component over {_MAX_COMPONENT} bytes {name[:100]!r}...")


def _normalize(name: bytes, what: str = "name") -> bytes:
    """Normalise a member name: no leading './' or '/', no empty or '.' components.

    Raises _Corrupt for a component '..' (the member would escape the tree) or a NUL byte.
    """
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise _Corrupt(f"hostile {what} {name[:200]!r}")
    if b"\x00" in name:
        raise _Corrupt(f"NUL byte in {what} {name[:200]!r}")
    return b"/".join(parts)


# ---------------------------------------------------------------------------------------------
# GNU sparse members: the stored fragments, one after another, and where they go


def _fragments(numbers: list[int], real_size: int, stored: int) -> array.array[int]:
    """Check a map of (offset, length) pairs as Go's reader does, drop empty fragments.

    Fragments must be in order, not overlap, end within the real size and together hold
    exactly the bytes stored in the archive.
    """
    if not 0 <= real_size <= _NS_MAX:
        raise _Corrupt(f"GNU sparse real size {real_size} out of range")
    out = array.array("q")
    end = total = 0
    for k in range(0, len(numbers) - 1, 2):
        offset, length = numbers[k], numbers[k + 1]
        if offset < end or length < 0 or offset + length > real_size:
            raise _Corrupt("GNU sparse map out of order, overlapping or past the real size")
        end = offset + length
        total += length
        if length:
            out.append(offset)
            out.append(length)
    if total != stored:
        raise _Corrupt(f"GNU sparse map holds {total} bytes, the member {stored}")
    return out


def _old_gnu_map(fd: int, blk: bytes, data_pos: int) -> tuple[list[int], int, int]:
    """(map numbers, real size, data start) of an old GNU 'S' header and its extension blocks."""
    numbers: list[int] = []

    def take(area: bytes, count: int) -> None:
        for k in range(0, 24 * count, 24):
            if area[k] == 0:
                return  # an empty offset ends the list (as in GNU tar, bsdtar and Go)
            numbers.append(_num(area[k : k + 12], "sparse offset"))
            numbers.append(_num(area[k + 12 : k + 24], "sparse length"))

    take(blk[386:482], 4)
    real_size = _num(blk[483:495], "sparse real size")
    extended = blk[482]
    while extended:
        ext = os.pread(fd, 512, data_pos)
        if len(ext) != 512:
            raise _Corrupt("truncated file (GNU sparse extension block past end of file)")
        take(ext, 21)
        extended = ext[504]
        data_pos += 512
    return numbers, real_size, data_pos


def _map_1_0(fd: int, data_pos: int, size: int) -> tuple[list[int], int]:
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
                raise _Corrupt(f"GNU sparse map longer than the member or {_MAX_EXT_HEADER} bytes")
            want = min(max(512, len(chunk)), limit - len(chunk))
            more = os.pread(fd, want, data_pos + len(chunk))
            if not more:
                raise _Corrupt("truncated file (GNU sparse map past end of file)")
            chunk += more
            continue
        numbers.append(_pax_int(b"GNU sparse map", chunk[at:nl]))
        at = nl + 1
        if len(numbers) == 1:
            if numbers[0] > _MAX_EXT_HEADER // 4:  # each pair takes at least four bytes
                raise _Corrupt(f"GNU sparse map of {numbers[0]} fragments")
            need = 1 + 2 * numbers[0]
    map_len = (at + 511) & ~511
    if map_len > size:
        raise _Corrupt("GNU sparse map longer than the member")
    return numbers[1:], map_len


def _pax_sparse(pax: dict[bytes, bytes]) -> str | None:
    """The PAX sparse format of a member ('0.x' or '1.0'), None if it is not sparse."""
    get = pax.get
    major, minor = get(b"GNU.sparse.major"), get(b"GNU.sparse.minor")
    if major == b"1" and minor == b"0":
        return "1.0"
    if major == b"0" and minor in (b"0", b"1"):
        return "0.x"
    if major or minor:
        raise _Corrupt(f"unsupported GNU sparse version {major!r}.{minor!r}")
    if get(b"GNU.sparse.map") is not None or get(b"GNU.sparse.size"):
        return "0.x"  # 0.0 and 0.1 wrote no version
    return None  # other GNU.sparse records alone mean nothing (Go ignores them too)


def _pax_sparse_layout(
    pax: dict[bytes, bytes], version: str, fd: int, data_pos: int, size: int
) -> tuple[list[int], int, int]:
    """(map numbers, real size, bytes of map before the data) of a PAX sparse member."""
    get = pax.get
    real = get(b"GNU.sparse.size") or get(b"GNU.sparse.realsize")
    if not real:
        raise _Corrupt("GNU sparse member without its real size")
    real_size = _pax_int(b"GNU.sparse.size", real)
    if version == "1.0":
        numbers, map_len = _map_1_0(fd, data_pos, size)
        return numbers, real_size, map_len
    count = _pax_int(b"GNU.sparse.numblocks", get(b"GNU.sparse.numblocks") or b"")
    text = get(b"GNU.sparse.map") or b""
    parts = text.split(b",") if text else []
    if len(parts) != 2 * count:
        raise _Corrupt(f"GNU sparse map of {len(parts)} numbers for {count} fragments")
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


# ---------------------------------------------------------------------------------------------
# The scanner


class _Columns:
    """What one scan produces, before it becomes a TarIndex.

    Members are taken in chunks of _CHUNK: the interleaved numbers and the names of one chunk
    are split into the columns and joined into the blob at its end, so a scan of a million
    members never holds a Python object per member.
    """

    __slots__ = ("types", "nums", "names", "modes", "uids", "gids", "sizes", "mtimes",
                 "offsets", "blob", "name_ends", "links", "devices", "xattrs", "sparse")

    def __init__(self) -> None:
        self.types = bytearray()
        # Six numbers per member, interleaved (mode, uid, gid, size, mtime_ns, offset): one
        # extend() per member is much cheaper than six appends; split into columns per chunk.
        self.nums = array.array("q")
        self.names: list[bytes] = []  # this chunk's names
        self.modes = array.array("H")
        self.uids = array.array("I")
        self.gids = array.array("I")
        self.sizes = array.array("q")
        self.mtimes = array.array("q")
        self.offsets = array.array("q")
        self.blob: list[bytes] = []  # the names of each chunk, joined
        self.name_ends = array.array("q")
        # Link names and device numbers are rare: kept sparse while scanning.
        self.links: dict[int, bytes] = {}
        self.devices: dict[int, tuple[int, int]] = {}
        # Member -> its xattrs: its own dict, or one read-only mapping shared by all the members
        # that have only global ones (never a copy per member).
        self.xattrs: dict[int, Mapping[str, bytes]] = {}
        self.sparse: dict[int, array.array[int]] = {}  # GNU sparse members' fragment maps

    def flush(self) -> None:
        """Move the chunk taken so far into the columns."""
        nums = self.nums
        self.modes.extend(array.array("H", nums[0::6]))
        self.uids.extend(array.array("I", nums[1::6]))
        self.gids.extend(array.array("I", nums[2::6]))
        self.sizes.extend(nums[3::6])
        self.mtimes.extend(nums[4::6])
        self.offsets.extend(nums[5::6])
        del nums[:]
        names = self.names
        start = self.name_ends[-1] if self.name_ends else 0
        self.name_ends.extend(array.array("q", accumulate(map(len, names), initial=start))[1:])
        self.blob.append(b"".join(names))
        names.clear()


_CHUNK = 1 << 16
_CHUNK_MASK = _CHUNK - 1
# A walk over every entry of a mapped index lets the pages it read go this often, so a pack of
# a million entries holds a chunk of the index in RSS, not all of it.
DROP_EVERY_ENTRIES = 1 << 14
_DROP_MASK = DROP_EVERY_ENTRIES - 1


def _owner_fields(fld: bytes) -> tuple[int, int, int]:
    """Parse the 24 bytes of mode, uid and gid fields into (mode & 0o7777, uid, gid)."""
    mode, uid, gid = (
        _num(fld[:8], "mode") & 0o7777,
        _num(fld[8:16], "uid"),
        _num(fld[16:], "gid"),
    )
    if not (0 <= uid <= _U32_MAX and 0 <= gid <= _U32_MAX):
        raise _Corrupt("uid/gid out of range")
    return mode, uid, gid


def _device_fields(blk: bytes) -> tuple[int, int]:
    major, minor = _num(blk[329:337], "devmajor"), _num(blk[337:345], "devminor")
    if not (0 <= major <= _U32_MAX and 0 <= minor <= _U32_MAX):
        raise _Corrupt("device number out of range")
    return major, minor


def _scan(
    fd: int, file_size: int, progress: Callable[[int], None] | None, sparse: bool = False
) -> _Columns:
    """Walk the headers of the tar open on *fd*; raises _Corrupt(what, offset)."""
    cols = _Columns()
    # Everything the loop touches lives in locals: it runs once per member, and attribute and
    # global lookups are a measurable part of its cost.
    types_append = cols.types.append
    nums_extend = cols.nums.extend
    names_append = cols.names.append
    links = cols.links
    devices = cols.devices
    xattrs = cols.xattrs
    unpack = _HEADER.unpack_from
    adler32 = zlib.adler32
    # With sparse, an old GNU sparse file is a regular one whose map is in its header.
    type_codes = _TYPE_CODES_SPARSE if sparse else _TYPE_CODES
    pread = os.pread
    zero_block = _ZERO_BLOCK
    reg_code = _F
    link_codes = _LINKS
    device_codes = _DEVICES
    odd_start = _ODD_START
    # (mode, uid, gid) fields repeat across nearly all members: parse each combination once.
    owners: dict[bytes, tuple[int, int, int]] = {}

    buf = b""
    buf_start = 0
    buf_len = 0
    read_size = _READ_MIN // 2
    pos = 0
    count = 0
    next_report = _PROGRESS_STEP
    glob = _Globals(file_size)
    glob_active = False  # any global records in force: the rare path for every member
    sparse_maps = cols.sparse
    pend_pax: dict[bytes, bytes] | None = None
    pend_name: bytes | None = None
    pend_link: bytes | None = None
    pend_pos = -1  # offset of the first pending extension header, -1 if none
    hdr_pos = 0

    try:
        while True:
            hdr_pos = pos
            rel = pos - buf_start
            if rel < 0 or rel + 512 > buf_len:
                if pos >= file_size:
                    break  # clean EOF at a header boundary
                if rel - buf_len < _READ_MIN:  # little data skipped: headers are dense here
                    read_size = min(2 * read_size, _READ_MAX)
                else:
                    read_size = _READ_MIN
                buf = pread(fd, read_size, pos)
                buf_start = pos
                buf_len = len(buf)
                rel = 0
                if progress is not None and pos >= next_report:
                    progress(pos)
                    next_report = pos + _PROGRESS_STEP
                if buf_len < 512:
                    if buf.count(0) == buf_len:
                        break  # a short run of zeros: an end marker cut short
                    raise _Corrupt("truncated file (partial header)")
            blk = buf[rel : rel + 512]
            name, f_owner, f_size, f_mtime, f_chk, flag = unpack(blk)

            # Checksum: adler32's low half is (1 + byte sum) mod 65521, computed in C.  It is
            # the exact byte sum when at most 256 bytes are non-zero (sum <= 65280), which
            # holds for nearly every header; anything else takes the exact slow path.
            try:
                chk = int(f_chk.rstrip(b" \x00"), 8)
            except ValueError:
                chk = -1
            # (1 + sum(blk)) - (1 + sum(f_chk)) + 8 spaces is what the field should hold.
            chk_calc = (adler32(blk) & 0xFFFF) - (adler32(f_chk) & 0xFFFF) + 256
            if chk_calc != chk or blk.count(0) < 256:
                if blk == zero_block:
                    break  # end-of-archive marker; whatever follows is ignored
                if not _checksum_ok(blk, f_chk):
                    raise _Corrupt("bad header checksum")

            code = type_codes[flag]
            data_pos = pos + 512
            pax_sparse = None
            if not code:
                if flag not in _EXT_TYPES:
                    # Checked before any payload is read: the type is the problem, not a size.
                    what = _UNSUPPORTED.get(flag, "unknown")
                    shown = _shown_name(name, blk, pend_name, pend_pax, glob.fields)
                    raise _Corrupt(
                        f"unsupported entry type {chr(flag)!r} ({what}) for member {shown!r}"
                    )
                size = _num(f_size, "size")
                if flag in (_GNU_LONGNAME, _GNU_LONGLINK):
                    # The name ends at its NUL even past the size, within the padding, as
                    # GNU tar and tarfile read it (Go stops at the size; writers agree).
                    size = (size + 511) & ~511
                data = _read_ext(fd, file_size, buf, buf_start, data_pos, size, flag)
                if flag == _PAX_GLOBAL:
                    glob.update(_parse_pax(data))
                    glob_active = bool(glob.fields or glob.xattrs)
                elif flag in _PAX_LOCAL:
                    # Only the last of consecutive 'x' headers counts, as in GNU tar, bsdtar,
                    # Go and tarfile.
                    pend_pax = _parse_pax(data)
                elif flag == _GNU_LONGNAME:
                    pend_name = data.split(b"\x00", 1)[0]
                else:
                    pend_link = data.split(b"\x00", 1)[0]
                if pend_pos < 0 and flag != _PAX_GLOBAL:
                    pend_pos = pos
                pos = data_pos + ((size + 511) & ~511)
                if pos > file_size:
                    raise _Corrupt("truncated file (extension header padding past end of file)")
                continue

            name = name.partition(b"\x00")[0]
            if blk[345] and blk[257:263] == _USTAR_MAGIC:
                name = blk[345:500].partition(b"\x00")[0] + b"/" + name
            owner = owners.get(f_owner)
            if owner is None:
                owner = _owner_fields(f_owner)
                if len(owners) < _OWNER_CACHE_LIMIT:
                    owners[f_owner] = owner
            # int() alone would take signs, '_', '0o' and whitespace: digits only here.
            size_text = f_size.rstrip(b"\x00")
            mtime_text = f_mtime.rstrip(b"\x00")
            try:
                # (12 mtime digits can pass 2262: those take the clamping slow path.)
                if not (size_text.isdigit() and mtime_text.isdigit()) or len(mtime_text) > 11:
                    raise ValueError
                size = int(size_text, 8)
                mtime_ns = int(mtime_text, 8) * 1_000_000_000
            except ValueError:
                # Base-256, space padding, garbage: the careful parser sorts it out.
                size = _num(f_size, "size")
                mtime_ns = _time_ns(_num(f_mtime, "mtime"))

            link = None
            if pend_pos >= 0 or glob_active:
                if pend_pos >= 0:
                    hdr_pos = pend_pos  # errors now concern the member as a whole
                if pend_name is not None:
                    name = pend_name
                link = pend_link if pend_link is not None else blk[157:257].partition(b"\x00")[0]
                # Empty values stay in: to _apply_pax they mean "deleted, use the header".
                gfields = glob.fields
                if pend_pax is None:
                    pax = gfields
                elif gfields:
                    pax = {**gfields, **pend_pax}  # gfields holds at most a dozen keywords
                else:
                    pax = pend_pax
                if pax:
                    name, link, size, uid, gid, mtime_ns, sparse_keys = _apply_pax(
                        pax, name, link, size, owner[1], owner[2], mtime_ns
                    )
                    owner = (owner[0], uid, gid)
                    if sparse_keys and (pax_sparse := _pax_sparse(pax)) is not None:
                        shown = pax.get(b"GNU.sparse.name") or name
                        if not sparse:
                            raise _Corrupt(
                                f"unsupported GNU sparse member {shown[:200]!r}"
                                f" (PAX sparse format {pax_sparse})"
                            )
                        if flag not in _SPARSE_CARRIERS:
                            raise _Corrupt(f"GNU sparse records on a non-file {shown[:200]!r}")
                        if value := pax.get(b"GNU.sparse.name"):
                            name = value
                local = _xattrs_of(pend_pax) if pend_pax else None
                shared = glob.xattrs
                if local or shared:
                    if local:
                        glob.check_member(local)
                    if not shared:
                        xattrs[count] = local  # type: ignore[assignment]
                    elif not local:
                        xattrs[count] = glob.shared()
                    else:
                        glob.spend(len(shared))  # a merged copy: paid like any other
                        xattrs[count] = {**shared, **local}
                pend_pax = pend_name = pend_link = None
                pend_pos = -1

            if code == reg_code:
                if flag == _AREGTYPE and name[-1:] == b"/":
                    code = _D  # pre-POSIX archives mark directories by a trailing '/'
                    size = 0
                    next_pos = data_pos
                else:
                    if size < 0:
                        raise _Corrupt("negative size")
                    next_pos = data_pos + ((size + 511) & ~511)
                    if pax_sparse is not None or flag == _GNU_SPARSE:
                        if next_pos > file_size:
                            raise _Corrupt("truncated file (member data past end of file)")
                        if pax_sparse is None:
                            numbers, real_size, data_pos = _old_gnu_map(fd, blk, data_pos)
                            stored = size
                        else:
                            numbers, real_size, map_len = _pax_sparse_layout(
                                pax, pax_sparse, fd, data_pos, size
                            )
                            data_pos += map_len
                            stored = size - map_len
                        sparse_maps[count] = _fragments(numbers, real_size, stored)
                        next_pos = data_pos + ((stored + 511) & ~511)
                        size = real_size
                    # A cut inside the padding loses no data of this member but hides every
                    # later one: an error too, as in GNU tar.
                    if next_pos > file_size:
                        raise _Corrupt("truncated file (member data past end of file)")
            else:
                # Links, directories, devices and FIFOs never carry data (as tarfile and Go's
                # archive/tar read them), whatever their size field says.
                size = 0
                next_pos = data_pos

            # Names are nearly always clean already; only odd-looking ones get the full work.
            if name[-1:] == b"/":
                name = name.rstrip(b"/")
            # (bytes.find is used over "in": it is twice as fast on 3.11.)
            if (
                not name
                or name.startswith(odd_start)
                or name.find(b"//") >= 0
                or name.find(b"/.") >= 0
            ):
                name = _normalize(name)
                if not name:
                    if code != _D:
                        # Never dropped in silence: it would take its data and name with it.
                        raise _Corrupt(f"{_TYPE_WORDS[code]} with an empty name")
                    pos = next_pos  # the archive root './' itself is not a member
                    xattrs.pop(count, None)
                    continue
            if len(name) > _MAX_COMPONENT:
                _check_name(name, "name")
            if code != reg_code:
                if code in link_codes:
                    if link is None:
                        link = blk[157:257].partition(b"\x00")[0]
                    if code == _H:
                        link = _normalize(link, "hard link target")
                        if not link:
                            raise _Corrupt("hard link with an empty target")
                        _check_name(link, "hard link target")
                    elif len(link) > _MAX_LINK:
                        raise _Corrupt(f"symlink target of {len(link)} bytes (limit {_MAX_LINK})")
                    if link:
                        links[count] = link
                elif code in device_codes:
                    devices[count] = _device_fields(blk)

            types_append(code)
            nums_extend(owner + (size, mtime_ns, data_pos))
            names_append(name)
            count += 1
            pos = next_pos
            if not count & _CHUNK_MASK:
                cols.flush()
    except _Corrupt as exc:
        raise _Corrupt(exc.args[0], hdr_pos) from None
    except OverflowError:
        # The int64 columns refuse an mtime or size beyond 2**63.
        raise _Corrupt("numeric field out of range", hdr_pos) from None
    except (ValueError, IndexError, struct.error, UnicodeError):
        raise _Corrupt("malformed header", hdr_pos) from None

    if pend_pos >= 0:
        raise _Corrupt("extension header not followed by a member", pend_pos)
    cols.flush()
    if progress is not None:
        progress(file_size)
    return cols


def _read_ext(
    fd: int, file_size: int, buf: bytes, buf_start: int, data_pos: int, size: int, flag: int
) -> bytes:
    """Return the data of a GNU long name/link or PAX header, from *buf* if it holds it."""
    if size < 0:
        raise _Corrupt("negative size")
    if size > _MAX_EXT_HEADER:
        raise _Corrupt(
            f"extension header {chr(flag)!r} of {size} bytes is too large"
            f" (limit {_MAX_EXT_HEADER})"
        )
    if data_pos + size > file_size:
        raise _Corrupt("truncated file (extension header data past end of file)")
    rel = data_pos - buf_start
    if rel >= 0 and rel + size <= len(buf):
        return buf[rel : rel + size]
    data = os.pread(fd, size, data_pos)
    if len(data) != size:
        raise _Corrupt("truncated file (extension header data past end of file)")
    return data


def _checksum_ok(blk: bytes, f_chk: bytes) -> bool:
    """Exact checksum test, accepting the signed-byte sums some historic tars wrote."""
    try:
        chk = _num(f_chk, "checksum")
    except _Corrupt:
        return False
    rest = blk[:148] + blk[156:]
    unsigned = sum(rest) + 8 * 32
    if unsigned == chk:
        return True
    high = len(rest) - len(rest.translate(None, bytes(range(128, 256))))
    return unsigned - 256 * high == chk


def _apply_pax(
    pax: dict[bytes, bytes],
    name: bytes,
    link: bytes,
    size: int,
    uid: int,
    gid: int,
    mtime_ns: int,
) -> tuple[bytes, bytes, int, int, int, int, bool]:
    """Let PAX records override the header fields (xattrs are _xattrs_of's job).

    The last value says whether GNU.sparse records are present.

    An empty value means the keyword was deleted (POSIX): the header field stands.
    hdrcharset needs no handling as names are kept as bytes; atime, ctime, uname, comment...
    are not indexed.
    """
    get = pax.get
    if value := get(b"path"):
        if b"\x00" in value:
            raise _Corrupt(f"NUL byte in PAX path {value[:200]!r}")
        name = value
    if value := get(b"linkpath"):
        if b"\x00" in value:
            raise _Corrupt(f"NUL byte in PAX linkpath {value[:200]!r}")
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
        raise _Corrupt("uid/gid out of range")
    sparse_keys = any(key.startswith(_SPARSE_PREFIX) for key in pax)
    return name, link, size, uid, gid, mtime_ns, sparse_keys


def _shown_name(
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
    if blk[345] and blk[257:263] == _USTAR_MAGIC:
        name = blk[345:500].partition(b"\x00")[0] + b"/" + name
    return name[:200]


# ---------------------------------------------------------------------------------------------
# The index


# The saved index's metadata: the tar's st_size, st_mtime_ns, st_ino, and the entry count.
_Meta = struct.Struct("<QqQQ")

# Column attribute name -> array typecode, or "s" for a bytes blob; this order is the file order.
_COLUMNS: tuple[tuple[str, str], ...] = (
    ("_types", "s"),
    ("_modes", "H"),
    ("_uids", "I"),
    ("_gids", "I"),
    ("_sizes", "q"),
    ("_mtimes", "q"),
    ("_offsets", "q"),
    ("_devmajors", "I"),
    ("_devminors", "I"),
    ("_names", "s"),
    ("_name_ends", "q"),
    ("_links", "s"),
    ("_link_ends", "q"),
)


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _encode_attrs(out: list[bytes], attrs: Mapping[str, bytes]) -> None:
    out.append(struct.pack("<I", len(attrs)))
    for key, value in attrs.items():
        kb = key.encode("utf-8", "surrogateescape")
        out.append(struct.pack("<I", len(kb)))
        out.append(kb)
        out.append(struct.pack("<I", len(value)))
        out.append(value)


def _encode_xattrs(xattrs: dict[int, Mapping[str, bytes]]) -> bytes:
    """The shared (read-only) sets once each, then per member: a set's number, or -1 and
    the member's own xattrs."""
    shared: dict[int, int] = {}  # id() of a shared set -> its number
    sets: list[bytes] = []
    members: list[bytes] = []
    for i, attrs in sorted(xattrs.items()):
        if isinstance(attrs, MappingProxyType):
            number = shared.get(id(attrs))
            if number is None:
                number = shared[id(attrs)] = len(sets)
                out: list[bytes] = []
                _encode_attrs(out, attrs)
                sets.append(b"".join(out))
            members.append(struct.pack("<QqI", i, number, 0))
        else:
            members.append(struct.pack("<Qq", i, -1))
            _encode_attrs(members, attrs)
    return b"".join(
        [struct.pack("<I", len(sets)), *sets, struct.pack("<I", len(xattrs)), *members]
    )


def _decode_attrs(data: bytes, pos: int) -> tuple[dict[str, bytes], int]:
    attrs: dict[str, bytes] = {}
    (nattrs,) = struct.unpack_from("<I", data, pos)
    pos += 4
    for _ in range(nattrs):
        (klen,) = struct.unpack_from("<I", data, pos)
        key = data[pos + 4 : pos + 4 + klen]
        pos += 4 + klen
        (vlen,) = struct.unpack_from("<I", data, pos)
        value = data[pos + 4 : pos + 4 + vlen]
        pos += 4 + vlen
        if len(key) != klen or len(value) != vlen:
            raise ValueError("truncated xattrs")
        attrs[key.decode("utf-8", "surrogateescape")] = value
    return attrs, pos


def _decode_xattrs(data: bytes, n: int) -> dict[int, Mapping[str, bytes]]:
    """Inverse of _encode_xattrs; raises ValueError/struct.error on malformed input."""
    (nsets,) = struct.unpack_from("<I", data, 0)
    pos = 4
    sets: list[Mapping[str, bytes]] = []
    for _ in range(nsets):
        attrs, pos = _decode_attrs(data, pos)
        sets.append(MappingProxyType(attrs))
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    result: dict[int, Mapping[str, bytes]] = {}
    for _ in range(count):
        i, number = struct.unpack_from("<Qq", data, pos)
        attrs, pos = _decode_attrs(data, pos + 16)
        if i >= n or not -1 <= number < nsets or (number >= 0 and attrs):
            raise ValueError("xattr reference out of range")
        result[i] = sets[number] if number >= 0 else attrs
    if pos != len(data):
        raise ValueError("trailing bytes after xattrs")
    return result


def _encode_sparse(maps: dict[int, array.array[int]]) -> bytes:
    out = [struct.pack("<I", len(maps))]
    for i, fragments in sorted(maps.items()):
        out.append(struct.pack("<QQ", i, len(fragments)))
        out.append(fragments.tobytes())
    return b"".join(out)


def _decode_sparse(data: bytes, n: int) -> dict[int, array.array[int]]:
    """Inverse of _encode_sparse; raises ValueError/struct.error on malformed input."""
    (count,) = struct.unpack_from("<I", data, 0)
    pos = 4
    maps: dict[int, array.array[int]] = {}
    for _ in range(count):
        i, length = struct.unpack_from("<QQ", data, pos)
        pos += 16
        fragments = array.array("q")
        fragments.frombytes(data[pos : pos + 8 * length])
        pos += 8 * length
        if i >= n or len(fragments) != length or length % 2:
            raise ValueError("bad sparse map")
        maps[i] = fragments
    if pos != len(data):
        raise ValueError("trailing bytes after sparse maps")
    return maps


# A column of numbers: an array while built, a memoryview of the mapped file once loaded,
# its typecode the narrowest that holds its values (not the same in both).
Numbers = Sequence[int]
# A blob: bytes, or a read-only mmap (slices are bytes, find() works; no replace()).
Blob = bytes


class Columns(NamedTuple):
    """The index's arrays, for renderers that walk many entries without an object each.

    Entry i's name is names[name_ends[i-1]:name_ends[i]] (0 for i == 0); links likewise.
    """

    types: Blob
    modes: Numbers
    uids: Numbers
    gids: Numbers
    sizes: Numbers
    mtimes: Numbers
    offsets: Numbers
    devmajors: Numbers
    devminors: Numbers
    names: Blob
    name_ends: Numbers
    links: Blob
    link_ends: Numbers


class TarIndex:
    """Columnar index of the members of one tar file, in archive order."""

    __slots__ = (
        "tar_path", "_stat", "_types", "_modes", "_uids", "_gids", "_sizes", "_mtimes",
        "_offsets", "_devmajors", "_devminors", "_names", "_name_ends", "_links",
        "_link_ends", "_xattrs", "_sparse", "_by_name", "_maps",
    )  # fmt: skip

    tar_path: str
    _stat: tuple[int, int, int]
    _types: Blob
    _modes: Numbers
    _uids: Numbers
    _gids: Numbers
    _sizes: Numbers
    _mtimes: Numbers
    _offsets: Numbers
    _devmajors: Numbers
    _devminors: Numbers
    _names: Blob
    _name_ends: Numbers
    _links: Blob
    _link_ends: Numbers
    # Member -> xattrs: a read-only mapping is shared by several members (global PAX xattrs).
    _xattrs: dict[int, Mapping[str, bytes]]
    _sparse: dict[int, array.array[int]]
    _by_name: dict[bytes, int] | None

    def __init__(self, tar_path: str, stat_key: tuple[int, int, int]) -> None:
        """Create an empty index; use :meth:`scan`, :meth:`load` or :func:`open_index`."""
        self.tar_path = tar_path
        self._stat = stat_key
        self._types = b""
        for attr, typecode in _COLUMNS:
            if typecode != "s":
                setattr(self, attr, array.array(typecode))
        self._names = b""
        self._links = b""
        self._xattrs = {}
        self._sparse = {}
        self._by_name = None
        self._maps: list = []  # the file's mappings, once loaded from one

    def columns(self) -> Columns:
        """The arrays behind the entries (read-only by convention)."""
        return Columns(self._types, self._modes, self._uids, self._gids, self._sizes,
                       self._mtimes, self._offsets, self._devmajors, self._devminors,
                       self._names, self._name_ends, self._links, self._link_ends)

    def __len__(self) -> int:
        return len(self._types)

    def __repr__(self) -> str:
        return f"<TarIndex {self.tar_path!r}: {len(self)} entries>"

    def entry(self, i: int) -> IndexEntry:
        """Return the *i*-th member (negative indices count from the end)."""
        n = len(self._types)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"tar index entry {i} out of range")
        ends = self._name_ends
        lends = self._link_ends
        return IndexEntry(
            name=self._names[ends[i - 1] if i else 0 : ends[i]],
            type=chr(self._types[i]),
            mode=self._modes[i],
            uid=self._uids[i],
            gid=self._gids[i],
            size=self._sizes[i],
            mtime_ns=self._mtimes[i],
            linkname=self._links[lends[i - 1] if i else 0 : lends[i]],
            devmajor=self._devmajors[i],
            devminor=self._devminors[i],
            offset=self._offsets[i],
            xattrs=self._member_xattrs(i),
            src=self.tar_path,
            sparse=self._sparse.get(i) if self._sparse else None,
        )

    def __iter__(self) -> Iterator[IndexEntry]:
        """Yield every member in archive order."""
        names, links, xattrs, tar_path = self._names, self._links, self._xattrs, self.tar_path
        member_xattrs, sparse = self._member_xattrs, self._sparse
        maps = self._maps
        name_start = link_start = 0
        columns = zip(
            self._types, self._modes, self._uids, self._gids, self._sizes, self._mtimes,
            self._name_ends, self._link_ends, self._devmajors, self._devminors, self._offsets,
            strict=True,
        )  # fmt: skip
        for i, (code, mode, uid, gid, size, mtime, n_end, l_end, major, minor, off) in enumerate(
            columns
        ):
            yield IndexEntry(
                names[name_start:n_end],
                chr(code),
                mode,
                uid,
                gid,
                size,
                mtime,
                links[link_start:l_end],
                major,
                minor,
                off,
                member_xattrs(i) if xattrs else {},
                tar_path,
                sparse.get(i) if sparse else None,
            )
            name_start = n_end
            link_start = l_end
            if maps and not ~i & _DROP_MASK:
                colfile.drop_pages(maps)  # a walk in order needs no page twice

    def _member_xattrs(self, i: int) -> Mapping[str, bytes]:
        """Entry i's xattrs: a shared read-only view when they all come from global headers."""
        attrs = self._xattrs.get(i)
        if not attrs:
            return {}
        return attrs if isinstance(attrs, MappingProxyType) else dict(attrs)

    def drop_pages(self) -> None:
        """After a walk over every entry: its pages leave our RSS (not the page cache)."""
        colfile.drop_pages(self._maps)

    def sparse_map(self, i: int) -> array.array[int] | None:
        """A GNU sparse member's fragments: flat (offset, length) pairs, stored one after
        another from its offset (see read_sparse); None for a member stored whole."""
        return self._sparse.get(i)

    @property
    def has_sparse(self) -> bool:
        """True if any member is a GNU sparse file (indexed only when scan was asked to)."""
        return bool(self._sparse)

    def data_path(self, i: int) -> str:
        """The file holding entry i's data (at its offset): here always the tar itself."""
        return self.tar_path

    def find(self, name: bytes) -> int | None:
        """Index of the last member called *name* (already normalised), or None."""
        by_name = self._by_name
        if by_name is None:
            blob = self._names
            by_name = {}
            start = 0
            # Later duplicates overwrite earlier ones: the last member of a name wins, as
            # when the archive is extracted.
            for i, end in enumerate(self._name_ends):
                by_name[blob[start:end]] = i
                start = end
            self._by_name = by_name
        return by_name.get(name)

    def verify_unchanged(self) -> bool:
        """True if the tar still has the size, mtime and inode it had when it was indexed."""
        try:
            return _stat_key(os.stat(self.tar_path)) == self._stat
        except OSError:
            return False

    @classmethod
    def scan(
        cls,
        tar_path: str,
        progress: Callable[[int], None] | None = None,
        *,
        sparse: bool = False,
    ) -> TarIndex:
        """Index *tar_path* by reading its headers; ``progress(bytes_done)`` is called now and then.

        Raises CorruptTar if the archive is damaged, truncated, hostile or uses an
        unsupported feature.  GNU sparse members are refused unless *sparse*: then they are
        indexed with their real size and a map (sparse_map), for readers that use read_sparse.
        """
        with open(tar_path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            try:
                cols = _scan(f.fileno(), st.st_size, progress, sparse)
            except _Corrupt as exc:
                what, offset = exc.args
                raise CorruptTar(f"{tar_path}: {what} at offset {offset}") from None
        self = cls(tar_path, _stat_key(st))
        n = len(cols.types)
        self._types = bytes(cols.types)
        self._modes, self._uids, self._gids = cols.modes, cols.uids, cols.gids
        self._sizes, self._mtimes, self._offsets = cols.sizes, cols.mtimes, cols.offsets
        if cols.devices:
            majors = array.array("I", bytes(4 * n))
            minors = array.array("I", bytes(4 * n))
            for i, (major, minor) in cols.devices.items():
                majors[i] = major
                minors[i] = minor
        else:
            majors = minors = array.array("B", bytes(n))  # read-only by convention: shared
        self._devmajors, self._devminors = majors, minors
        self._names = b"".join(cols.blob)
        cols.blob.clear()
        self._name_ends = cols.name_ends
        if cols.links:
            link_lengths = array.array("q", bytes(8 * n))
            for i, link in cols.links.items():
                link_lengths[i] = len(link)
            self._link_ends = array.array("q", accumulate(link_lengths))
        else:
            self._link_ends = array.array("B", bytes(n))
        # Dicts keep insertion order, which is archive order here.
        self._links = b"".join(cols.links.values())
        self._xattrs = cols.xattrs
        self._sparse = cols.sparse
        return self

    def _sections(self, columns: Sequence[tuple[str, str]] = _COLUMNS
                  ) -> list[colfile.Section]:
        """The columns as the saved file lays them out, numbers in the narrowest type."""
        out: list[colfile.Section] = []
        for attr, kind in columns:
            value = getattr(self, attr)
            if kind == "s":
                out.append((attr, "s", value))
            else:
                out.append((attr, *colfile.narrow(value)))
        out.append(("_xattrs", "s", _encode_xattrs(self._xattrs)))
        out.append(("_sparse", "s", _encode_sparse(self._sparse)))
        return out

    def save(self, index_path: str) -> None:
        """Write the index to *index_path* atomically (temp file, fsync, rename)."""
        size, mtime_ns, ino = self._stat
        meta = _Meta.pack(size, mtime_ns, ino, len(self))
        try:
            # The index reveals no more than the tar does.
            mode: int | None = stat.S_IMODE(os.stat(self.tar_path).st_mode) & 0o666
        except OSError:
            mode = None
        colfile.write(index_path, FORMAT_MAGIC, FORMAT_VERSION, meta, self._sections(), mode)

    @classmethod
    def load(cls, index_path: str, tar_path: str) -> TarIndex | None:
        """Map a saved index; None if it is missing, damaged, foreign or the tar changed.

        A damaged one (truncated, flipped bytes, another format version) is logged in one line.
        """
        try:
            st = os.stat(tar_path)
            mapped = colfile.read(index_path, FORMAT_MAGIC, FORMAT_VERSION)
        except OSError:
            return None
        except colfile.Damaged as e:
            log.warning("tar index %s: %s: rebuilt", index_path, e)
            return None
        if mapped is None:
            return None
        try:
            return cls._from_mapped(mapped, tar_path, _stat_key(st))
        except (ValueError, IndexError, KeyError, struct.error, OverflowError, UnicodeError) as e:
            log.warning("tar index %s: malformed (%s): rebuilt", index_path, e)
            return None

    @classmethod
    def _from_mapped(cls, mapped: colfile.Mapped, tar_path: str,
                     stat_key: tuple[int, int, int]) -> TarIndex | None:
        size, mtime_ns, ino, n = _Meta.unpack(mapped.meta)
        if (size, mtime_ns, ino) != stat_key:
            return None  # the tar changed: a stale index, not a damaged one
        self = cls(tar_path, stat_key)
        self._adopt(mapped, _COLUMNS, n)
        return self

    def _adopt(self, mapped: colfile.Mapped, columns: Sequence[tuple[str, str]],
               n: int) -> None:
        """Use a mapped file's columns as this index's; ValueError if their lengths disagree."""
        for attr, kind in columns:
            value = mapped[attr]
            if kind != "s" and len(value) != n:
                raise ValueError(f"column {attr} of {len(value)} entries, not {n}")
            setattr(self, attr, value)
        self._types = bytes(self._types)  # iterated as ints: an mmap would give bytes
        if len(self._types) != n:
            raise ValueError("type column of the wrong length")
        if n and (self._name_ends[-1] != len(self._names)
                  or self._link_ends[-1] != len(self._links)):
            raise ValueError("name or link blob of the wrong length")
        self._xattrs = _decode_xattrs(bytes(mapped["_xattrs"]), n)
        self._sparse = _decode_sparse(bytes(mapped["_sparse"]), n)
        self._maps = mapped.maps


def open_index(
    tar_path: str, progress: Callable[[int], None] | None = None, *, sparse: bool = False
) -> TarIndex:
    """Load TAR.idx beside the tar if it is fresh, else scan the tar and save it there.

    *sparse* as for TarIndex.scan: a saved index with sparse members is not used without it.
    """
    index_path = tar_path + ".idx"
    index = TarIndex.load(index_path, tar_path)
    if index is not None and (sparse or not index.has_sparse):
        return index
    index = TarIndex.scan(tar_path, progress, sparse=sparse)
    try:
        index.save(index_path)
    except OSError as exc:
        # A read-only cache still works, only the next start pays for the scan again.
        log.warning("could not save tar index %s: %s", index_path, exc)
        return index
    # Used from the file from now on: the scan's columns leave the heap.
    mapped = TarIndex.load(index_path, tar_path)
    return mapped if mapped is not None else index
