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
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from types import MappingProxyType
from typing import NamedTuple

from fusebundle.errors import CorruptTar
from fusebundle.tar import colfile
from fusebundle.tar.extent import Extent, Source
from fusebundle.tar.header import Corrupt, FileBytes, read_sparse
from fusebundle.tar.scan import ScanColumns, scan_tar

__all__ = [
    "Columns", "IndexEntry", "Stamp", "TarIndex", "of_type", "open_index", "read_sparse",
    "FORMAT_MAGIC", "FORMAT_VERSION",
]  # fmt: skip

log = logging.getLogger(__name__)

FORMAT_MAGIC = b"FBIDX"
# 2: shared xattr sets of global PAX headers; GNU sparse maps.  3: laid out to be mapped
# (colfile), numbers in the narrowest type that holds them.
FORMAT_VERSION = 3

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


# A walk over every entry of a mapped index lets the pages it read go this often, so a pack of
# a million entries holds a chunk of the index in RSS, not all of it.
DROP_EVERY_ENTRIES = 1 << 14
_DROP_MASK = DROP_EVERY_ENTRIES - 1


# ---------------------------------------------------------------------------------------------
# The index


# The saved index's metadata: the tar's st_size, st_mtime_ns, st_ino, and the entry count.
_Meta = struct.Struct("<QqQQ")

# Column attribute name -> array typecode, or "s" for a bytes blob; this order is the file order.
COLUMNS: tuple[tuple[str, str], ...] = (
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


class Stamp(NamedTuple):
    """What says a file is still the one indexed: its size, mtime and inode (a stored tar never
    changes; any of the three moving means the offsets may no longer hold)."""

    size: int
    mtime_ns: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        """The stamp of a stat result."""
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)

    @classmethod
    def of_path(cls, path: str) -> Stamp:
        """The stamp of the file at `path` now (OSError if it cannot be stat'ed)."""
        return cls.of(os.stat(path))


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


def of_type(types: Blob | bytearray, code: int, start: int = 0,
            stop: int | None = None) -> Iterator[int]:
    """The positions in [start, stop) of a types column that hold `code` (hard links, say), in
    order, each found with one C-level search from the last."""
    end = len(types) if stop is None else stop
    pos = types.find(code, start, end)
    while pos >= 0:
        yield pos
        pos = types.find(code, pos + 1, end)


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
    """Columnar index of tar members over one or more source tars: one tar's in archive
    order, or a flattened image's over its layer tars (images.flatten), where the `srcs`
    column says which source holds each entry's data."""

    __slots__ = (
        "tar_path", "_stat", "_types", "_modes", "_uids", "_gids", "_sizes", "_mtimes",
        "_offsets", "_devmajors", "_devminors", "_names", "_name_ends", "_links",
        "_link_ends", "_xattrs", "_sparse", "_by_name", "_maps", "_sources", "_stamps",
        "_srcs", "_source_of",
    )  # fmt: skip

    tar_path: str
    _stat: Stamp
    # The tars the data is in, each with its stamp when indexed: [tar_path] for one tar.
    _sources: list[str]
    _stamps: list[Stamp]
    _srcs: Numbers | None  # entry -> its source's number; None for one tar
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

    def __init__(self, tar_path: str, stat_key: Stamp) -> None:
        """Create an empty index; use :meth:`scan`, :meth:`load` or :func:`open_index`."""
        self.tar_path = tar_path
        self._stat = stat_key
        self._types = b""
        for attr, typecode in COLUMNS:
            if typecode != "s":
                setattr(self, attr, array.array(typecode))
        self._names = b""
        self._links = b""
        self._xattrs = {}
        self._sparse = {}
        self._by_name = None
        self._maps: list = []  # the file's mappings, once loaded from one
        self._sources, self._stamps, self._srcs = [tar_path], [stat_key], None
        self._source_of: dict[str, Source] = {}  # data path -> its Source, one per file

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
            src=self.data_path(i),
            sparse=self._sparse.get(i) if self._sparse else None,
        )

    def __iter__(self) -> Iterator[IndexEntry]:
        """Yield every member in index order (archive order for one tar)."""
        names, links, xattrs = self._names, self._links, self._xattrs
        member_xattrs, sparse = self._member_xattrs, self._sparse
        maps = self._maps
        name_start = link_start = 0
        srcs = map(self._sources.__getitem__, self._srcs) if self._srcs is not None \
            else repeat(self.tar_path, len(self._types))
        columns = zip(
            self._types, self._modes, self._uids, self._gids, self._sizes, self._mtimes,
            self._name_ends, self._link_ends, self._devmajors, self._devminors, self._offsets,
            srcs, strict=True,
        )  # fmt: skip
        for i, (code, mode, uid, gid, size, mtime, n_end, l_end, major, minor, off, src) in (
                enumerate(columns)):
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
                src,
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
        """The tar holding entry i's data (at its offset)."""
        return self._sources[self._srcs[i]] if self._srcs is not None else self.tar_path

    def data_sources(self) -> tuple[list[str], Numbers | None]:
        """The tars the data is in, and each entry's number among them (None: all in the one),
        for renderers that read many members without an IndexEntry each."""
        return self._sources, self._srcs

    def with_extras(self) -> set[int]:
        """The entries that carry more than the columns: xattrs or a sparse map."""
        return {*self._xattrs, *self._sparse}

    @property
    def sources(self) -> list[str]:
        """The tars the entries' data is in (one, or a flattened image's layers, bottom first)."""
        return list(self._sources)

    def source(self, path: str) -> Source:
        """The Source for `path` (this tar, or a layer of a merged image), guarded by this
        index's stamps: one object per file, shared by every extent into it."""
        src = self._source_of.get(path)
        if src is None:
            src = self._source_of[path] = Source(path, self.verify_unchanged)
        return src

    def extent(self, i: int) -> Extent:
        """Where regular member i's bytes are."""
        n = len(self._types)
        if i < 0:
            i += n
        return Extent(self.source(self.data_path(i)), self._offsets[i], self._sizes[i],
                      self._sparse.get(i) if self._sparse else None)

    def extent_of(self, e: IndexEntry) -> Extent:
        """Where the bytes of an entry this index yielded are."""
        return Extent(self.source(e.src), e.offset, e.size, e.sparse)

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

    @property
    def stamp(self) -> Stamp:
        """The tar's size, mtime and inode when it was indexed."""
        return self._stat

    def verify_unchanged(self) -> bool:
        """True if every source tar still has the size, mtime and inode it had when indexed."""
        try:
            return [Stamp.of_path(p) for p in self._sources] == self._stamps
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
                cols = scan_tar(FileBytes(f.fileno(), st.st_size), progress, sparse)
            except Corrupt as exc:
                what, offset = exc.args
                raise CorruptTar(f"{tar_path}: {what} at offset {offset}") from None
        return cls.from_columns(tar_path, Stamp.of(st), cols)

    @classmethod
    def from_columns(cls, tar_path: str, stamp: Stamp, cols: ScanColumns) -> TarIndex:
        """The index a scan's columns make (they are taken over, not copied)."""
        self = cls._taking(tar_path, stamp, cols)
        self._names = b"".join(cols.blob)
        cols.blob.clear()
        return self

    @classmethod
    def save_columns(cls, index_path: str, tar_path: str, stamp: Stamp,
                     cols: ScanColumns) -> None:
        """Save the index a scan's columns make, as `save` does, without joining its names in
        memory (the store keeps only the file); the columns are consumed."""
        self = cls._taking(tar_path, stamp, cols)
        self._names = colfile.Pieces(cols.blob)  # type: ignore[assignment]  # only for save
        cols.blob.clear()
        self.save(index_path)

    @classmethod
    def _taking(cls, tar_path: str, stamp: Stamp, cols: ScanColumns) -> TarIndex:
        """An index of the scan's columns, all but the names (the callers' to place)."""
        self = cls(tar_path, stamp)
        n = len(cols.types)
        self._types = bytes(cols.types)
        # Narrowed as they will be saved, one after another (the scan keeps them narrow, so
        # mostly no copy), and all before the names are placed.
        for attr in ("modes", "uids", "gids", "sizes", "mtimes", "offsets", "name_ends"):
            setattr(self, "_" + attr, _narrowed(getattr(cols, attr)))
            setattr(cols, attr, None)
        if cols.devices:
            majors = array.array("I", bytes(4 * n))
            minors = array.array("I", bytes(4 * n))
            for i, (major, minor) in cols.devices.items():
                majors[i] = major
                minors[i] = minor
        else:
            majors = minors = array.array("B", bytes(n))  # read-only by convention: shared
        self._devmajors, self._devminors = majors, minors
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

    def _sections(self, columns: Sequence[tuple[str, str]] = COLUMNS
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
            return cls._from_mapped(mapped, tar_path, Stamp.of(st))
        except (ValueError, IndexError, KeyError, struct.error, OverflowError, UnicodeError) as e:
            log.warning("tar index %s: malformed (%s): rebuilt", index_path, e)
            return None

    @classmethod
    def _from_mapped(cls, mapped: colfile.Mapped, tar_path: str,
                     stat_key: Stamp) -> TarIndex | None:
        size, mtime_ns, ino, n = _Meta.unpack(mapped.meta)
        if (size, mtime_ns, ino) != stat_key:
            return None  # the tar changed: a stale index, not a damaged one
        self = cls(tar_path, stat_key)
        self._adopt(mapped, COLUMNS, n)
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


def _narrowed(column: array.array) -> Numbers:
    """The column in the narrowest typecode that holds its values (as colfile saves it)."""
    data = colfile.narrow(column)[1]
    return data if isinstance(data, array.array) else column


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
