"""The view as a tree of inodes, for the FUSE renderer: pure data, no FUSE, no event loop.

Two kinds of nodes:

- synthetic nodes: everything the view lists as single entries (prefix directories,
  config.json, runtime.json, tmp/, rootfs/, files:), one small object each, inodes 1, 2, ...
  (1 is the root);
- graft nodes: the filtered export of an image, placed at the graft's prefix.  They are not
  objects: a graft is a handful of arrays built in one pass over the image's index (parent,
  type, basename, children sorted by name per directory) and its inodes are
  ``(graft + 1) << 48 | alias << 32 | local`` where ``local`` is the entry's position in the
  index (its root and any directory the tar only implies come after the entries).

A graft is built on first use (`load_graft`), which is when its image is exported and indexed.
Until then the directory it is placed at is "pending": `pending(ino)` says which grafts a
lookup or readdir there needs first.  When several sources give the same directory (init
images layered at the root, files: inside an image) their children are merged one level at a
time, the later source winning for a name as when the pack tar is extracted.

The filter (`view.filter_entry`) only ever touches a few names at the image root and hard links
to them; those entries are run through it and kept as `Entry` overrides, every other entry is
rendered straight from the index's columns.

Aliases serve `--expand`: a bundle's rootfs/ shows the graft its image lives in. Directories
get an inode per alias (the kernel cannot have one directory at two places); everything else
keeps the inode of alias 0, so a file is one inode wherever it shows.
"""

from __future__ import annotations

import array
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain

from fusebundle.bundle.entry import Entry, directory
from fusebundle.bundle.view import (
    DOCKER_CREATED,
    EXCLUDE,
    REPLACE,
    Bundle,
    Graft,
    KernelImage,
    View,
    filter_entry,
)
from fusebundle.tar import colfile
from fusebundle.tar.index import Blob, TarIndex

log = logging.getLogger(__name__)

ROOT_INO = 1
# Of the arrays saved beside an index; bump when _build changes.  1: JSON head and blobs read
# into the heap; 2: laid out to be mapped (colfile), kid_hi gone (kid_lo[d + 1] is its end).
_TREE_FORMAT = 2
_TREE_MAGIC = b"FBTREE"
GRAFT_SHIFT = 48
ALIAS_SHIFT = 32
LOCAL_MASK = (1 << ALIAS_SHIFT) - 1
ALIAS_MASK = (1 << (GRAFT_SHIFT - ALIAS_SHIFT)) - 1
MAX_ALIASES = ALIAS_MASK + 1
MAX_GRAFTS = (1 << (63 - GRAFT_SHIFT)) - 1

# Index entries the filter may change: names at the image root, and hard links to dropped names.
_SPECIAL = frozenset(EXCLUDE | set(REPLACE) | DOCKER_CREATED)

_TYPE_BITS = {
    "f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "c": stat.S_IFCHR,
    "b": stat.S_IFBLK, "p": stat.S_IFIFO,
}  # fmt: skip
_D, _H, _F, _L = ord("d"), ord("h"), ord("f"), ord("l")
_DEVICES = (ord("c"), ord("b"))
_IMPLICIT_DIR = directory(b"")

# (st_mode, st_nlink, st_uid, st_gid, st_rdev, st_size, st_mtime_ns)
Stat = tuple[int, int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Content:
    """Where the bytes of one regular file are."""

    size: int
    data: bytes | None = None  # held in memory
    path: str | None = None  # else in this file at `offset`
    offset: int = 0
    graft: int = -1  # the graft whose tar `path` is, -1 for a files: source
    sparse: Sequence[int] | None = None  # a sparse member's fragments at `offset`


def graft_ino(k: int, alias: int, local: int) -> int:
    return ((k + 1) << GRAFT_SHIFT) | (alias << ALIAS_SHIFT) | local


def split_ino(ino: int) -> tuple[int, int, int]:
    """(graft, alias, local) of a graft inode."""
    return (ino >> GRAFT_SHIFT) - 1, (ino >> ALIAS_SHIFT) & ALIAS_MASK, ino & LOCAL_MASK


def _split(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p and p != b"."]


def _entry_stat(e: Entry, nlink: int) -> Stat:
    t = e.type
    if t == "l":
        size = len(e.linkname)
    elif t == "f":
        size = e.size
    else:
        size = 0
    rdev = os.makedev(e.devmajor, e.devminor) if t in "cb" else 0
    return (_TYPE_BITS[t] | (e.mode & 0o7777), nlink, e.uid, e.gid, rdev, size, e.mtime_ns)


# ------------------------------------------------------------------------------ graft arrays
class GraftTree:
    """One graft's filtered export as arrays: the structure, never a Python object per entry.

    Local ids: 0..n-1 are index entries, `root` (= n) is the graft's top directory and ids
    after it are directories the tar implies without listing them.
    """

    __slots__ = (
        "k", "graft", "idx", "n", "root", "root_entry", "types", "parent", "name_off",
        "names", "kid_lo", "kids", "nsub", "links", "nlinks", "over", "size",
        "cols",
    )  # fmt: skip

    def __init__(self, k: int, graft: Graft, idx: TarIndex) -> None:
        self.k = k
        self.graft = graft
        self.idx = idx
        self.n = len(idx)
        self.root = self.n
        self.root_entry: int | None = None  # an index entry naming the top directory itself
        self.links: dict[int, int] = {}  # hard link -> the entry it is (never a link)
        self.nlinks: dict[int, int] = {}  # entry -> names it has, when more than one
        self.over: dict[int, Entry] = {}  # entries the filter changed
        self.size = 0  # bytes of regular files, for statfs
        self.cols = _numeric_columns(idx)
        # The arrays are saved beside the index: a later mount loads them instead of building
        # them again, which is faster and never holds the build's temporaries.
        if graft.pick is not None:
            self._build()  # a few entries picked out of an export: not worth a file
        elif not self._load_saved():
            self._build()
            self._save()
            idx.drop_pages()  # the build read every name; listings use the tree's own
        try:
            self.size = os.path.getsize(idx.tar_path)  # close enough for statfs
        except OSError:
            self.size = 0

    # -- the saved arrays -------------------------------------------------------------------
    _ARRAYS = ("parent", "kids", "kid_lo", "nsub", "name_off")

    def _saved_path(self) -> str:
        # Init grafts turn resolv.conf into a symlink: their types differ, so their own file.
        if self.graft.raw:
            return self.idx.tar_path + ".tree-raw"
        return self.idx.tar_path + (".tree-init" if self.graft.resolv_link else ".tree")

    def _stat_key(self) -> list[int]:
        st = os.stat(self.idx.tar_path)
        return [st.st_size, st.st_mtime_ns, st.st_ino, self.n]

    def _save(self) -> None:
        sections: list[colfile.Section] = [("types", "s", self.types), ("names", "s", self.names)]
        sections += [(a, *colfile.narrow(getattr(self, a))) for a in self._ARRAYS]
        for name, values in (("link_from", self.links.keys()), ("link_to", self.links.values()),
                             ("nlink_of", self.nlinks.keys()), ("nlinks", self.nlinks.values()),
                             ("over", self.over.keys())):
            sections.append((name, "q", array.array("q", values)))
        path = self._saved_path()
        try:
            # The index file may be missing (a merged index the store could not save).
            meta = json.dumps({"stat": self._stat_key(), "root_entry": self.root_entry}).encode()
            colfile.write(path, _TREE_MAGIC, _TREE_FORMAT, meta, sections)
        except OSError as e:  # a read-only cache still works: the next mount builds again
            log.debug("%s: not saved: %s", path, e)
            return
        # Used from the file from now on: the build's arrays leave the heap.
        self._load_saved()

    def _load_saved(self) -> bool:
        path = self._saved_path()
        try:
            mapped = colfile.read(path, _TREE_MAGIC, _TREE_FORMAT)
            if mapped is None:
                return False
            head = json.loads(mapped.meta)
            if head.get("stat") != self._stat_key() or not self.idx.verify_unchanged():
                return False
            types, names = mapped["types"], mapped["names"]
            arrays = [mapped[a] for a in self._ARRAYS]
            lk, lv, nk, nv, over = (mapped[a] for a in ("link_from", "link_to", "nlink_of",
                                                         "nlinks", "over"))
            total = len(types)
            parent, kids, kid_lo, nsub, name_off = arrays
            if (total <= self.n or len(parent) != total or len(nsub) != total
                    or len(kid_lo) != total + 1 or len(name_off) != total + 1
                    or kid_lo[total] != len(kids) or name_off[total] != len(names)):
                raise ValueError("arrays of inconsistent lengths")
            root_entry = head["root_entry"]
        except colfile.Damaged as e:
            log.warning("tree arrays %s: %s: built again", path, e)
            return False
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("tree arrays %s: malformed (%s): built again", path, e)
            return False
        overs: dict[int, Entry] = {}
        for i in over:
            out = filter_entry(self.graft, self.idx, self.idx.entry(i))
            if out is None:
                return False
            overs[i] = out
        self.types, self.names = bytes(types), names
        self.parent, self.kids, self.kid_lo, self.nsub, self.name_off = arrays
        self.links = dict(zip(lk, lv, strict=True))
        self.nlinks = dict(zip(nk, nv, strict=True))
        self.root_entry = root_entry
        self.over = overs
        return True

    # The structure is built from the index's columns in passes over the entries, holding
    # arrays and dicts of directories only: never an object per entry (a million-entry image
    # would need half a gigabyte).  Children are sorted per directory.
    def _build(self) -> None:
        idx, g, n = self.idx, self.graft, self.n
        c = idx.columns()
        types = bytearray(c.types)  # the filter may change a few
        blob, ends = c.names, c.name_ends
        picked: dict[int, bytes] | None = None
        links: dict[int, bytes] = {}  # hard link -> its target's name (after the filter)
        pos = types.find(_H)
        while pos >= 0:
            s = c.link_ends[pos - 1] if pos else 0
            links[pos] = c.links[s : c.link_ends[pos]]
            pos = types.find(_H, pos + 1)
        if g.pick is not None:
            picked = {}
            for i, out in g.pick(idx).items():
                self.over[i] = out
                types[i] = ord(out.type)
                links.pop(i, None)
                picked[i] = out.path[len(g.prefix):]
            links = {}

        def names() -> Iterator[tuple[int, bytes]]:
            if picked is not None:
                return iter(sorted(picked.items()))
            return enumerate(map(blob.__getitem__, map(slice, chain((0,), ends), ends)))

        # Pass 1: the filter, the root's own entry, and the last entry of each directory name.
        # (A directory a later non-directory replaces is no directory, and the reverse.)
        over, special = self.over, _SPECIAL if picked is None else frozenset()
        gone: set[int] = set()  # not in the tree: dropped by the filter, the root's own entry
        hidden: set[int] = set()  # broken hard links: their name shows nothing at all
        tracked = {*links.values(), *(names_of(blob, ends, links))} if links else set()
        last: dict[bytes, int] = {}  # the names hard links need: the last entry of each
        dirs: dict[bytes, int] = {}
        for i, name in names():
            if name in special or (links and i in links and links[i] in EXCLUDE):
                out = filter_entry(g, idx, idx.entry(i))
                if out is None:
                    gone.add(i)
                    continue
                over[i] = out
                types[i] = ord(out.type)
                if out.type != "h":
                    links.pop(i, None)
            if not name:
                if types[i] == _D:
                    self.root_entry = i
                gone.add(i)
                continue
            if types[i] == _D:
                dirs[name] = i
            elif name in dirs:
                del dirs[name]
            if name in tracked:
                last[name] = i
        # Hard links: each is the inode of the entry it names (after following link chains).
        for i, target in links.items():
            if types[i] != _H or last.get(_name(blob, ends, i, picked)) != i:
                continue
            hops = 0
            t = last.get(target)
            while t is not None and types[t] == _H and hops < 64:
                t = last.get(links[t]) if t in links else None
                hops += 1
            if t is None or types[t] in (_H, _D):
                log.debug("%s: hard link %r to a missing entry %r: left out", idx.tar_path,
                          _name(blob, ends, i, picked), target)
                hidden.add(i)  # and its name shows nothing, as if the tar had no such entry
                continue
            self.links[i] = t
            self.nlinks[t] = self.nlinks.get(t, 1) + 1
        # Pass 2: the parent of every entry; names under no directory entry wait for pass 3.
        root = self.root
        parent = array.array("I", [root]) * (n + 1)
        loose: list[int] = []
        for i, name in names():
            slash = name.rfind(b"/")
            if slash < 0:
                continue  # at the root (or dropped: its parent does not matter)
            p = dirs.get(name[:slash])
            if p is None:
                if i not in gone:
                    loose.append(i)
                continue
            parent[i] = p
        # Pass 3: the directories the tar only implies, unless a non-directory has the name.
        types.append(_D)  # the root
        orphans: set[int] = set()  # entries below a non-directory: not reachable
        if loose:
            implied: set[bytes] = set()
            for i in loose:
                path = _name(blob, ends, i, picked)
                path = path[: path.rfind(b"/")]
                while path and path not in dirs and path not in implied:
                    implied.add(path)
                    path = path[: max(path.rfind(b"/"), 0)]
            blocked = {name for i, name in names()
                       if name in implied and i not in gone and i not in hidden}
            for path in sorted(implied, key=lambda x: x.count(b"/")):
                if path in blocked:
                    continue
                top = path.rfind(b"/")
                if top >= 0 and path[:top] not in dirs:
                    continue  # below a blocked name
                d = len(types)
                types.append(_D)
                dirs[path] = d
                parent.append(root if top < 0 else dirs[path[:top]])
            for i in loose:
                name = _name(blob, ends, i, picked)
                p = dirs.get(name[: name.rfind(b"/")])
                if p is None:
                    orphans.add(i)
                else:
                    parent[i] = p
        total = len(types)
        self.types = bytes(types)
        del types
        # Children: grouped by parent (a counting sort), then each group sorted by name, the
        # last entry of a name winning.  Ids of implied directories come after the entries.
        counts = array.array("I", bytes(4 * (total + 1)))
        skip = gone | orphans
        members = _members(n, total, picked, skip, dirs)
        for i in members():
            counts[parent[i]] += 1
        starts = array.array("I", accumulate(counts, initial=0))
        del counts
        fill = starts[:-1]
        grouped = array.array("I", bytes(4 * starts[-1]))
        for i in members():
            p = parent[i]
            grouped[fill[p]] = i
            fill[p] += 1
        del fill
        base_of = self._base_namer(blob, ends, picked, dirs, n)
        kids = array.array("I")
        kid_lo = array.array("I", bytes(4 * (total + 1)))
        nsub = array.array("I", bytes(4 * total))
        tp = self.types
        resolved = self.links
        for p in range(total):
            lo, hi = starts[p], starts[p + 1]
            kid_lo[p] = len(kids)
            if lo == hi:
                continue
            group = grouped[lo:hi]
            if hi - lo > 1:
                group = _sorted_kids(group, base_of, hidden)
            elif group[0] in hidden:
                continue
            kids.extend(group)
            for i in group:
                if tp[resolved.get(i, i)] == _D:
                    nsub[p] += 1
        kid_lo[total] = len(kids)
        del grouped, starts
        # Each id's own name, for the listing (empty for entries not in the tree).
        names_blob = bytearray()
        name_off = array.array("I", [0])
        for i in range(total):
            names_blob += base_of(i)
            name_off.append(len(names_blob))
        self.kids, self.kid_lo, self.nsub, self.parent = kids, kid_lo, nsub, parent
        self.names, self.name_off = bytes(names_blob), name_off

    def _base_namer(self, blob: Blob, ends: Sequence[int], picked: dict[int, bytes] | None,
                    dirs: dict[bytes, int], n: int) -> Callable[[int], bytes]:
        """id -> its last path component."""
        implied = {d: path for path, d in dirs.items() if d > n}

        def base(i: int) -> bytes:
            if i < n:
                if picked is not None and i not in picked:
                    return b""
                name = _name(blob, ends, i, picked)
            elif i in implied:
                name = implied[i]
            else:
                return b""  # the root
            return name[name.rfind(b"/") + 1 :]

        return base

    # -------------------------------------------------------------------------- queries
    def base(self, i: int) -> bytes:
        off = self.name_off
        return self.names[off[i] : off[i + 1]]

    def is_dir(self, i: int) -> bool:
        return self.types[self.links.get(i, i)] == _D

    def child_count(self, d: int) -> int:
        return self.kid_lo[d + 1] - self.kid_lo[d]

    def child(self, d: int, pos: int) -> tuple[bytes, int]:
        """The pos-th child of directory d in name order: (name, local id, links resolved)."""
        i = self.kids[self.kid_lo[d] + pos]
        return self.base(i), self.links.get(i, i)

    def find(self, d: int, name: bytes) -> int | None:
        """The child of directory d called name (links resolved), by binary search."""
        lo, hi = self.kid_lo[d], self.kid_lo[d + 1]
        kids, off, blob = self.kids, self.name_off, self.names
        while lo < hi:
            mid = (lo + hi) >> 1
            i = kids[mid]
            b = blob[off[i] : off[i + 1]]
            if b < name:
                lo = mid + 1
            elif b == name:
                return self.links.get(i, i)
            else:
                hi = mid
        return None

    def rows(self, d: int, first: int, k: int, alias: int) -> Iterator[tuple[bytes, int, Stat]]:
        """(name, inode, attributes) of directory d's children from position `first`.

        What readdir asks for, 100k times on a big image: the common kinds (plain files and
        directories) are answered from the columns here, without a call per entry.
        """
        kids, off, blob, links, types = self.kids, self.name_off, self.names, self.links, self.types
        files, dirs = graft_ino(k, 0, 0), graft_ino(k, alias, 0)
        cols, over, n = self.cols, self.over, self.n
        modes, uids, gids, sizes, mtimes = cols[:5] if cols is not None else ((),) * 5
        nlinks, nsub = self.nlinks, self.nsub
        for j in range(self.kid_lo[d] + first, self.kid_lo[d + 1]):
            i = kids[j]
            name = blob[off[i] : off[i + 1]]
            i = links.get(i, i)
            t = types[i]
            if cols is None or i >= n or i in over or (t != _F and t != _D):
                yield name, (dirs if t == _D else files) | i, self.stat(i)
            elif t == _F:
                yield name, files | i, (stat.S_IFREG | modes[i], nlinks.get(i, 1), uids[i],
                                        gids[i], 0, sizes[i], mtimes[i])
            else:
                yield name, dirs | i, (stat.S_IFDIR | modes[i], 2 + nsub[i], uids[i], gids[i],
                                       0, 0, mtimes[i])

    def stat(self, i: int) -> Stat:
        if i >= self.n:
            nlink = 2 + self.nsub[i]
            if i == self.root and self.root_entry is not None:
                st = self.stat(self.root_entry)
                return (st[0], nlink, *st[2:])
            return _entry_stat(_IMPLICIT_DIR, nlink)
        over = self.over.get(i)
        if over is not None:
            return _entry_stat(over, self._nlink(i))
        cols = self.cols
        if cols is not None:
            modes, uids, gids, sizes, mtimes, _, majors, minors, lends = cols
            t = self.types[i]
            if t == _F:
                return (stat.S_IFREG | modes[i], self.nlinks.get(i, 1), uids[i], gids[i], 0,
                        sizes[i], mtimes[i])
            if t == _D:
                return (stat.S_IFDIR | modes[i], 2 + self.nsub[i], uids[i], gids[i], 0, 0,
                        mtimes[i])
            if t == _L:
                size = lends[i] - (lends[i - 1] if i else 0)
                return (stat.S_IFLNK | modes[i], self.nlinks.get(i, 1), uids[i], gids[i], 0,
                        size, mtimes[i])
            rdev = os.makedev(majors[i], minors[i]) if t in _DEVICES else 0
            return (_TYPE_BITS[chr(t)] | modes[i], self.nlinks.get(i, 1), uids[i], gids[i],
                    rdev, 0, mtimes[i])
        e = self.idx.entry(i)
        t = e.type
        if t == "f":
            return (stat.S_IFREG | e.mode, self.nlinks.get(i, 1), e.uid, e.gid, 0, e.size,
                    e.mtime_ns)
        if t == "d":
            return (stat.S_IFDIR | e.mode, 2 + self.nsub[i], e.uid, e.gid, 0, 0, e.mtime_ns)
        if t == "l":
            return (stat.S_IFLNK | e.mode, self.nlinks.get(i, 1), e.uid, e.gid, 0,
                    len(e.linkname), e.mtime_ns)
        rdev = os.makedev(e.devmajor, e.devminor) if t in "cb" else 0
        return (_TYPE_BITS[t] | e.mode, self.nlinks.get(i, 1), e.uid, e.gid, rdev, 0,
                e.mtime_ns)

    def _nlink(self, i: int) -> int:
        return 2 + self.nsub[i] if self.types[i] == _D else self.nlinks.get(i, 1)

    def readlink(self, i: int) -> bytes | None:
        over = self.over.get(i)
        if over is not None:
            return over.linkname if over.type == "l" else None
        if i >= self.n or self.types[i] != ord("l"):
            return None
        return self.idx.entry(i).linkname

    def xattrs(self, i: int) -> Mapping[str, bytes] | None:
        if i >= self.n:
            if i != self.root or self.root_entry is None:
                return None
            i = self.root_entry
        over = self.over.get(i)
        if over is not None:
            return over.xattrs
        return self.idx.entry(i).xattrs or None

    def content(self, i: int) -> Content | None:
        over = self.over.get(i)
        if over is not None:
            if over.type != "f":
                return None
            if over.data is not None:
                return Content(size=len(over.data), data=over.data)
            return Content(size=over.size, path=over.src, offset=over.offset, graft=self.k,
                           sparse=over.sparse)
        if i >= self.n or self.types[i] != _F:
            return None
        if self.cols is not None:
            size, offset = self.cols[3][i], self.cols[5][i]
        else:
            e = self.idx.entry(i)
            size, offset = e.size, e.offset
        return Content(size=size, path=self.idx.data_path(i), offset=offset, graft=self.k,
                       sparse=self.idx.sparse_map(i))


_NUMERIC = ("modes", "uids", "gids", "sizes", "mtimes", "offsets", "devmajors", "devminors",
            "link_ends")


def _numeric_columns(idx: TarIndex) -> tuple[Sequence[int], ...] | None:
    """The index's per-field arrays, when it has them: attributes without an IndexEntry.

    Reading the arrays directly halves the cost of a readdir against entry() objects.
    Anything unexpected falls back to entry().
    """
    columns = idx.columns()
    cols = tuple(getattr(columns, name) for name in _NUMERIC)
    n = len(idx)
    if any(not isinstance(c, array.array | memoryview) or len(c) != n for c in cols):
        return None
    return cols


def _name(blob: Blob, ends: Sequence[int], i: int, picked: dict[int, bytes] | None) -> bytes:
    """Entry i's path in the graft (a picked entry's own, else the index's)."""
    if picked is not None:
        return picked[i]
    return blob[ends[i - 1] if i else 0 : ends[i]]


def names_of(blob: Blob, ends: Sequence[int], ids: Iterable[int]) -> Iterator[bytes]:
    """The index names of the entries `ids`."""
    for i in ids:
        yield blob[ends[i - 1] if i else 0 : ends[i]]


def _members(n: int, total: int, picked: dict[int, bytes] | None, skip: set[int],
             dirs: dict[bytes, int]) -> Callable[[], Iterator[int]]:
    """The ids that take a place under a parent: entries not skipped, implied directories."""
    implied = sorted(d for d in dirs.values() if d > n)

    def members() -> Iterator[int]:
        base = picked if picked is not None else range(n)
        if skip:
            yield from (i for i in base if i not in skip)
        else:
            yield from base
        yield from implied

    return members


def _sorted_kids(group: array.array, base_of: Callable[[int], bytes],
                 hidden: set[int]) -> array.array:
    """A directory's children in name order; of several of one name the last entry wins (the
    highest id: implied directories never share a name with an entry)."""
    pairs = sorted(zip(map(base_of, group), group, strict=True))
    out = array.array("I")
    for k, (name, i) in enumerate(pairs):
        if k + 1 < len(pairs) and pairs[k + 1][0] == name:
            continue
        if i not in hidden:
            out.append(i)
    return out


# ------------------------------------------------------------------------------ synthetic
class SynNode:
    """A node of the tree that is not inside a graft (or where several sources meet)."""

    __slots__ = ("ino", "parent", "entry", "order", "children", "names", "inos", "pending",
                 "delegate", "gattr")

    def __init__(self, ino: int, parent: int, entry: Entry, order: int) -> None:
        self.ino = ino
        self.parent = parent
        self.entry = entry
        self.order = order  # position in the view of the entry that defined it; later wins
        self.children: dict[bytes, int] = {}
        self.names: list[bytes] | None = None  # sorted children, once settled
        self.inos: list[int] = []
        # Graft directories to merge in before the children are known: (order, graft, local).
        self.pending: list[tuple[int, int, int]] = []
        # When the children are exactly one graft directory's: (graft, alias, local).
        self.delegate: tuple[int, int, int] | None = None
        self.gattr: tuple[int, int] | None = None  # attributes from this graft entry instead

    @property
    def is_dir(self) -> bool:
        return self.entry.type == "d"


class GraftSlot:
    """One graft of the view and, once loaded, its arrays."""

    __slots__ = ("k", "graft", "order", "tree", "prefix_ino", "owners")

    def __init__(self, k: int, graft: Graft, order: int) -> None:
        self.k = k
        self.graft = graft
        self.order = order
        self.tree: GraftTree | None = None
        self.prefix_ino = ROOT_INO
        self.owners: dict[int, int] = {}  # alias -> synthetic node showing the graft's root


class Tree:
    """The whole tree of a view, with stable inode numbers for the life of the mount."""

    def __init__(self, view: View, expand: bool = False) -> None:
        root = SynNode(ROOT_INO, ROOT_INO, _IMPLICIT_DIR, -1)
        self.nodes: list[SynNode | None] = [None, root]
        self.by_path: dict[bytes, int] = {b"": ROOT_INO}
        self.grafts: list[GraftSlot] = []
        self.expand = expand
        self.changed: list[int] = []
        order = 0
        for item in view.items:
            # a kernel is several items here, so that its export loads on first access
            for part in item.parts() if isinstance(item, KernelImage) else (item,):
                if isinstance(part, Graft):
                    self._add_graft(order, part)
                else:
                    self._add_entry(order, part)
                order += 1
        if expand:
            for b in view.bundles:
                self._expand(b)
        self._settle_static()

    # -------------------------------------------------------------------------- building
    def _node(self, parent: int, entry: Entry, order: int) -> SynNode:
        node = SynNode(len(self.nodes), parent, entry, order)
        self.nodes.append(node)
        return node

    def _dir(self, parts: list[bytes]) -> SynNode:
        """The synthetic directory at parts, made (implicitly) if missing."""
        node = self.nodes[ROOT_INO]
        assert node is not None
        for depth, part in enumerate(parts):
            ino = node.children.get(part)
            child = self.nodes[ino] if ino is not None else None
            if child is None or not child.is_dir:
                child = self._node(node.ino, _IMPLICIT_DIR, -1)
                node.children[part] = child.ino
                self.by_path[b"/".join(parts[: depth + 1])] = child.ino
            node = child
        return node

    def _add_entry(self, order: int, e: Entry) -> None:
        parts = _split(e.path)
        if not parts:
            if e.type == "d":  # the root itself
                root = self.nodes[ROOT_INO]
                assert root is not None
                root.entry, root.order = e, order
            return
        if e.type == "h":
            target = self.by_path.get(b"/".join(_split(e.linkname)))
            node = self.nodes[target] if target is not None else None
            if node is None or node.is_dir:
                log.warning("%r: hard link to %r, which is not in the tree: left out",
                            e.path, e.linkname)
                return
            parent = self._dir(parts[:-1])
            parent.children[parts[-1]] = node.ino
            return
        parent = self._dir(parts[:-1])
        ino = parent.children.get(parts[-1])
        old = self.nodes[ino] if ino is not None else None
        if old is not None and old.is_dir and e.type == "d" and old.parent == parent.ino:
            old.entry, old.order = e, order  # the same directory again: later metadata wins
            return
        node = self._node(parent.ino, e, order)
        parent.children[parts[-1]] = node.ino
        self.by_path[b"/".join(parts)] = node.ino

    def _add_graft(self, order: int, g: Graft) -> None:
        k = len(self.grafts)
        if k >= MAX_GRAFTS:
            raise ValueError("too many images in one tree")
        slot = GraftSlot(k, g, order)
        self.grafts.append(slot)
        node = self._dir(_split(g.prefix))
        slot.prefix_ino = node.ino
        node.pending.append((order, k, -1))  # -1: the graft's root, known once it is loaded

    def _expand(self, b: Bundle) -> None:
        """Make the bundle's rootfs/ show its image (a new alias of the graft's directories)."""
        slot = next(s for s in self.grafts if s.graft is b.graft)
        rootfs = self.by_path.get(f"{b.path}/rootfs".encode())
        if rootfs is None or rootfs == slot.prefix_ino:
            return  # a readonly bundle holding the image: rootfs/ already is the graft
        node = self.nodes[rootfs]
        assert node is not None
        if node.children or node.pending:
            log.warning("%s/rootfs is not empty: not expanded", b.path)
            return
        alias = len(slot.owners) + 1
        if alias >= MAX_ALIASES:
            raise ValueError(f"too many bundles share the image of {b.path}")
        slot.owners[alias] = rootfs
        node.pending.append((slot.order, slot.k, -1))
        node.delegate = (slot.k, alias, -1)

    def _settle_static(self) -> None:
        """Sort the children of every directory no graft contributes to."""
        for node in self.nodes:
            if node is not None and not node.pending and node.names is None:
                self._sort(node)
        for slot in self.grafts:
            prefix = self.nodes[slot.prefix_ino]
            assert prefix is not None
            if len(prefix.pending) == 1 and not prefix.children and prefix.delegate is None:
                prefix.delegate = (slot.k, 0, -1)
                slot.owners[0] = prefix.ino

    def _sort(self, node: SynNode) -> None:
        node.names = sorted(node.children)
        node.inos = [node.children[n] for n in node.names]

    # -------------------------------------------------------------------------- grafts
    def pending(self, ino: int) -> list[int]:
        """Grafts that must be loaded before the children of `ino` can be listed."""
        if ino >= 1 << GRAFT_SHIFT:
            return []
        node = self.nodes[ino]
        if node is None or not node.pending:
            return []
        return [k for _, k, _ in node.pending if self.grafts[k].tree is None]

    def load_graft(self, k: int) -> None:
        """Index the graft's image (exporting it if needed) and build its arrays. Blocking."""
        slot = self.grafts[k]
        if slot.tree is None:
            slot.tree = GraftTree(k, slot.graft, slot.graft.image.index())

    def graft_owners(self, k: int) -> list[int]:
        """Synthetic nodes whose attributes change once graft k is loaded."""
        slot = self.grafts[k]
        return sorted({slot.prefix_ino, *slot.owners.values()})

    def loaded(self, k: int) -> bool:
        return self.grafts[k].tree is not None

    def image_key(self, k: int) -> str:
        """What loading graft k exports: grafts of one image share it."""
        g = self.grafts[k].graft
        info = getattr(g.image, "info", None)
        return getattr(info, "id", None) or f"graft-{k}"

    def _settle(self, node: SynNode) -> None:
        """Merge the graft directories of a node into its children (all loaded)."""
        if node.delegate is not None:
            k, alias, local = node.delegate
            tree = self.grafts[k].tree
            assert tree is not None
            if local < 0:
                node.delegate = (k, alias, tree.root)
                if tree.root_entry is not None:
                    node.gattr = (k, tree.root)
            node.pending = []
            return
        cands: dict[bytes, list[tuple[int, bool, int, int]]] = {}  # order, is_dir, k, ref
        for name, ino in node.children.items():
            child = self.nodes[ino]
            assert child is not None
            cands.setdefault(name, []).append((child.order, child.is_dir, -1, ino))
        best = (node.order, -1, -1)
        for order, k, local in node.pending:
            tree = self.grafts[k].tree
            assert tree is not None
            if local < 0:
                local = tree.root
                if tree.root_entry is not None and order > best[0]:
                    best = (order, k, local)
            elif order > best[0]:
                best = (order, k, local)
            for pos in range(tree.child_count(local)):
                name, i = tree.child(local, pos)
                cands.setdefault(name, []).append((order, tree.is_dir(i), k, i))
        if best[1] >= 0:
            node.gattr = (best[1], best[2])
        children: dict[bytes, int] = {}
        for name, found in cands.items():
            found.sort(key=lambda c: c[0])
            if len(found) > 1:
                self._hide(found)
            if not found[-1][1]:
                _, _, k, ref = found[-1]
                children[name] = ref if k < 0 else graft_ino(k, 0, ref)
                continue
            dirs = []
            for c in reversed(found):
                if not c[1]:
                    break
                dirs.append(c)
            dirs.reverse()
            if len(dirs) == 1:
                _, _, k, ref = dirs[0]
                children[name] = ref if k < 0 else graft_ino(k, 0, ref)
                continue
            syn = [c for c in dirs if c[2] < 0]
            if syn:
                merged = self.nodes[syn[-1][3]]
                assert merged is not None
            else:
                merged = self._node(node.ino, _IMPLICIT_DIR, -1)
            if merged.delegate is not None and merged.delegate[1] > 0:
                pass  # an expanded rootfs/ shows its container's root and nothing else
            else:
                merged.delegate = None  # a graft's top directory that more sources give
                merged.pending += [(o, k, ref) for o, _, k, ref in dirs if k >= 0]
            children[name] = merged.ino
        node.children = children
        node.pending = []
        self._sort(node)

    def _hide(self, found: list[tuple[int, bool, int, int]]) -> None:
        """Names a later source hides no longer count as links of their inode."""
        last_file = max((n for n, c in enumerate(found) if not c[1]), default=-1)
        keep = len(found) - 1 if not found[-1][1] else last_file + 1
        for n, (_, is_dir, k, ref) in enumerate(found):
            if n >= keep or is_dir or k < 0:
                continue
            tree = self.grafts[k].tree
            assert tree is not None
            count = tree.nlinks.get(ref)
            if count is not None and count > 1:
                tree.nlinks[ref] = count - 1
                self.changed.append(graft_ino(k, 0, ref))

    def take_changed(self) -> list[int]:
        """Inodes whose attributes changed since the last call (the kernel may cache them)."""
        out, self.changed = self.changed, []
        return out

    def _ready(self, node: SynNode) -> SynNode:
        if node.pending:
            if any(self.grafts[k].tree is None for _, k, _ in node.pending):
                raise LookupError("graft not loaded")  # callers check pending() first
            self._settle(node)
        return node

    # -------------------------------------------------------------------------- queries
    def _syn(self, ino: int) -> SynNode | None:
        if ino >= 1 << GRAFT_SHIFT or ino <= 0 or ino >= len(self.nodes):
            return None
        return self.nodes[ino]

    def _graft(self, ino: int) -> tuple[GraftTree, int, int] | None:
        k, alias, local = split_ino(ino)
        if not 0 <= k < len(self.grafts):
            return None
        tree = self.grafts[k].tree
        if tree is None or local >= len(tree.types):
            return None
        return tree, alias, local

    def stat(self, ino: int) -> Stat:
        """Attributes of a node; KeyError if there is no such inode."""
        node = self._syn(ino)
        if node is not None:
            if node.pending and all(self.grafts[k].tree is not None for _, k, _ in node.pending):
                self._settle(node)
            if node.gattr is not None:
                k, local = node.gattr
                tree = self.grafts[k].tree
                assert tree is not None
                st = tree.stat(local)
                if stat.S_ISDIR(st[0]):
                    return (st[0], 2 + self._subdirs(node), *st[2:])
                return st
            if node.is_dir:
                return _entry_stat(node.entry, 2 + self._subdirs(node))
            return _entry_stat(node.entry, 1)
        g = self._graft(ino)
        if g is None:
            raise KeyError(ino)
        tree, _, local = g
        return tree.stat(local)

    def _subdirs(self, node: SynNode) -> int:
        if node.delegate is not None:
            k, _, local = node.delegate
            tree = self.grafts[k].tree
            return tree.nsub[tree.root] if tree is not None else 0
        if node.pending:
            return 0
        n = 0
        for ino in node.inos:
            if ino >= 1 << GRAFT_SHIFT:
                g = self._graft(ino)
                if g is not None and g[0].types[g[2]] == _D:
                    n += 1
            else:
                child = self.nodes[ino]
                if child is not None and child.is_dir and child.parent == node.ino:
                    n += 1
        return n

    def is_dir(self, ino: int) -> bool:
        node = self._syn(ino)
        if node is not None:
            return node.is_dir
        g = self._graft(ino)
        return g is not None and g[0].types[g[2]] == _D

    def lookup(self, parent: int, name: bytes) -> int | None:
        """The inode of `name` in directory `parent`, or None (pending grafts loaded first)."""
        node = self._syn(parent)
        if node is not None:
            if not node.is_dir:
                return None
            self._ready(node)
            if node.delegate is not None:
                k, alias, local = node.delegate
                return self._in_graft(k, alias, local, name)
            return node.children.get(name)
        g = self._graft(parent)
        if g is None:
            return None
        tree, alias, local = g
        return self._in_graft(tree.k, alias, local, name)

    def _in_graft(self, k: int, alias: int, d: int, name: bytes) -> int | None:
        tree = self.grafts[k].tree
        assert tree is not None
        i = tree.find(d, name)
        if i is None:
            return None
        return graft_ino(k, alias if tree.types[i] == _D else 0, i)

    def listdir(self, ino: int) -> DirListing:
        """The children of a directory in name order (pending grafts loaded first)."""
        node = self._syn(ino)
        if node is not None:
            self._ready(node)
            if node.delegate is not None:
                k, alias, local = node.delegate
                return DirListing(self, ino, node.parent, None, None, k, alias, local)
            assert node.names is not None
            return DirListing(self, ino, node.parent, node.names, node.inos)
        g = self._graft(ino)
        if g is None:
            raise KeyError(ino)
        tree, alias, local = g
        return DirListing(self, ino, self._graft_parent(tree, alias, local), None, None,
                          tree.k, alias, local)

    def _graft_parent(self, tree: GraftTree, alias: int, local: int) -> int:
        p = tree.parent[local] if local < len(tree.parent) else tree.root
        if p == tree.root:
            return self.grafts[tree.k].owners.get(alias, self.grafts[tree.k].prefix_ino)
        return graft_ino(tree.k, alias, p)

    def _renderer(self, ino: int) -> tuple[SynNode | None, GraftTree | None, int]:
        """What shows `ino`: (node, None, 0) for a synthetic node's own entry, (None, tree,
        local) for a graft entry (also one a synthetic node stands for), and (None, None, 0)
        for an unknown inode or a graft not loaded yet."""
        node = self._syn(ino)
        if node is not None:
            if node.gattr is None:
                return node, None, 0
            k, local = node.gattr
            return None, self.grafts[k].tree, local
        g = self._graft(ino)
        return (None, g[0], g[2]) if g is not None else (None, None, 0)

    def readlink(self, ino: int) -> bytes | None:
        node, tree, local = self._renderer(ino)
        if tree is not None:
            return tree.readlink(local)
        if node is not None and node.entry.type == "l":
            return node.entry.linkname
        return None

    def xattrs(self, ino: int) -> Mapping[str, bytes] | None:
        node, tree, local = self._renderer(ino)
        if tree is not None:
            return tree.xattrs(local)
        return node.entry.xattrs if node is not None else None

    def content(self, ino: int) -> Content | None:
        """Where a regular file's bytes are; None for anything else."""
        node, tree, local = self._renderer(ino)
        if tree is not None:
            return tree.content(local)
        if node is None or node.entry.type != "f":
            return None
        e = node.entry
        if e.data is not None:
            return Content(size=len(e.data), data=e.data)
        if e.src is not None:
            return Content(size=e.size, path=e.src, offset=e.offset)
        return Content(size=0, data=b"")

    def counts(self) -> tuple[int, int]:
        """(inodes, bytes) known so far, for statfs."""
        files = len(self.nodes) - 1
        size = 0
        for node in self.nodes:
            if node is not None and node.entry.type == "f":
                size += node.entry.size
        for slot in self.grafts:
            if slot.tree is not None:
                files += len(slot.tree.types)
                size += slot.tree.size
        return files, size

    def verify(self, k: int) -> bool:
        """True while graft k's tar is the one that was indexed."""
        tree = self.grafts[k].tree
        return tree is not None and tree.idx.verify_unchanged()


class DirListing:
    """The children of one directory, by position: what readdir pages through."""

    __slots__ = ("tree", "ino", "parent", "names", "inos", "k", "alias", "local")

    def __init__(self, tree: Tree, ino: int, parent: int, names: Sequence[bytes] | None,
                 inos: Sequence[int] | None, k: int = -1, alias: int = 0,
                 local: int = 0) -> None:
        self.tree = tree
        self.ino = ino
        self.parent = parent
        self.names = names
        self.inos = inos
        self.k = k
        self.alias = alias
        self.local = local

    def __len__(self) -> int:
        if self.names is not None:
            return len(self.names)
        gt = self.tree.grafts[self.k].tree
        assert gt is not None
        return gt.child_count(self.local)

    def rows(self, first: int) -> Iterator[tuple[bytes, int, Stat]]:
        """(name, inode, attributes) of the children from position `first` on."""
        if self.names is None:
            gt = self.tree.grafts[self.k].tree
            assert gt is not None
            yield from gt.rows(self.local, first, self.k, self.alias)
            return
        assert self.inos is not None
        for pos in range(first, len(self.names)):
            yield self.names[pos], self.inos[pos], self.tree.stat(self.inos[pos])

    def __getitem__(self, pos: int) -> tuple[bytes, int]:
        if self.names is not None:
            assert self.inos is not None
            return self.names[pos], self.inos[pos]
        gt = self.tree.grafts[self.k].tree
        assert gt is not None
        name, i = gt.child(self.local, pos)
        return name, graft_ino(self.k, self.alias if gt.types[i] == _D else 0, i)
