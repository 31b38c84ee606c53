"""Layers applied one over another: the state of a merge of an image's layer indexes.

The layers are applied bottom to top by the OCI rules (whiteouts and opaque markers hide only
lower layers; a directory replaced by a file takes its subtree with it; hard links follow their
target), then docker's init layer, and the survivors are put in docker's walk order. Working
state is one dict (path -> entry ordinal) plus a few small dicts for the rare cases. `flatten`
turns the result into a merged index.
"""

from __future__ import annotations

import array
from bisect import bisect_right, insort
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import NamedTuple

from fusebundle.errors import CorruptTar
from fusebundle.tar.header import TYPE_D, TYPE_F, TYPE_H, TYPE_L
from fusebundle.tar.index import TarIndex, of_type

NO_LAYER = 0xFFFF  # provenance of an entry no layer has a header for (an implied directory)
# A whiteout hides NAME of the layers below as a file .wh.NAME (the OCI image spec's layer
# "Whiteouts"; aufs's spelling, kept by docker).
WHITEOUT = b".wh."
_OPAQUE = b".wh..wh..opq"
_AUFS_META = b".wh..wh."  # AUFS bookkeeping (.wh..wh.plnk, ...): never shown, never a rule
# A directory only its children imply is in cur[] as -2 - (the ordinal of the child that
# implied it): negative, and still datable against whiteouts above it.
_IMPLIED = -2
SECOND_NS = 1_000_000_000  # a second in ns: docker's export keeps whole seconds of mtimes
# Paths are kept with NUL for '/' while merging: NUL sorts below every byte a name can hold,
# so a plain sort of the paths is docker's walk (pre-order, each directory's names sorted as
# bytes), with no sort key to build.
SEP = b"\x00"
# File capabilities' xattr (capabilities(7)): the one xattr docker's export keeps.
CAP_XATTR = "security.capability"
# The mtime docker's own entries get in a reproducible tree (linuxkit's later default,
# 2017-04-18T16:30Z): the init layer's here, and the view's DOCKER_CREATED entries.
PINNED_MTIME_NS = 1492533000 * SECOND_NS

# docker's initlayer.Setup: (path, kind); kind b"d" dir, b"f" empty file, else the target of
# a symlink.  Each path's components that are not directories are removed first.
_INIT = tuple((path.replace(b"/", SEP), kind) for path, kind in (
    (b"dev/pts", b"d"), (b"dev/shm", b"d"), (b"proc", b"d"), (b"sys", b"d"),
    (b".dockerenv", b"f"), (b"etc/resolv.conf", b"f"), (b"etc/hosts", b"f"),
    (b"etc/hostname", b"f"), (b"dev/console", b"f"), (b"etc/mtab", b"/proc/mounts"),
))  # fmt: skip
_TOUCHED = (b"dev", b"etc")  # directories the init layer writes into: mtime = creation


class _Synthetic:
    """Entries no layer has (implicit directories, the init layer): extra ordinals."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.types = bytearray()
        self.rows: list[tuple[int, int, int, int]] = []  # mode, uid, gid, mtime_ns
        self.links: dict[int, bytes] = {}  # ordinal -> symlink target
        self.like: dict[int, int] = {}  # ordinal -> layer ordinal whose xattrs it keeps

    def add(self, code: int, mode: int, mtime_ns: int = PINNED_MTIME_NS, uid: int = 0,
            gid: int = 0) -> int:
        self.types.append(code)
        self.rows.append((mode, uid, gid, mtime_ns))
        return self.base + len(self.rows) - 1


def split_blob(blob: bytes, ends: Sequence[int]) -> list[bytes]:
    """The names in a column blob, cut at their end offsets."""
    starts = [0, *ends[:-1]] if len(ends) else []
    return [blob[s:e] for s, e in zip(starts, ends, strict=True)]


def _parent(path: bytes) -> bytes:
    return path[: max(path.rfind(SEP), 0)]


def _show(name: bytes) -> str:
    return repr(name.replace(SEP, b"/").decode("utf-8", "backslashreplace"))


class Walk(NamedTuple):
    """The flattened tree in docker's walk order: every entry's name ('/'-separated, in one
    blob) and its ordinal (a layer entry, or a synthetic one at or above the layers' count)."""

    names: bytes
    name_ends: array.array[int]
    ino: array.array[int]


# The paths docker's init layer looks at (each _INIT path and its parents): all the one-layer
# walk needs to keep by name.
INIT_PATHS = frozenset(
    SEP.join(path.split(SEP)[:n]) for path, _ in _INIT for n in range(1, path.count(SEP) + 2)
)


class Merge:
    """One merge: the layers, the state while applying them, and the messages."""

    def __init__(self, layers: Sequence[TarIndex], digests: Sequence[str], what: str,
                 docker: bool = True) -> None:
        if len(layers) != len(digests):
            raise ValueError("one digest per layer")
        self.layers, self.digests, self.what = layers, digests, what
        self.docker = docker  # docker's export (init layer, pinned and truncated mtimes)
        self.bases = list(accumulate((len(x) for x in layers), initial=0))
        self.types = bytearray(b"".join(x.columns().types for x in layers))
        self.cur: dict[bytes, int] = {}
        # path -> ordinal: entries below path older than it are gone (whiteout, opaque marker,
        # a non-directory replacing a directory).  Applied lazily, see _alive.
        self.kill: dict[bytes, int] = {}
        self.link_ino: dict[int, int] = {}  # hard-link ordinal -> the entry that is the inode
        self.meta: dict[int, int] = {}  # inode -> ordinal of the last header applied to it
        self.syn = _Synthetic(self.bases[-1])
        self.suspects: list[int] = []  # entries registered below a non-directory

    # -- messages ---------------------------------------------------------------------------
    def fail(self, layer: int, name: bytes, why: str) -> CorruptTar:
        return CorruptTar(f"image {self.what}: layer {self.digests[layer]}: entry {_show(name)}: "
                          f"{why}")

    def layer_of(self, o: int) -> int:
        return bisect_right(self.bases, o) - 1

    # -- state ------------------------------------------------------------------------------
    def _alive(self, path: bytes, o: int) -> bool:
        """False if a whiteout or replacement above `o` removed one of its directories."""
        kill = self.kill
        while path:
            path = _parent(path)
            k = kill.get(path)
            if k is not None and k > o:
                return False
        return True

    def _is_dir(self, o: int) -> bool:
        return o < 0 or self._kind(o) == TYPE_D

    def apply(self, layer: int) -> None:
        """Apply one layer: its whiteouts to what is below, then its entries in tar order."""
        idx = self.layers[layer]
        c = idx.columns()
        names = split_blob(_blob(c.names).replace(b"/", SEP), c.name_ends)
        base = self.bases[layer]
        if c.names.find(b"..") >= 0 or c.links.find(b"..") >= 0:
            self._check_names(layer, names, split_blob(_blob(c.links).replace(b"/", SEP),
                                                   c.link_ends),
                              c.types)
        skip = self._whiteouts(layer, names) if c.names.find(WHITEOUT) >= 0 else frozenset()
        cur, kill, types = self.cur, self.kill, self.types
        links = (split_blob(_blob(c.links).replace(b"/", SEP), c.link_ends)
                 if TYPE_H in c.types else None)
        if self._apply_bulk(layer, names, links, skip):
            return
        suspects = self.suspects
        for i, name in enumerate(names):
            if skip and i in skip:
                continue
            o = base + i
            t = types[o]
            prev = cur.get(name)
            if t != TYPE_D and prev is not None and (
                    prev < 0 or types[prev] == TYPE_D or (kill and not self._alive(name, prev))):
                kill[name] = o  # a non-directory replaces a directory: its subtree goes
            if t == TYPE_H:
                assert links is not None
                self._link(layer, o, name, links[i])
            cur[name] = o
            # The directories a name implies are registered, so that a non-directory put
            # there later knows it replaces a directory (and whiteouts can date them).
            j = name.rfind(SEP)
            if j > 0:
                q = cur.get(name[:j])
                if q is None or kill:
                    self._imply(name[:j], o)
                elif q >= 0 and types[q] != TYPE_D:
                    suspects.append(o)  # below a non-directory: settle() decides

    def _apply_bulk(self, layer: int, names: list[bytes], links: list[bytes] | None,
                    skip: set[int] | frozenset[int]) -> bool:
        """apply() with dict and set operations in C, for a layer where the order of its own
        entries cannot matter (no duplicates, nothing below a non-directory of its own).

        Returns False, having changed nothing, when the layer needs the ordered loop.
        """
        base, cur, kill, types = self.bases[layer], self.cur, self.kill, self.types
        new = dict(zip(names, range(base, base + len(names)), strict=True))
        if len(new) != len(names):
            return False
        for i in skip:
            del new[names[i]]
        parents = {n.rpartition(SEP)[0] for n in new}
        parents.discard(b"")
        implied = set()
        for p in parents:
            while p and p not in implied:
                q = new.get(p)
                if q is None:
                    q = cur.get(p)
                    if q is None or (kill and not self._alive(p, q if q >= 0 else _IMPLIED - q)):
                        implied.add(p)  # not there: this layer implies it, and its parents
                        p = _parent(p)
                        continue
                if q >= 0 and types[q] != TYPE_D:
                    return False  # below a non-directory: let the ordered loop sort it out
                break
        if links is not None:
            for pos in of_type(types, TYPE_H, base, base + len(names)):
                name = names[pos - base]
                if new.get(name) == pos:
                    target = links[pos - base]
                    t = _IMPLIED if target in implied else new.get(target)
                    if t is not None and t < pos:
                        self._link_to(layer, pos, name, target, t)
                    else:
                        self._link(layer, pos, name, target)
        for name in new.keys() & cur.keys():
            o, prev = new[name], cur[name]
            if types[o] != TYPE_D and (
                    prev < 0 or types[prev] == TYPE_D or (kill and not self._alive(name, prev))):
                kill[name] = o  # a non-directory replaces a directory: its subtree goes
        if cur:
            cur.update(new)
        else:
            self.cur = cur = new  # the bottom layer: no copy of a dict of every path
        marker = _IMPLIED - base
        for p in implied:
            cur[p] = marker
        return True

    def _imply(self, p: bytes, o: int) -> None:
        """Register p and its parents as directories, implied by entry o where not present."""
        cur, types = self.cur, self.types
        while p:
            q = cur.get(p)
            if q is not None and (not self.kill or self._alive(p, q if q >= 0 else _IMPLIED - q)):
                if q >= 0 and types[q] != TYPE_D:
                    self.suspects.append(o)
                return
            cur[p] = _IMPLIED - o
            p = _parent(p)

    def _check_names(self, layer: int, names: list[bytes], links: list[bytes],
                     types: bytes) -> None:
        """Names the scanner should already have refused: never trust a stored index.

        A symlink may point anywhere (`../bin/busybox` is common); only the names and the
        targets of hard links must stay inside.
        """
        for name, link, t in zip(names, links, types, strict=True):
            for n in (name, link) if t == TYPE_H else (name,):
                if n.find(b"..") >= 0 and b".." in n.split(SEP):
                    raise self.fail(layer, name, "escapes the image root")

    def _whiteouts(self, layer: int, names: list[bytes]) -> set[int]:
        """Apply the layer's whiteouts to the lower layers; the ids of entries not to add."""
        skip: set[int] = set()
        epoch = self.bases[layer]  # whiteouts hide lower layers only, wherever they appear
        cur, kill = self.cur, self.kill
        for i, name in enumerate(names):
            if name.find(WHITEOUT) < 0:
                continue
            parts = name.split(SEP)
            inner = [p for p in parts[:-1] if p.startswith(WHITEOUT)]
            if inner:
                if inner[0].startswith(_AUFS_META):
                    skip.add(i)
                    continue
                raise self.fail(layer, name, "is inside a whiteout")
            last = parts[-1]
            if not last.startswith(WHITEOUT):
                continue
            skip.add(i)
            directory = SEP.join(parts[:-1])
            if last == _OPAQUE:
                if kill.get(directory, -1) < epoch:
                    kill[directory] = epoch
                continue
            if last.startswith(_AUFS_META):
                continue
            hidden = last[len(WHITEOUT):]
            if hidden in (b"", b".", b"..") or SEP in hidden:
                raise self.fail(layer, name, "whiteout of an invalid name")
            target = directory + SEP + hidden if directory else hidden
            cur.pop(target, None)  # a whiteout of a missing path is no error
            if kill.get(target, -1) < epoch:
                kill[target] = epoch
        return skip

    def _link(self, layer: int, o: int, name: bytes, target: bytes) -> None:
        """Hard link: the inode currently at `target` (this layer's earlier entries or below)."""
        t = self.cur.get(target) if target != name else None
        if t is None or (t >= 0 and self.kill and not self._alive(target, t)):
            raise self.fail(layer, name, f"hard link to {_show(target)}, which is not in this "
                            "layer or below")
        self._link_to(layer, o, name, target, t)

    def _link_to(self, layer: int, o: int, name: bytes, target: bytes, t: int) -> None:
        if self._is_dir(t):
            raise self.fail(layer, name, f"hard link to the directory {_show(target)}")
        ino = self.link_ino.get(t, t)
        self.link_ino[o] = ino
        if self.docker:  # docker applies each link header's metadata to the shared inode;
            self.meta[ino] = o  # tar and umoci only link (the inode keeps its own)

    # -- the merged tree --------------------------------------------------------------------
    def settle(self) -> None:
        """Drop what was hidden, check survivors hang under directories, add implied ones."""
        cur, kill, syn = self.cur, self.kill, self.syn
        dead = []
        implied = []
        for p, o in cur.items():
            if o < 0:
                if kill and not self._alive(p, _IMPLIED - o):
                    dead.append(p)
                else:
                    implied.append(p)
            elif kill and not self._alive(p, o):
                dead.append(p)
        for p in dead:
            del cur[p]
        # A directory no layer has a header for: the image gives it no time of its own.
        mtime = PINNED_MTIME_NS if self.docker else 0
        for p in implied:
            cur[p] = syn.add(TYPE_D, 0o755, mtime)
        for o in self.suspects:
            layer = self.layer_of(o)
            c = self.layers[layer].columns()
            i = o - self.bases[layer]
            name = c.names[c.name_ends[i - 1] if i else 0 : c.name_ends[i]].replace(b"/", SEP)
            if cur.get(name) != o:
                continue  # replaced or hidden since
            p = _parent(name)
            while p:
                q = cur.get(p, _IMPLIED)
                if not self._is_dir(q):
                    kind = "symlink" if self.types[q] == TYPE_L else "non-directory"
                    raise self.fail(layer, name, f"is below {_show(p)}, a {kind}")
                p = _parent(p)

    def init_layer(self) -> None:
        """docker's init layer: what every container (and so every export) has."""
        cur, syn = self.cur, self.syn
        for path, kind in _INIT:
            parts = path.split(SEP)
            for n in range(1, len(parts) + 1):
                p = SEP.join(parts[:n])
                q = cur.get(p)
                if q is not None and self._kind(q) != TYPE_D:
                    del cur[p]  # unlink: files, symlinks, devices go; directories stay
            if path in cur:
                continue
            for n in range(1, len(parts)):
                p = SEP.join(parts[:n])
                if p not in cur:
                    cur[p] = syn.add(TYPE_D, 0o755)
            if kind == b"d":
                cur[path] = syn.add(TYPE_D, 0o755)
            elif kind == b"f":
                cur[path] = syn.add(TYPE_F, 0o755)  # O_CREAT with 0755: empty, executable bits
            else:
                o = cur[path] = syn.add(TYPE_L, 0o777)
                syn.links[o] = kind
        for path in _TOUCHED:
            q = cur[path]
            if q < syn.base:  # the image's own directory: its attributes, a new mtime
                meta = self.meta.get(q, q)
                mode, uid, gid = (self.column(a, meta) for a in ("modes", "uids", "gids"))
                o = cur[path] = syn.add(TYPE_D, mode, uid=uid, gid=gid)
                syn.like[o] = meta
            else:
                i = q - syn.base
                syn.rows[i] = (*syn.rows[i][:3], PINNED_MTIME_NS)

    def walk(self) -> Walk:
        """The merged tree in walk order; the path dict is let go."""
        order = sorted(self.cur)
        # an array: no int object per entry
        ino = array.array("q", map(self.cur.__getitem__, order))
        self.cur = {}  # done with: what it held is in order and ino now
        names = b"".join(order).replace(SEP, b"/")
        ends = array.array("q", accumulate(map(len, order)))
        return Walk(names, ends, ino)

    def init_layer_into(self, walk: array.array[int], syn_names: dict[int, bytes]
                        ) -> array.array[int]:
        """init_layer() for a one-layer walk: `cur` holds only the init layer's paths, and
        what it changes there is changed in the walk (a few entries, in place)."""
        before = dict(self.cur)
        self.init_layer()
        after = self.cur
        for name, o in before.items():
            now = after.get(name)
            if now is None:
                walk.pop(walk.index(o))
            elif now != o:
                walk[walk.index(o)] = now  # the same name: the same place in the walk
                syn_names[now] = name
        names = self._walk_name(syn_names)
        for name, o in after.items():
            if name not in before:
                syn_names[o] = name
                insort(walk, o, key=names)
        return walk

    def _walk_name(self, syn_names: dict[int, bytes]) -> Callable[[int], bytes]:
        """ordinal -> its path as the walk sorts it (one layer's, or a synthetic one's)."""
        c = self.layers[0].columns()
        blob, ends, base = c.names, c.name_ends, self.syn.base

        def name(o: int) -> bytes:
            if o >= base:
                return syn_names[o]
            return blob[ends[o - 1] if o else 0 : ends[o]].replace(b"/", SEP)
        return name

    def _kind(self, o: int) -> int:
        return self.syn.types[o - self.syn.base] if o >= self.syn.base else self.types[o]

    def column(self, attr: str, o: int) -> int:
        layer = self.layer_of(o)
        return getattr(self.layers[layer].columns(), attr)[o - self.bases[layer]]


def _blob(b: bytes) -> bytes:
    """A name or link blob as bytes (a mapped one is an mmap, which cannot replace())."""
    return b if isinstance(b, bytes) else bytes(b)
