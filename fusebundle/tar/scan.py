"""The one-pass scanner: walk a tar's 512-byte headers into columns.

The loop runs once per member and is written for that: locals for everything it touches, one
C-level checksum, a cache of owner fields, names cleaned only when they look odd.  Extension
headers, global records, sparse members, links and devices leave it for `header`'s functions.
"""

from __future__ import annotations

import array
import struct
import zlib
from collections.abc import Callable, Mapping
from itertools import accumulate

from fusebundle.tar.header import (
    AREGTYPE,
    EXT_TYPES,
    GNU_LONGLINK,
    GNU_LONGNAME,
    GNU_SPARSE,
    HEADER,
    MAX_COMPONENT,
    MAX_LINK,
    ODD_START,
    PAX_GLOBAL,
    PAX_LOCAL,
    SPARSE_CARRIERS,
    TYPE_CODES,
    TYPE_CODES_SPARSE,
    TYPE_D,
    TYPE_DEVICES,
    TYPE_F,
    TYPE_H,
    TYPE_LINKS,
    TYPE_WORDS,
    UNSUPPORTED,
    USTAR_MAGIC,
    ZERO_BLOCK,
    Corrupt,
    Globals,
    TarBytes,
    apply_pax,
    check_name,
    checked_fragments,
    checksum_ok,
    device_fields,
    normalize_name,
    number_field,
    old_gnu_map,
    owner_fields,
    parse_pax,
    pax_sparse_format,
    pax_sparse_layout,
    read_ext,
    seconds_ns,
    shown_name,
    xattrs_of,
)

# Reads start small after a jump over a big member (its data would be skipped anyway) and
# double while the headers keep coming densely, so runs of small files (most of a root
# filesystem) cost few syscalls.
_READ_MIN = 16 << 10
_READ_MAX = 512 << 10
_PROGRESS_STEP = 8 << 20
_OWNER_CACHE_LIMIT = 4096


class ScanColumns:
    """What one scan produces, before it becomes a TarIndex.

    Members are taken in chunks of _CHUNK: the interleaved numbers and the names of one chunk
    are split into the columns and joined into the blob at its end, so a scan of a million
    members never holds a Python object per member.  Each column is kept in the narrowest
    typecode its values so far fit (issue 22: at a million members the wide columns were 28 MB
    of the scan's peak), widened when a chunk does not fit.
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
        self.uids = array.array("B")
        self.gids = array.array("B")
        self.sizes = array.array("B")
        self.mtimes = array.array("B")
        self.offsets = array.array("B")
        self.blob: list[bytes] = []  # the names of each chunk, joined
        self.name_ends = array.array("B")
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
        self.uids = _extended(self.uids, nums[1::6])
        self.gids = _extended(self.gids, nums[2::6])
        self.sizes = _extended(self.sizes, nums[3::6])
        self.mtimes = _extended(self.mtimes, nums[4::6])
        self.offsets = _extended(self.offsets, nums[5::6])
        del nums[:]
        names = self.names
        start = self.name_ends[-1] if self.name_ends else 0
        ends = array.array("q", accumulate(map(len, names), initial=start))[1:]
        self.name_ends = _extended(self.name_ends, ends)
        self.blob.append(b"".join(names))
        names.clear()


# Unsigned while they fit (as colfile.narrow saves them), signed 64 bits for a negative mtime.
_WIDER = {"B": "H", "H": "I", "I": "Q", "Q": "q"}


def _extended(column: array.array[int], values: array.array[int]) -> array.array[int]:
    """`column` with `values` appended, widened (a new array) if one of them does not fit."""
    while True:
        try:
            column.extend(array.array(column.typecode, values))
            return column
        except OverflowError:
            column = array.array(_WIDER[column.typecode], column)


# Small chunks: the chunk's numbers and name objects are freed and made again 250 times at a
# million members, and at 64k a chunk (6 MB of them) the heap's holes grew the scan's peak by
# 17 MB; at 4k it is 3 MB over the columns' own 45 MB, for no measurable time.
_CHUNK = 1 << 12
_CHUNK_MASK = _CHUNK - 1


# How the loop stays fast (it runs once per member):
# - Everything it touches lives in locals: attribute and global lookups are a measurable part
#   of its cost.
# - The checksum: adler32's low half is (1 + byte sum) mod 65521, computed in C.  It is the
#   exact byte sum when at most 256 bytes are non-zero (sum <= 65280), which holds for nearly
#   every header; anything else takes the exact slow path (checksum_ok).
# - (mode, uid, gid) fields repeat across nearly all members: each combination is parsed once.
# - Names are nearly always clean already; only odd-looking ones get the full work.
# - Extension headers, global records, sparse maps and link targets are _Pending's,
#   _sparse_member's and _link_target's: the loop only tests for them.
def scan_tar(
    src: TarBytes, progress: Callable[[int], None] | None, sparse: bool = False
) -> ScanColumns:
    """Walk the headers of the tar `src` holds; raises Corrupt(what, offset)."""
    cols = ScanColumns()
    pend = _Pending(src)
    _walk(cols, pend, src, progress, sparse)
    if pend.pos >= 0:
        raise Corrupt("extension header not followed by a member", pend.pos)
    cols.flush()
    if progress is not None:
        progress(src.at_least(_WHOLE))
    return cols


_WHOLE = 1 << 63  # more than any tar holds: at_least(_WHOLE) is the tar's size


def _walk(cols: ScanColumns, pend: _Pending, src: TarBytes,
          progress: Callable[[int], None] | None, sparse: bool) -> None:
    """The loop of scan_tar: every member into `cols`, extension headers into `pend`."""
    types_append, nums_extend, names_append = cols.types.append, cols.nums.extend, \
        cols.names.append
    links, devices, xattrs, sparse_maps = cols.links, cols.devices, cols.xattrs, cols.sparse
    unpack, adler32, read, at_least = HEADER.unpack_from, zlib.adler32, src.read, src.at_least
    # Bytes known to be there: a tar still being written is asked again only past them.
    known = at_least(0)
    # With sparse, an old GNU sparse file is a regular one whose map is in its header.
    type_codes = TYPE_CODES_SPARSE if sparse else TYPE_CODES
    zero_block, reg_code, odd_start = ZERO_BLOCK, TYPE_F, ODD_START
    link_codes, device_codes = TYPE_LINKS, TYPE_DEVICES
    owners: dict[bytes, tuple[int, int, int]] = {}
    buf, buf_start, buf_len, read_size = b"", 0, 0, _READ_MIN // 2
    pos = count = hdr_pos = 0
    next_report = _PROGRESS_STEP
    rare = False  # extension headers pending, or global records in force: the rare path
    pax: dict[bytes, bytes] | None = None  # the records in force (read only with pax_sparse)

    try:
        while True:
            hdr_pos = pos
            rel = pos - buf_start
            if rel < 0 or rel + 512 > buf_len:
                if pos >= known:
                    known = at_least(pos + 1)
                    if pos >= known:
                        break  # clean EOF at a header boundary
                # Little data skipped: headers are dense here, read more at once.
                read_size = min(2 * read_size, _READ_MAX) if rel - buf_len < _READ_MIN \
                    else _READ_MIN
                buf = read(read_size, pos)
                buf_start, buf_len, rel = pos, len(buf), 0
                if progress is not None and pos >= next_report:
                    progress(pos)
                    next_report = pos + _PROGRESS_STEP
                if buf_len < 512:
                    if buf.count(0) == buf_len:
                        break  # a short run of zeros: an end marker cut short
                    raise Corrupt("truncated file (partial header)")
            blk = buf[rel : rel + 512]
            name, f_owner, f_size, f_mtime, f_chk, flag = unpack(blk)

            try:
                chk = int(f_chk.rstrip(b" \x00"), 8)
            except ValueError:
                chk = -1
            # (1 + sum(blk)) - (1 + sum(f_chk)) + 8 spaces is what the field should hold.
            chk_calc = (adler32(blk) & 0xFFFF) - (adler32(f_chk) & 0xFFFF) + 256
            if chk_calc != chk or blk.count(0) < 256:
                if blk == zero_block:
                    break  # end-of-archive marker; whatever follows is ignored
                if not checksum_ok(blk, f_chk):
                    raise Corrupt("bad header checksum")

            code = type_codes[flag]
            data_pos = pos + 512
            pax_sparse = None
            if not code:
                pos = pend.take(buf, buf_start, pos, blk, name, f_size, flag)
                rare = pend.pos >= 0 or pend.glob_active
                continue

            name = name.partition(b"\x00")[0]
            if blk[345] and blk[257:263] == USTAR_MAGIC:
                name = blk[345:500].partition(b"\x00")[0] + b"/" + name
            owner = owners.get(f_owner)
            if owner is None:
                owner = owner_fields(f_owner)
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
                size = number_field(f_size, "size")
                mtime_ns = seconds_ns(number_field(f_mtime, "mtime"))

            link = None
            if rare:
                if pend.pos >= 0:
                    hdr_pos = pend.pos  # errors now concern the member as a whole
                name, link, size, owner, mtime_ns, pax, pax_sparse = pend.apply(
                    blk, name, owner, size, mtime_ns, flag, sparse
                )
                pend.attach_xattrs(xattrs, count)
                rare = pend.glob_active

            if code == reg_code:
                if flag == AREGTYPE and name[-1:] == b"/":
                    code = TYPE_D  # pre-POSIX archives mark directories by a trailing '/'
                    size = 0
                    next_pos = data_pos
                else:
                    if size < 0:
                        raise Corrupt("negative size")
                    next_pos = data_pos + ((size + 511) & ~511)
                    if pax_sparse is not None or flag == GNU_SPARSE:
                        data_pos, next_pos, size = _sparse_member(
                            src, blk, data_pos, next_pos, size, pax, pax_sparse, sparse_maps,
                            count
                        )
                    # A cut inside the padding loses no data of this member but hides every
                    # later one: an error too, as in GNU tar.
                    if next_pos > known:
                        known = at_least(next_pos)
                        if next_pos > known:
                            raise Corrupt("truncated file (member data past end of file)")
            else:
                # Links, directories, devices and FIFOs never carry data (as tarfile and Go's
                # archive/tar read them), whatever their size field says.
                size = 0
                next_pos = data_pos

            if name[-1:] == b"/":
                name = name.rstrip(b"/")
            # (bytes.find is used over "in": it is twice as fast on 3.11.)
            if not name or name.startswith(odd_start) or name.find(b"//") >= 0 \
                    or name.find(b"/.") >= 0:
                name = _odd_name(name, code)
                if not name:
                    pos = next_pos  # the archive root './' itself is not a member
                    xattrs.pop(count, None)
                    continue
            if len(name) > MAX_COMPONENT:
                check_name(name, "name")
            if code != reg_code:
                if code in link_codes:
                    _link_target(code, blk, link, links, count)
                elif code in device_codes:
                    devices[count] = device_fields(blk)

            types_append(code)
            nums_extend(owner + (size, mtime_ns, data_pos))
            names_append(name)
            count += 1
            pos = next_pos
            if not count & _CHUNK_MASK:
                cols.flush()
    except (Corrupt, OverflowError, ValueError, IndexError, struct.error, UnicodeError) as e:
        raise Corrupt(_what(e), hdr_pos) from None


# ---------------------------------------------------------------------------------------------
# The rare paths, out of the loop


class _Pending:
    """Extension headers read but not yet applied: GNU long names and links, local PAX records
    (they apply to the next member), and global PAX records (they apply to all that follow)."""

    __slots__ = ("pax", "name", "link", "pos", "glob", "glob_active", "src")

    def __init__(self, src: TarBytes) -> None:
        self.src = src
        self.pax: dict[bytes, bytes] | None = None
        self.name: bytes | None = None
        self.link: bytes | None = None
        self.pos = -1  # offset of the first pending extension header, -1 if none
        self.glob = Globals(src)
        self.glob_active = False  # any global records in force

    def take(self, buf: bytes, buf_start: int, pos: int, blk: bytes, name: bytes,
             f_size: bytes, flag: int) -> int:
        """Read the extension header at `pos` (or refuse an unsupported type); the next one's
        offset."""
        if flag not in EXT_TYPES:
            # Checked before any payload is read: the type is the problem, not a size.
            what = UNSUPPORTED.get(flag, "unknown")
            shown = shown_name(name, blk, self.name, self.pax, self.glob.fields)
            raise Corrupt(f"unsupported entry type {chr(flag)!r} ({what}) for member {shown!r}")
        data_pos = pos + 512
        size = number_field(f_size, "size")
        if flag in (GNU_LONGNAME, GNU_LONGLINK):
            # The name ends at its NUL even past the size, within the padding, as GNU tar and
            # tarfile read it (Go stops at the size; writers agree).
            size = (size + 511) & ~511
        data = read_ext(self.src, buf, buf_start, data_pos, size, flag)
        if flag == PAX_GLOBAL:
            self.glob.update(parse_pax(data))
            self.glob_active = bool(self.glob.fields or self.glob.xattrs)
        elif flag in PAX_LOCAL:
            # Only the last of consecutive 'x' headers counts, as in GNU tar, bsdtar, Go and
            # tarfile.
            self.pax = parse_pax(data)
        elif flag == GNU_LONGNAME:
            self.name = data.split(b"\x00", 1)[0]
        else:
            self.link = data.split(b"\x00", 1)[0]
        if self.pos < 0 and flag != PAX_GLOBAL:
            self.pos = pos
        pos = data_pos + ((size + 511) & ~511)
        if pos > self.src.at_least(pos):
            raise Corrupt("truncated file (extension header padding past end of file)")
        return pos

    def apply(self, blk: bytes, name: bytes, owner: tuple[int, int, int], size: int,
              mtime_ns: int, flag: int, sparse: bool
              ) -> tuple[bytes, bytes, int, tuple[int, int, int], int,
                         dict[bytes, bytes] | None, str | None]:
        """The member's fields with the pending and global records applied: (name, link,
        size, owner, mtime_ns, the records in force, the PAX sparse format or None)."""
        if self.name is not None:
            name = self.name
        link = self.link if self.link is not None else blk[157:257].partition(b"\x00")[0]
        # Empty values stay in: to apply_pax they mean "deleted, use the header".
        gfields = self.glob.fields
        if self.pax is None:
            pax = gfields
        elif gfields:
            pax = {**gfields, **self.pax}  # gfields holds at most a dozen keywords
        else:
            pax = self.pax
        pax_sparse = None
        if pax:
            name, link, size, uid, gid, mtime_ns, sparse_keys = apply_pax(
                pax, name, link, size, owner[1], owner[2], mtime_ns
            )
            owner = (owner[0], uid, gid)
            if sparse_keys and (pax_sparse := pax_sparse_format(pax)) is not None:
                shown = pax.get(b"GNU.sparse.name") or name
                if not sparse:
                    raise Corrupt(
                        f"unsupported GNU sparse member {shown[:200]!r}"
                        f" (PAX sparse format {pax_sparse})"
                    )
                if flag not in SPARSE_CARRIERS:
                    raise Corrupt(f"GNU sparse records on a non-file {shown[:200]!r}")
                if value := pax.get(b"GNU.sparse.name"):
                    name = value
        return name, link, size, owner, mtime_ns, pax, pax_sparse

    def attach_xattrs(self, xattrs: dict[int, Mapping[str, bytes]], member: int) -> None:
        """Give `member` its xattrs (its own, the shared global set, or both merged), and
        clear what was pending."""
        local = xattrs_of(self.pax) if self.pax else None
        glob = self.glob
        shared = glob.xattrs
        if local or shared:
            if local:
                glob.check_member(local)
            if not shared:
                xattrs[member] = local  # type: ignore[assignment]
            elif not local:
                xattrs[member] = glob.shared()
            else:
                glob.spend(len(shared))  # a merged copy: paid like any other
                xattrs[member] = {**shared, **local}
        self.pax = self.name = self.link = None
        self.pos = -1


def _sparse_member(src: TarBytes, blk: bytes, data_pos: int, next_pos: int, size: int,
                   pax: dict[bytes, bytes] | None, pax_sparse: str | None,
                   sparse_maps: dict[int, array.array[int]], member: int
                   ) -> tuple[int, int, int]:
    """Read a GNU sparse member's map (old GNU header or PAX records) into `sparse_maps`;
    (where its stored data starts, where the next header is, its real size)."""
    if next_pos > src.at_least(next_pos):
        raise Corrupt("truncated file (member data past end of file)")
    if pax_sparse is None:
        numbers, real_size, data_pos = old_gnu_map(src, blk, data_pos)
        stored = size
    else:
        assert pax is not None
        numbers, real_size, map_len = pax_sparse_layout(pax, pax_sparse, src, data_pos, size)
        data_pos += map_len
        stored = size - map_len
    sparse_maps[member] = checked_fragments(numbers, real_size, stored)
    return data_pos, data_pos + ((stored + 511) & ~511), real_size


def _what(e: Exception) -> str:
    """What a failure inside the loop says about the member it stopped at."""
    if isinstance(e, Corrupt):
        return str(e.args[0])
    if isinstance(e, OverflowError):
        return "numeric field out of range"  # the int64 columns refuse beyond 2**63
    return "malformed header"


def _odd_name(name: bytes, code: int) -> bytes:
    """An odd-looking name normalised; empty only for the archive root itself."""
    name = normalize_name(name)
    if not name and code != TYPE_D:
        # Never dropped in silence: it would take its data and name with it.
        raise Corrupt(f"{TYPE_WORDS[code]} with an empty name")
    return name


def _link_target(code: int, blk: bytes, link: bytes | None, links: dict[int, bytes],
                 member: int) -> None:
    """Record a link's target (from PAX or a GNU long link if given, else the header),
    checked, in `links` (unless it is empty)."""
    if link is None:
        link = blk[157:257].partition(b"\x00")[0]
    if code == TYPE_H:
        link = normalize_name(link, "hard link target")
        if not link:
            raise Corrupt("hard link with an empty target")
        check_name(link, "hard link target")
    elif len(link) > MAX_LINK:
        raise Corrupt(f"symlink target of {len(link)} bytes (limit {MAX_LINK})")
    if link:
        links[member] = link
