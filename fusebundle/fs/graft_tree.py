"""One graft's arrays: the filtered export of an image as parent, type, basename and sorted
children per directory, built in one pass over the image's index and saved beside it.

Its inodes are ``(graft + 1) << 48 | alias << 32 | local`` (`inode.graft_ino`), where ``local``
is the entry's position in the index (its root and any directory the tar only implies come
after the entries).  The filter only ever touches a few names at the image root and hard links
to them: those entries are run through it and kept as `Entry` overrides, every other entry is
rendered straight from the index's columns.
"""

from __future__ import annotations

import array
import json
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, chain

from fusebundle.bundle import Entry
from fusebundle.bundle.view import (
    DOCKER_CREATED,
    EXCLUDE,
    REPLACE,
    Graft,
    filter_entry,
)
from fusebundle.fs.inode import (
    IMPLICIT_DIR,
    TYPE_BITS,
    Stat,
    entry_stat,
    graft_ino,
)
from fusebundle.tar import Extent, Stamp, TarIndex, colfile
from fusebundle.tar.header import TYPE_D, TYPE_DEVICES, TYPE_F, TYPE_H, TYPE_L
from fusebundle.tar.index import DROP_EVERY_ENTRIES, Blob, of_type

log = logging.getLogger(__name__)

_DROP_MASK = DROP_EVERY_ENTRIES - 1  # the build's passes let the index's pages go this often

# Of the arrays saved beside an index; bump when _build changes.  1: JSON head and blobs read
# into the heap; 2: laid out to be mapped (colfile), kid_hi gone (kid_lo[d + 1] is its end).
_TREE_FORMAT = 2
_TREE_MAGIC = b"FBTREE"

# Index entries the filter may change: names at the image root, and hard links to dropped names.
_SPECIAL = frozenset(EXCLUDE | set(REPLACE) | DOCKER_CREATED)

# ------------------------------------------------------------------------------ graft arrays
class GraftTree:
    """One graft's filtered export as arrays: the structure, never a Python object per entry.

    Local ids: 0..n-1 are index entries, `root` (= n) is the graft's top directory and ids
    after it are directories the tar implies without listing them.
    """

    __slots__ = (
        "k", "graft", "idx", "n", "root", "root_entry", "types", "parent", "name_off",
        "names", "kid_lo", "kids", "nsub", "links", "nlinks", "over", "size",
        "cols", "_kinds", "_runs",
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
        self._kinds: bytes | None = None  # see columns_run
        self._runs: dict[int, tuple[object, ...]] = {}  # alias -> columns_run's arrays
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

    def _key(self) -> list[int]:
        """What the saved arrays are for: the tar's stamp and its entry count (a JSON list)."""
        return [*Stamp.of_path(self.idx.tar_path), self.n]

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
            meta = json.dumps({"stat": self._key(), "root_entry": self.root_entry}).encode()
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
            if head.get("stat") != self._key() or not self.idx.verify_unchanged():
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
        """The arrays, in passes over the index: the filter and directory names, hard links,
        parents, implied directories, children, each id's own name."""
        w = self._start()
        last = self._filter_pass(w)
        self._link_pass(w, last)
        parent, loose = self._parent_pass(w)
        orphans = self._implied_pass(w, parent, loose)
        total = len(w.types)
        self.types = bytes(w.types)
        w.types = bytearray()
        base_of = self._base_namer(w.blob, w.ends, w.picked, w.dirs, self.n)
        self._child_pass(w, parent, w.gone | orphans, total, base_of)
        # Each id's own name, for the listing (empty for entries not in the tree).
        names_blob = bytearray()
        name_off = array.array("I", [0])
        for i in range(total):
            names_blob += base_of(i)
            name_off.append(len(names_blob))
            if not ~i & _DROP_MASK:
                w.drop()
        self.parent = parent
        self.names, self.name_off = bytes(names_blob), name_off

    def _start(self) -> _Work:
        """The types (the filter may change a few), hard links and the reference's pick."""
        idx, g = self.idx, self.graft
        c = idx.columns()
        w = _Work(bytearray(c.types), c.names, c.name_ends, drop=idx.drop_pages)
        types, links = w.types, w.links
        for pos in of_type(types, TYPE_H):
            s = c.link_ends[pos - 1] if pos else 0
            links[pos] = c.links[s : c.link_ends[pos]]
        if g.pick is not None:
            w.picked = {}
            for i, out in g.pick(idx).items():
                self.over[i] = out
                types[i] = ord(out.type)
                links.pop(i, None)
                w.picked[i] = out.path[len(g.prefix):]
            w.links = {}
        return w

    def _filter_pass(self, w: _Work) -> dict[bytes, int]:
        """Pass 1: the filter, the root's own entry, and the last entry of each directory name
        (a directory a later non-directory replaces is no directory, and the reverse); the
        last entry of each name hard links need."""
        idx, g, types, links, gone, dirs = self.idx, self.graft, w.types, w.links, w.gone, w.dirs
        over, special = self.over, _SPECIAL if w.picked is None else frozenset()
        tracked = {*links.values(), *(names_of(w.blob, w.ends, links))} if links else set()
        last: dict[bytes, int] = {}
        for i, name in w.names():
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
                if types[i] == TYPE_D:
                    self.root_entry = i
                gone.add(i)
                continue
            if types[i] == TYPE_D:
                dirs[name] = i
            elif name in dirs:
                del dirs[name]
            if name in tracked:
                last[name] = i
        return last

    def _link_pass(self, w: _Work, last: dict[bytes, int]) -> None:
        """Hard links: each is the inode of the entry it names (after following link chains);
        one to a missing entry is hidden, as if the tar had no such entry."""
        types, links, blob, ends, picked = w.types, w.links, w.blob, w.ends, w.picked
        for i, target in links.items():
            if types[i] != TYPE_H or last.get(_name(blob, ends, i, picked)) != i:
                continue
            hops = 0
            t = last.get(target)
            while t is not None and types[t] == TYPE_H and hops < 64:
                t = last.get(links[t]) if t in links else None
                hops += 1
            if t is None or types[t] in (TYPE_H, TYPE_D):
                log.debug("%s: hard link %r to a missing entry %r: left out", self.idx.tar_path,
                          _name(blob, ends, i, picked), target)
                w.hidden.add(i)  # and its name shows nothing, as if the tar had no such entry
                continue
            self.links[i] = t
            self.nlinks[t] = self.nlinks.get(t, 1) + 1

    def _parent_pass(self, w: _Work) -> tuple[array.array, list[int]]:
        """Pass 2: the parent of every entry; names under no directory entry (loose) wait for
        pass 3."""
        root, dirs, gone = self.root, w.dirs, w.gone
        parent = array.array("I", [root]) * (self.n + 1)
        loose: list[int] = []
        for i, name in w.names():
            slash = name.rfind(b"/")
            if slash < 0:
                continue  # at the root (or dropped: its parent does not matter)
            p = dirs.get(name[:slash])
            if p is None:
                if i not in gone:
                    loose.append(i)
                continue
            parent[i] = p
        return parent, loose

    def _implied_pass(self, w: _Work, parent: array.array, loose: list[int]) -> set[int]:
        """Pass 3: the directories the tar only implies, unless a non-directory has the name;
        the entries below a non-directory (not reachable)."""
        types, dirs, root = w.types, w.dirs, self.root
        types.append(TYPE_D)  # the root
        orphans: set[int] = set()
        if not loose:
            return orphans
        implied: set[bytes] = set()
        for i in loose:
            path = _name(w.blob, w.ends, i, w.picked)
            path = path[: path.rfind(b"/")]
            while path and path not in dirs and path not in implied:
                implied.add(path)
                path = path[: max(path.rfind(b"/"), 0)]
        blocked = {name for i, name in w.names()
                   if name in implied and i not in w.gone and i not in w.hidden}
        for path in sorted(implied, key=lambda x: x.count(b"/")):
            if path in blocked:
                continue
            top = path.rfind(b"/")
            if top >= 0 and path[:top] not in dirs:
                continue  # below a blocked name
            d = len(types)
            types.append(TYPE_D)
            dirs[path] = d
            parent.append(root if top < 0 else dirs[path[:top]])
        for i in loose:
            name = _name(w.blob, w.ends, i, w.picked)
            p = dirs.get(name[: name.rfind(b"/")])
            if p is None:
                orphans.add(i)
            else:
                parent[i] = p
        # Loose names lie all over the index, and a fault maps the pages around each one too
        # (64 KiB): a few hundred of them bring in the whole blob.
        w.drop()
        return orphans

    def _child_pass(self, w: _Work, parent: array.array, skip: set[int], total: int,
                    base_of: Callable[[int], bytes]) -> None:
        """Children: grouped by parent (a counting sort), then each group sorted by name, the
        last entry of a name winning.  Ids of implied directories come after the entries."""
        counts = array.array("I", bytes(4 * (total + 1)))
        members = _members(self.n, total, w.picked, skip, w.dirs)
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
        hidden = w.hidden
        kids = array.array("I")
        kid_lo = array.array("I", bytes(4 * (total + 1)))
        nsub = array.array("I", bytes(4 * total))
        tp = self.types
        resolved = self.links
        for p in range(total):
            lo, hi = starts[p], starts[p + 1]
            kid_lo[p] = len(kids)
            if not ~p & _DROP_MASK:
                w.drop()  # the groups' names read in parent order: near each other
            if lo == hi:
                continue
            group = grouped[lo:hi]
            if hi - lo > 1:
                group = _sorted_kids(group, base_of, hidden)
            elif group[0] in hidden:
                continue
            kids.extend(group)
            for i in group:
                if tp[resolved.get(i, i)] == TYPE_D:
                    nsub[p] += 1
        kid_lo[total] = len(kids)
        w.drop()
        self.kids, self.kid_lo, self.nsub = kids, kid_lo, nsub

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
        return self.types[self.links.get(i, i)] == TYPE_D

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
            if cols is None or i >= n or i in over or (t != TYPE_F and t != TYPE_D):
                yield name, (dirs if t == TYPE_D else files) | i, self.stat(i)
            elif t == TYPE_F:
                yield name, files | i, (stat.S_IFREG | modes[i], nlinks.get(i, 1), uids[i],
                                        gids[i], 0, sizes[i], mtimes[i])
            else:
                yield name, dirs | i, (stat.S_IFDIR | modes[i], 2 + nsub[i], uids[i], gids[i],
                                       0, 0, mtimes[i])

    def columns_run(self, d: int, k: int, alias: int) -> ColumnsRun | None:
        """Directory d's children as the arrays `pyfuse3.readdir_reply_columns` reads, or None
        without the index's columns.  What rows() answers from the columns, it renders alike."""
        arrays = self._runs.get(alias)
        if arrays is None:
            cols = self.cols
            if cols is None:
                return None
            if self._kinds is None:
                self._kinds = self._plain_kinds()
            modes, uids, gids, sizes, mtimes = cols[:5]
            arrays = (self.kids, self.name_off, self.names, self._kinds, modes, uids, gids,
                      sizes, mtimes, self.nsub, graft_ino(k, 0, 0), graft_ino(k, alias, 0))
            self._runs[alias] = arrays
        return self.kid_lo[d], self.kid_lo[d + 1], arrays

    def _plain_kinds(self) -> bytes:
        """Per id: 1 a plain file, 2 a plain directory, 0 what rows() renders through stat():
        other types, hard links, files of several names, overrides, ids of no index entry."""
        table = bytearray(256)
        table[TYPE_F], table[TYPE_D] = 1, 2
        kinds = bytearray(self.types.translate(table))
        kinds[self.n :] = bytes(len(kinds) - self.n)
        for i in chain(self.links, self.nlinks, self.over):
            kinds[i] = 0
        return bytes(kinds)

    def stat(self, i: int) -> Stat:
        if i >= self.n:
            nlink = 2 + self.nsub[i]
            if i == self.root and self.root_entry is not None:
                st = self.stat(self.root_entry)
                return (st[0], nlink, *st[2:])
            return entry_stat(IMPLICIT_DIR, nlink)
        over = self.over.get(i)
        if over is not None:
            return entry_stat(over, self._nlink(i))
        cols = self.cols
        if cols is not None:
            modes, uids, gids, sizes, mtimes, _, majors, minors, lends = cols
            t = self.types[i]
            if t == TYPE_F:
                return (stat.S_IFREG | modes[i], self.nlinks.get(i, 1), uids[i], gids[i], 0,
                        sizes[i], mtimes[i])
            if t == TYPE_D:
                return (stat.S_IFDIR | modes[i], 2 + self.nsub[i], uids[i], gids[i], 0, 0,
                        mtimes[i])
            if t == TYPE_L:
                size = lends[i] - (lends[i - 1] if i else 0)
                return (stat.S_IFLNK | modes[i], self.nlinks.get(i, 1), uids[i], gids[i], 0,
                        size, mtimes[i])
            rdev = os.makedev(majors[i], minors[i]) if t in TYPE_DEVICES else 0
            return (TYPE_BITS[chr(t)] | modes[i], self.nlinks.get(i, 1), uids[i], gids[i],
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
        return (TYPE_BITS[t] | e.mode, self.nlinks.get(i, 1), e.uid, e.gid, rdev, 0,
                e.mtime_ns)

    def _nlink(self, i: int) -> int:
        return 2 + self.nsub[i] if self.types[i] == TYPE_D else self.nlinks.get(i, 1)

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

    def content(self, i: int) -> Extent | bytes | None:
        """Where regular file i's bytes are; None for anything else."""
        over = self.over.get(i)
        if over is not None:
            return (over.body if over.body is not None else b"") if over.type == "f" else None
        if i >= self.n or self.types[i] != TYPE_F:
            return None
        idx = self.idx
        if self.cols is not None:
            return Extent(idx.source(idx.data_path(i)), self.cols[5][i], self.cols[3][i],
                          idx.sparse_map(i))
        return idx.extent(i)


# (first, end) positions in kids, then the arguments of readdir_reply_columns from ids to dir_ino.
ColumnsRun = tuple[int, int, tuple[object, ...]]

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


@dataclass(slots=True)
class _Work:
    """What the passes of GraftTree._build hand each other."""

    types: bytearray  # one type code per id (the filter may change a few)
    blob: Blob  # the index's names
    ends: Sequence[int]
    picked: dict[int, bytes] | None = None  # the reference's pick: id -> path in the graft
    links: dict[int, bytes] = field(default_factory=dict)  # hard link -> its target's name
    gone: set[int] = field(default_factory=set)  # not in the tree: filtered, the root's own
    hidden: set[int] = field(default_factory=set)  # broken hard links: their name shows nothing
    dirs: dict[bytes, int] = field(default_factory=dict)  # directory path -> its id
    drop: Callable[[], None] = lambda: None  # lets the index's mapped pages go

    def names(self) -> Iterator[tuple[int, bytes]]:
        """(id, path in the graft) of every entry, in index order (a pick's in id order); the
        index's pages let go every DROP_EVERY_ENTRIES, as pack's walk does (each pass reads
        every name: at 1M entries they would all stay ours, 30 MB, until the build ends)."""
        if self.picked is not None:
            return iter(sorted(self.picked.items()))
        return chain.from_iterable(self._chunks())  # each chunk iterated in C, as before

    def _chunks(self) -> Iterator[Iterator[tuple[int, bytes]]]:
        ends, blob, step = self.ends, self.blob, DROP_EVERY_ENTRIES
        for lo in range(0, len(ends), step):
            if lo:
                self.drop()  # the chunk before is done with
            hi = min(lo + step, len(ends))
            starts = chain((ends[lo - 1] if lo else 0,), ends[lo : hi - 1])
            yield enumerate(map(blob.__getitem__, map(slice, starts, ends[lo:hi])), lo)
        self.drop()


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
