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

import logging
import stat
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

from fusebundle.bundle import Entry, View
from fusebundle.bundle.view import Bundle, Graft, KernelImage
from fusebundle.fs.graft_tree import ColumnsRun, GraftTree
from fusebundle.fs.inode import (
    GRAFT_SHIFT,
    IMPLICIT_DIR,
    MAX_ALIASES,
    MAX_GRAFTS,
    ROOT_INO,
    Stat,
    entry_stat,
    graft_ino,
    path_parts,
    split_ino,
)
from fusebundle.tar import Extent
from fusebundle.tar.header import TYPE_D

log = logging.getLogger(__name__)

ROOT_UNKNOWN = -1  # a graft directory's position before its graft is loaded: the graft's root
SYNTHETIC = -1  # the graft of a candidate that is a synthetic node (its ref is an inode)


class GraftDir(NamedTuple):
    """A graft directory merged into a synthetic one: the order of its item in the view
    (later wins a name), its graft, and its position there."""

    order: int
    k: int
    local: int  # ROOT_UNKNOWN until the graft is loaded


class GraftPlace(NamedTuple):
    """A directory of graft k as one alias (--expand) shows it."""

    k: int
    alias: int
    local: int  # ROOT_UNKNOWN until the graft is loaded


class GraftAttr(NamedTuple):
    """The graft entry whose attributes a synthetic node shows."""

    k: int
    local: int


class Candidate(NamedTuple):
    """One source's child of a name while a directory's sources are merged."""

    order: int
    is_dir: bool
    k: int  # SYNTHETIC, or the graft
    ref: int  # the inode of a synthetic node, else the position in graft k


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
        self.pending: list[GraftDir] = []  # graft directories to merge in before listing
        # When the children are exactly one graft directory's.
        self.delegate: GraftPlace | None = None
        self.gattr: GraftAttr | None = None  # attributes from this graft entry instead

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
        root = SynNode(ROOT_INO, ROOT_INO, IMPLICIT_DIR, -1)
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
                child = self._node(node.ino, IMPLICIT_DIR, -1)
                node.children[part] = child.ino
                self.by_path[b"/".join(parts[: depth + 1])] = child.ino
            node = child
        return node

    def _add_entry(self, order: int, e: Entry) -> None:
        parts = path_parts(e.path)
        if not parts:
            if e.type == "d":  # the root itself
                root = self.nodes[ROOT_INO]
                assert root is not None
                root.entry, root.order = e, order
            return
        if e.type == "h":
            target = self.by_path.get(b"/".join(path_parts(e.linkname)))
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
        node = self._dir(path_parts(g.prefix))
        slot.prefix_ino = node.ino
        node.pending.append(GraftDir(order, k, ROOT_UNKNOWN))

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
        node.pending.append(GraftDir(slot.order, slot.k, ROOT_UNKNOWN))
        node.delegate = GraftPlace(slot.k, alias, ROOT_UNKNOWN)

    def _settle_static(self) -> None:
        """Sort the children of every directory no graft contributes to."""
        for node in self.nodes:
            if node is not None and not node.pending and node.names is None:
                self._sort(node)
        for slot in self.grafts:
            prefix = self.nodes[slot.prefix_ino]
            assert prefix is not None
            if len(prefix.pending) == 1 and not prefix.children and prefix.delegate is None:
                prefix.delegate = GraftPlace(slot.k, 0, ROOT_UNKNOWN)
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
        return [d.k for d in node.pending if self.grafts[d.k].tree is None]

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
            if local == ROOT_UNKNOWN:
                node.delegate = GraftPlace(k, alias, tree.root)
                if tree.root_entry is not None:
                    node.gattr = GraftAttr(k, tree.root)
            node.pending = []
            return
        cands: dict[bytes, list[Candidate]] = {}
        for name, ino in node.children.items():
            child = self.nodes[ino]
            assert child is not None
            cands.setdefault(name, []).append(Candidate(child.order, child.is_dir, SYNTHETIC,
                                                        ino))
        best_order, best = node.order, None  # the latest source that gives the node's entry
        for order, k, local in node.pending:
            tree = self.grafts[k].tree
            assert tree is not None
            if local == ROOT_UNKNOWN:
                local = tree.root
                if tree.root_entry is not None and order > best_order:
                    best_order, best = order, GraftAttr(k, local)
            elif order > best_order:
                best_order, best = order, GraftAttr(k, local)
            for pos in range(tree.child_count(local)):
                name, i = tree.child(local, pos)
                cands.setdefault(name, []).append(Candidate(order, tree.is_dir(i), k, i))
        if best is not None:
            node.gattr = best
        children: dict[bytes, int] = {}
        for name, found in cands.items():
            found.sort(key=lambda c: c.order)
            if len(found) > 1:
                self._hide(found)
            if not found[-1].is_dir:
                children[name] = _child_ino(found[-1])
                continue
            dirs = []
            for c in reversed(found):
                if not c.is_dir:
                    break
                dirs.append(c)
            dirs.reverse()
            if len(dirs) == 1:
                children[name] = _child_ino(dirs[0])
                continue
            syn = [c for c in dirs if c.k == SYNTHETIC]
            if syn:
                merged = self.nodes[syn[-1].ref]
                assert merged is not None
            else:
                merged = self._node(node.ino, IMPLICIT_DIR, -1)
            if merged.delegate is not None and merged.delegate.alias > 0:
                pass  # an expanded rootfs/ shows its container's root and nothing else
            else:
                merged.delegate = None  # a graft's top directory that more sources give
                merged.pending += [GraftDir(c.order, c.k, c.ref) for c in dirs
                                   if c.k != SYNTHETIC]
            children[name] = merged.ino
        node.children = children
        node.pending = []
        self._sort(node)

    def _hide(self, found: list[Candidate]) -> None:
        """Names a later source hides no longer count as links of their inode."""
        last_file = max((n for n, c in enumerate(found) if not c.is_dir), default=-1)
        keep = len(found) - 1 if not found[-1].is_dir else last_file + 1
        for n, (_, is_dir, k, ref) in enumerate(found):
            if n >= keep or is_dir or k == SYNTHETIC:
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
            if any(self.grafts[d.k].tree is None for d in node.pending):
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
            if node.pending and all(self.grafts[d.k].tree is not None for d in node.pending):
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
                return entry_stat(node.entry, 2 + self._subdirs(node))
            return entry_stat(node.entry, 1)
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
                if g is not None and g[0].types[g[2]] == TYPE_D:
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
        return g is not None and g[0].types[g[2]] == TYPE_D

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
        return graft_ino(k, alias if tree.types[i] == TYPE_D else 0, i)

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

    def content(self, ino: int) -> Extent | bytes | None:
        """Where a regular file's bytes are; None for anything else."""
        node, tree, local = self._renderer(ino)
        if tree is not None:
            return tree.content(local)
        if node is None or node.entry.type != "f":
            return None
        body = node.entry.body
        return body if body is not None else b""

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


def _child_ino(c: Candidate) -> int:
    return c.ref if c.k == SYNTHETIC else graft_ino(c.k, 0, c.ref)


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

    def columns_run(self) -> ColumnsRun | None:
        """The children as arrays for pyfuse3.readdir_reply_columns (a graft directory whose
        index has columns), else None: rows() then renders them."""
        if self.names is not None:
            return None
        gt = self.tree.grafts[self.k].tree
        assert gt is not None
        return gt.columns_run(self.local, self.k, self.alias)

    def __getitem__(self, pos: int) -> tuple[bytes, int]:
        if self.names is not None:
            assert self.inos is not None
            return self.names[pos], self.inos[pos]
        gt = self.tree.grafts[self.k].tree
        assert gt is not None
        name, i = gt.child(self.local, pos)
        return name, graft_ino(self.k, self.alias if gt.types[i] == TYPE_D else 0, i)
