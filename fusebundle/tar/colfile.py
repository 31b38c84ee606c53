"""Files of fixed-width number columns and byte blobs, used in place through ``mmap``.

The indexes and tree arrays of an image with a million entries would cost a hundred bytes an
entry if they were read into the heap.  Laid out here, each column is a run of native integers
at an aligned offset, so a loaded file is one read-only mapping and the columns are
``memoryview.cast`` views of it: memory is spent only on the pages a mount touches, and
loading needs no parsing pass over the entries.

Layout: a fixed head (magic, version, byte order, sizes, CRC), a metadata blob (the caller's:
stat keys, counts), a table of sections (name, typecode, offset, length), then the sections.
Number columns are aligned to 8 bytes; blobs start on a page, so each is its own ``mmap``
object (slicing gives bytes, ``find`` works, as on a bytes blob).  The CRC covers everything
after the head and is checked, on load, with plain reads that do not enter our RSS.
"""

from __future__ import annotations

import array
import contextlib
import io
import mmap
import os
import struct
import sys
import zlib
from collections.abc import Sequence

from fusebundle.atomic import TempName, atomic_file

__all__ = ["Damaged", "Mapped", "Section", "drop_pages", "drop_range", "narrow", "read",
           "scratch", "write"]

# magic, format version, byte order (0 little), metadata length, file length, crc32 of the
# bytes after the head, number of sections
_HEAD = struct.Struct("<8sIBxxxQQII")
_ENTRY = struct.Struct("<16sc7xQQ")  # section name, typecode ('s': blob), offset, length
_PAGE = mmap.ALLOCATIONGRANULARITY
_ORDER = 0 if sys.byteorder == "little" else 1
# Blobs this small are read into a bytes object: an mmap of its own would cost a page anyway.
_SMALL_BLOB = _PAGE
_CHUNK = 1 << 20
# A mapped blob is saved this much at a time, its pages let go after each: at most this much
# of it in our RSS (at 1M entries a merged index's names are 23.5 MB).
_SAVE_PIECE = 4 << 20

Buffer = bytes | bytearray | memoryview | array.array | mmap.mmap


class Pieces(tuple):
    """A blob given as buffers that follow one another, written without joining them (a
    scan's names at a million members would otherwise be held twice)."""

    __slots__ = ()


def scratch(size: int, directory: str) -> mmap.mmap:
    """A writable mapping of `size` bytes backed by an unnamed file in `directory`.

    What is written to it can leave our RSS (drop_range) and stay in the page cache, which
    the kernel may write back and reclaim: a million names built for one save (23 MB) then
    do not count twice in the peak.  The file has no name, so nothing is left behind; where
    one cannot be made (a read-only store, a file system without O_TMPFILE, a full disk)
    the mapping is anonymous, as before.
    """
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        return mmap.mmap(-1, size)
    try:
        # The blocks reserved now: a page of a sparse file the disk has no room for would be
        # SIGBUS when written, not an error.
        os.posix_fallocate(fd, 0, size)
        return mmap.mmap(fd, size)
    except OSError:
        return mmap.mmap(-1, size)
    finally:
        os.close(fd)


def drop_range(m: mmap.mmap, start: int, stop: int) -> int:
    """Let the whole pages of m[start:stop] leave our RSS; return where the next drop starts
    (the page that was cut, which may still be written)."""
    lo = -(-start // _PAGE) * _PAGE
    hi = stop - stop % _PAGE if stop < len(m) else len(m)
    if hi > lo:
        with contextlib.suppress(OSError, ValueError):
            m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return hi
    return start


# (name, typecode, data): typecode "s" for a blob, else an array typecode of data's items.
Section = tuple[str, str, Buffer | Pieces]


def narrow(values: Sequence[int]) -> tuple[str, Buffer]:
    """The smallest unsigned typecode holding every value (q if any is negative), and the data."""
    if not len(values):
        return "B", b""
    lo, hi = min(values), max(values)
    if lo < 0:
        tc = "q"
    elif hi < 1 << 8:
        tc = "B"
    elif hi < 1 << 16:
        tc = "H"
    elif hi < 1 << 32:
        tc = "I"
    else:
        tc = "Q"
    if isinstance(values, array.array) and values.typecode == tc:
        return tc, values
    if isinstance(values, memoryview) and values.format == tc:
        return tc, values
    return tc, array.array(tc, values)


def _nbytes(data: Buffer | Pieces) -> int:
    if isinstance(data, Pieces):
        return sum(map(_nbytes, data))
    if isinstance(data, memoryview):
        return data.nbytes
    if isinstance(data, array.array):
        return len(data) * data.itemsize
    return len(data)


def write(path: str, magic: bytes, version: int, meta: bytes, sections: Sequence[Section],
          mode: int | None = None) -> None:
    """Write the sections to `path` atomically (temp name, fsync, rename, fsync of the dir)."""
    table = []
    pos = _HEAD.size + len(meta) + _ENTRY.size * len(sections)
    places = []
    for name, tc, data in sections:
        n = _nbytes(data)
        pos = -(-pos // (_PAGE if tc == "s" else 8)) * (_PAGE if tc == "s" else 8)
        table.append(_ENTRY.pack(name.encode(), tc.encode(), pos, n))
        places.append(pos)
        pos += n
    total = pos
    body = meta + b"".join(table)
    with atomic_file(path, TempName("." + os.path.basename(path) + "."), mode) as t, \
            os.fdopen(t.fd, "wb", closefd=False) as f:
        f.write(bytes(_HEAD.size))  # the head goes in last, once the CRC is known
        crc = zlib.crc32(body)
        f.write(body)
        at = _HEAD.size + len(body)
        for (_, _, data), place in zip(sections, places, strict=True):
            gap = bytes(place - at)
            crc = zlib.crc32(gap, crc)
            f.write(gap)
            at = place
            for piece in data if isinstance(data, Pieces) else (data,):
                if isinstance(piece, mmap.mmap):
                    crc = _write_mapped(f, piece, crc)
                    at += len(piece)
                    continue
                view = memoryview(piece).cast("B")
                crc = zlib.crc32(view, crc)
                f.write(view)
                at += view.nbytes
                view.release()
        f.seek(0)
        f.write(_HEAD.pack(magic, version, _ORDER, len(meta), total, crc, len(sections)))


def _write_mapped(f: io.BufferedWriter, m: mmap.mmap, crc: int) -> int:
    """Write a mapped blob a chunk at a time, its pages let go after each: writing it whole
    would map all of it into our RSS at once."""
    with memoryview(m) as view:
        for start in range(0, len(m), _SAVE_PIECE):
            piece = view[start : start + _SAVE_PIECE]
            crc = zlib.crc32(piece, crc)
            f.write(piece)
            piece.release()
            drop_range(m, start, start + _SAVE_PIECE)
    return crc


class Mapped:
    """A loaded file: its metadata and its sections, number columns as memoryviews."""

    __slots__ = ("meta", "sections", "maps")

    def __init__(self, meta: bytes, sections: dict[str, Buffer], maps: list[mmap.mmap]) -> None:
        self.meta = meta
        self.sections = sections
        self.maps = maps  # the mappings behind the sections

    def __getitem__(self, name: str) -> Buffer:
        return self.sections[name]


def drop_pages(maps: Sequence[mmap.mmap]) -> None:
    """Let the pages of these mappings leave our RSS; they stay in the page cache and come
    back on the next touch (for a walk that is over, such as a merge or a tree build)."""
    for m in maps:
        with contextlib.suppress(OSError, ValueError):
            m.madvise(mmap.MADV_DONTNEED)


class Damaged(Exception):
    """The file is not a complete, intact one of the asked kind and version."""


def read(path: str, magic: bytes, version: int) -> Mapped | None:
    """Map the file at `path`; None if it is missing. Damaged if it is truncated, corrupt,
    foreign or of another version (the caller rebuilds it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _read(fd, magic, version)
    except (ValueError, struct.error, TypeError, OverflowError) as e:
        raise Damaged(f"malformed ({e})") from None
    except OSError as e:
        raise Damaged(f"unreadable ({e.strerror})") from None
    finally:
        os.close(fd)


def _read(fd: int, magic: bytes, version: int) -> Mapped:
    size = os.fstat(fd).st_size
    head = os.pread(fd, _HEAD.size, 0)
    if len(head) != _HEAD.size:
        raise Damaged("truncated")
    got_magic, got_version, order, meta_len, total, crc, count = _HEAD.unpack(head)
    if got_magic != magic.ljust(8, b"\0"):
        raise Damaged("not a file of this kind")
    if got_version != version:
        raise Damaged(f"format {got_version}, not {version}")
    if order != _ORDER:
        raise Damaged("written on a machine of the other byte order")
    if total != size:
        raise Damaged(f"{size} bytes, {total} expected (truncated?)")
    # The CRC, read in pieces that go through the page cache, not into this process.
    calc = 0
    pos = _HEAD.size
    while pos < size:
        piece = os.pread(fd, min(_CHUNK, size - pos), pos)
        if not piece:
            raise Damaged("truncated")
        calc = zlib.crc32(piece, calc)
        pos += len(piece)
    if calc != crc:
        raise Damaged("checksum mismatch")
    table_len = _ENTRY.size * count
    front = os.pread(fd, meta_len + table_len, _HEAD.size)
    if len(front) != meta_len + table_len:
        raise Damaged("truncated")
    whole = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    maps = [whole]
    sections: dict[str, Buffer] = {}
    for k in range(count):
        raw_name, tc_b, off, n = _ENTRY.unpack_from(front, meta_len + k * _ENTRY.size)
        name, tc = raw_name.rstrip(b"\0").decode(), tc_b.decode()
        if off + n > size or off < _HEAD.size + meta_len + table_len:
            raise Damaged(f"section {name} out of bounds")
        if tc == "s":
            if n < _SMALL_BLOB:
                sections[name] = os.pread(fd, n, off)
            else:
                if off % _PAGE:
                    raise Damaged(f"section {name} not page-aligned")
                blob = mmap.mmap(fd, n, access=mmap.ACCESS_READ, offset=off)
                maps.append(blob)
                sections[name] = blob
        else:
            itemsize = array.array(tc).itemsize
            if off % 8 or n % itemsize:
                raise Damaged(f"section {name} misaligned")
            sections[name] = memoryview(whole)[off : off + n].cast(tc)
    return Mapped(front[:meta_len], sections, maps)
