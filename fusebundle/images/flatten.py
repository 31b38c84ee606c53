"""Flattening: an image's layer indexes overlaid into one index that reads like `docker export`.

Nothing is extracted or copied: every merged entry points at the layer tar that holds its data.
The layers are applied bottom to top by the OCI rules (whiteouts and opaque markers hide only
lower layers), then the survivors are listed in docker's walk order with its hard-link election
and docker's init-layer entries, so the view cannot tell a layered image from an engine's export.
With `docker=False` the same merge stops at the layers (the image as `umoci raw unpack` makes
it): no init layer, mtimes as the headers give them, every xattr as the layers carry it.

The merge's working state is `overlay.Merge`; here its walk becomes the merged index: the
same columns a TarIndex has, gathered from the layers' columns in C loops, saved and loaded.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import mmap
import os
import struct
from collections.abc import Callable, Iterator, Sequence

from fusebundle import heap
from fusebundle.errors import CorruptTar
from fusebundle.images.overlay import (
    CAP_XATTR,
    INIT_PATHS,
    NO_LAYER,
    PINNED_MTIME_NS,
    SECOND_NS,
    SEP,
    WHITEOUT,
    Merge,
    Walk,
    split_blob,
)
from fusebundle.tar import colfile
from fusebundle.tar.header import TYPE_D, TYPE_H, TYPE_L
from fusebundle.tar.index import COLUMNS, Blob, Stamp, TarIndex

__all__ = ["MergedIndex", "merge"]

# 1: a JSON head and blobs read into the heap.  2: laid out to be mapped (colfile).
# 3: each entry's own layer (provenance), and whether docker's artefacts are in.
_MAGIC = b"FBMERGE"
_VERSION = 3
# Entries of a layer copied between two drops of its pages in a one-layer walk (_walk_of):
# 64k names are about 2 MB, so the layer's pages stay a few MB of RSS.
_PIECE = 1 << 16
log = logging.getLogger(__name__)

def _one_layer_walk(m: Merge) -> tuple[array.array[int], dict[int, bytes]] | None:
    """A one-layer image in walk order without a dict of every path: the layer's own order
    with the directories it implies put in, when its names already come in walk order (as
    docker and tar write them).  None when the layer needs the full merge: out of order or
    repeated names, whiteouts, hard links, names with '..', anything below a non-directory.

    Returns the walk's ordinals and the names of the synthetic entries; m.cur is left with
    the init layer's paths only.
    """
    c = m.layers[0].columns()
    blob, ends, types = c.names, c.name_ends, c.types
    if types.find(TYPE_H) >= 0 or _has(m, blob, b"..") or _has(m, blob, WHITEOUT):
        return None
    syn, cur = m.syn, m.cur
    mtime = PINNED_MTIME_NS if m.docker else 0  # as settle() dates an implied directory
    syn_names: dict[int, bytes] = {}
    walk = array.array("I")  # ordinals: a tar of 2**32 members would be 2 TiB of headers
    stack: list[bytes] = []  # the directories above the last entry, each with SEP at its end
    prev = below = b""  # the last name; the last non-directory's name with SEP (or b"")
    start = 0
    for i, end in enumerate(ends):
        name = blob[start:end].replace(b"/", SEP)
        start = end
        if name <= prev or (below and name.startswith(below)):
            return None
        prev = name
        while stack and not name.startswith(stack[-1]):
            stack.pop()
        j = name.rfind(SEP)
        # In walk order a missing parent sorts just before its first child: put it in here.
        pos = len(stack[-1]) if stack else 0
        while 0 < j >= pos:
            k = name.index(SEP, pos)
            p = name[:k]
            o = syn.add(TYPE_D, 0o755, mtime)
            syn_names[o] = p
            walk.append(o)
            stack.append(p + SEP)
            if p in INIT_PATHS:
                cur[p] = o
            pos = k + 1
        if types[i] == TYPE_D:
            stack.append(name + SEP)
            below = b""
        else:
            below = name + SEP
        walk.append(i)
        if name in INIT_PATHS:
            cur[name] = i
        if not ~i & _PIECE - 1:
            _drop_pages(m.layers)  # read once, in order: a few MB of its pages at a time
    _drop_pages(m.layers)
    return walk, syn_names


def _has(m: Merge, blob: Blob, needle: bytes) -> bool:
    """needle in a layer's blob, searched a piece at a time with the pages let go after each
    (a find() over the whole mapped blob would bring all of it into RSS at once)."""
    step = _PIECE * 64  # 4 MiB
    for start in range(0, len(blob), step):
        found = blob.find(needle, start, start + step + len(needle) - 1) >= 0
        _drop_pages(m.layers)
        if found:
            return True
    return False


def _walk_of(m: Merge, walk: array.array[int], syn_names: dict[int, bytes],
             scratch_dir: str) -> Walk:
    """The names of a one-layer walk: runs of the layer's own blob, copied in pieces into one
    mapping of a scratch file in `scratch_dir`, its pages and the layer's let go after each
    piece (they would double the names in RSS, and the names would count in the peak)."""
    c = m.layers[0].columns()
    ends, base = c.name_ends, m.syn.base
    runs: list[tuple[int, int] | bytes] = []  # layer ordinals [o, stop), or a synthetic name
    k, n = 0, len(walk)
    while k < n:
        o = walk[k]
        if o >= base:
            runs.append(syn_names[o].replace(SEP, b"/"))
            k += 1
            continue
        j = k + 1
        while j < n and walk[j] == o + j - k < base:
            j += 1
        runs.append((o, o + j - k))
        k = j
    total = sum(len(r) if isinstance(r, bytes) else ends[r[1] - 1] - (ends[r[0] - 1] if r[0]
                                                                    else 0) for r in runs)
    names: bytes | mmap.mmap = colfile.scratch(total, scratch_dir) if total else b""
    dropped = 0
    out = array.array("I" if total < 1 << 32 else "q")
    at = 0
    view = memoryview(c.names)
    for r in runs:
        if isinstance(r, bytes):
            names[at : at + len(r)] = r  # type: ignore[index]
            at += len(r)
            out.append(at)
            continue
        for o in range(r[0], r[1], _PIECE):
            stop = min(o + _PIECE, r[1])
            a, b = (ends[o - 1] if o else 0), ends[stop - 1]
            names[at : at + b - a] = view[a:b]  # type: ignore[index]
            out.extend(map((at - a).__add__, ends[o:stop]))
            at += b - a
            _drop_pages(m.layers)
            dropped = colfile.drop_range(names, dropped, at)  # type: ignore[arg-type]
    view.release()
    return Walk(names, out, walk)


def merge(layers: Sequence[TarIndex], digests: Sequence[str], what: str, path: str,
          all_xattrs: bool = False, docker: bool = True) -> MergedIndex:
    """Flatten `layers` (bottom first) into what `docker export` of the image would list, or
    with `docker=False` into the image's own filesystem (what `umoci raw unpack` makes).

    `digests` name the layers and `what` the image in errors (CorruptTar, one line); `path` is
    where the result is saved (its tar_path).  Only security.capability is kept among xattrs,
    as docker exports them, unless `all_xattrs` or not `docker` (then every xattr, as is).
    """
    if not layers:
        raise CorruptTar(f"image {what}: no layers")
    m = Merge(layers, digests, what, docker)
    one = _one_layer_walk(m) if len(layers) == 1 else None
    if one is None:
        m.cur = {}
        for layer in range(len(layers)):
            m.apply(layer)
        m.settle()
        if docker:
            m.init_layer()
        walk = m.walk()
    else:
        order, syn_names = one
        if docker:
            order = m.init_layer_into(order, syn_names)
        walk = _walk_of(m, order, syn_names, os.path.dirname(path) or ".")
    _drop_pages(layers)
    merged = MergedIndex._build(m, path, walk, all_xattrs or not docker)
    _drop_pages(layers)  # walked whole; the merged index is what is read from now on
    return merged


def _xattrs_out(attrs: dict[str, bytes], keep_all: bool, docker: bool = True
                ) -> dict[str, bytes]:
    """The xattrs docker export writes: security.capability only, revision 3 made revision 2;
    not `docker`: every xattr as the layer has it."""
    if not docker:
        return dict(attrs)
    out = dict(attrs) if keep_all else {k: v for k, v in attrs.items() if k == CAP_XATTR}
    cap = out.get(CAP_XATTR)
    if cap is not None and len(cap) > 3 and cap[3] == 3:
        out[CAP_XATTR] = cap[:3] + b"\x02" + cap[4:20]  # docker drops the root id of v3 caps
    return out


# Saved columns, in file order: a layer index's, then which layer each entry's data is in,
# then which layer gave the entry itself (its header; NO_LAYER if none did).
_SAVED = (*COLUMNS, ("_srcs", "H"), ("_from", "H"))


class MergedIndex(TarIndex):
    """A TarIndex over an image's layer tars (its sources, bottom first): how it is merged,
    saved and loaded, and which layer gave each entry."""

    __slots__ = ("_from", "_lookups")

    _from: array.array[int]

    # A few lookups (`image cat` of one path: one per component) search the names, which are
    # in walk order, by bisection; past this many, a dict of every name is made once, as
    # TarIndex.find does (100k names: ~40 ms, 17 bisection steps a lookup: ~10 us).
    BISECT_LOOKUPS = 64

    def __init__(self, tar_path: str, stat_key: Stamp) -> None:
        super().__init__(tar_path, stat_key)
        self._lookups = 0

    def find(self, name: bytes) -> int | None:
        """Index of the entry called *name* (already normalised), or None."""
        if self._by_name is not None or self._lookups >= self.BISECT_LOOKUPS:
            return super().find(name)
        self._lookups += 1
        key, names, ends = name.replace(b"/", SEP), self._names, self._name_ends
        lo, hi = 0, len(ends)
        while lo < hi:
            mid = (lo + hi) // 2
            if bytes(names[ends[mid - 1] if mid else 0 : ends[mid]]).replace(b"/", SEP) < key:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(ends) and names[ends[lo - 1] if lo else 0 : ends[lo]] == name:
            return lo
        return None

    def layer_of(self, i: int) -> int | None:
        """Which layer (0 = bottom) gave entry i: the topmost whose tar has a header for its
        name (for a hard link, the link's own header); None for a directory none has."""
        n = self._from[i]
        return None if n == NO_LAYER else n

    @property
    def layer_paths(self) -> list[str]:
        """The layer tars, bottom first."""
        return self.sources

    def __repr__(self) -> str:
        layers = len(self._sources)
        return f"<MergedIndex {self.tar_path!r}: {len(self)} entries, {layers} layers>"

    # -- building ---------------------------------------------------------------------------
    @classmethod
    def _build(cls, m: Merge, path: str, walk: Walk, all_xattrs: bool) -> MergedIndex:
        syn = m.syn
        names, name_ends, ino = walk
        del walk
        # type, size, data, devices, symlink target: ino (hard links point it at the inode);
        # each name's own header: own
        own = _getter(ino[:] if m.link_ino else ino)
        meta, hard = cls._hard_links(m, names, name_ends, ino)

        self = cls(path, Stamp(0, 0, 0))
        self._names, self._name_ends = names, _narrow(name_ends)
        del names, name_ends
        self._sources = [x.tar_path for x in m.layers]
        self._stamps = [x.stamp for x in m.layers]

        pick_ino = _getter(ino)
        pick_meta = pick_ino if meta is ino else _getter(meta)

        def gather(attr: str, typecode: str, pick: Callable, row: int | None) -> array.array:
            columns = [getattr(x.columns(), attr) for x in m.layers]
            extra = [0] * len(syn.rows) if row is None else [r[row] for r in syn.rows]
            src = array.array(_common_typecode(columns, extra, typecode))
            for column in columns:
                _extend(src, column)
            src.extend(extra)
            _drop_pages(m.layers)  # copied: the mapped pages can go
            # narrowed now, as save() would: the wide copy goes before the next is gathered
            return _narrow(array.array(src.typecode, pick(src)))

        types = bytearray(pick_ino(m.types + syn.types))
        for k in hard:
            types[k] = TYPE_H
        self._types = bytes(types)
        self._modes = gather("modes", "H", pick_meta, 0)
        self._uids = gather("uids", "I", pick_meta, 1)
        self._gids = gather("gids", "I", pick_meta, 2)
        mtimes = gather("mtimes", "q", pick_meta, 3)
        if m.docker and any(t % SECOND_NS for t in mtimes):  # docker truncates
            mtimes = _narrow(array.array("q", (t - t % SECOND_NS for t in mtimes)))
        self._mtimes = mtimes
        del mtimes
        sizes = gather("sizes", "q", pick_ino, None)
        self._offsets = gather("offsets", "q", pick_ino, None)
        zeros = array.array("B", bytes(len(ino)))
        if any(_nonzero(x.columns().devmajors) or _nonzero(x.columns().devminors)
               for x in m.layers):
            majors = gather("devmajors", "I", pick_ino, None)
            minors = gather("devminors", "I", pick_ino, None)
        else:
            majors, minors = zeros, zeros[:]
        for k in hard:
            sizes[k] = majors[k] = minors[k] = 0
        self._sizes, self._devmajors, self._devminors = (
            _narrow(sizes), _narrow(majors), _narrow(minors))
        layer_no = array.array("H")
        for layer, x in enumerate(m.layers):
            layer_no.extend(array.array("H", [layer]) * len(x))
        layer_no.extend(array.array("H", [NO_LAYER]) * len(syn.rows))
        self._from = _narrow(array.array("H", own(layer_no)))
        layer_no[len(layer_no) - len(syn.rows):] = array.array("H", [0]) * len(syn.rows)
        # no data in syn rows: any will do
        self._srcs = _narrow(array.array("H", pick_ino(layer_no)))
        del layer_no
        self._links, link_ends = cls._link_column(m, types, ino, hard)
        self._link_ends = _narrow(link_ends)
        self._xattrs = cls._xattr_column(m, meta, all_xattrs)
        self._sparse = cls._sparse_column(m, ino, hard)
        return self

    @staticmethod
    def _hard_links(m: Merge, names: bytes, name_ends: array.array[int],
                    ino: array.array[int]) -> tuple[array.array[int], dict[int, bytes]]:
        """Point each hard-linked name in `ino` at its inode's entry (in place); return the
        entries that give mode, owner, mtime and xattrs (`ino` itself when no hard links say
        otherwise), and position -> the first name of its inode for names that become links."""
        if not m.link_ino:
            return ino, {}
        meta = ino[:]
        hard: dict[int, bytes] = {}
        link_ino, inode_meta = m.link_ino, m.meta
        linked = set(link_ino.values())
        first: dict[int, bytes] = {}
        for k, o in enumerate(ino):
            i = link_ino.get(o, o)
            if i not in linked:
                continue
            ino[k] = i
            meta[k] = inode_meta.get(i, i)
            seen = first.get(i)
            if seen is None:  # the first name met is the file
                first[i] = names[name_ends[k - 1] if k else 0 : name_ends[k]]
            else:
                hard[k] = seen
        return meta, hard

    @staticmethod
    def _sparse_column(m: Merge, ino: Sequence[int], hard: dict[int, bytes]
                       ) -> dict[int, array.array[int]]:
        """The fragment maps of sparse files, from the layer that holds each file's data."""
        by_ordinal: dict[int, array.array[int]] = {}
        for layer, x in enumerate(m.layers):
            for i in x._sparse:
                by_ordinal[m.bases[layer] + i] = x._sparse[i]
        if not by_ordinal:
            return {}
        return {k: by_ordinal[o] for k, o in enumerate(ino) if o in by_ordinal and k not in hard}

    @staticmethod
    def _link_column(m: Merge, types: bytearray, ino: Sequence[int],
                     hard: dict[int, bytes]) -> tuple[bytes, array.array]:
        """Symlink targets (from the inode's layer) and hard-link targets (the first name)."""
        parts: list[tuple[int, bytes]] = []
        layer_links: dict[int, list[bytes]] = {}
        syn = m.syn
        for k in sorted({*hard, *_all(types, TYPE_L)}):
            if k in hard:
                target = hard[k]
            else:
                o = ino[k]
                if o >= syn.base:
                    target = syn.links[o]
                else:
                    layer = m.layer_of(o)
                    got = layer_links.get(layer)
                    if got is None:
                        c = m.layers[layer].columns()
                        got = layer_links[layer] = split_blob(c.links, c.link_ends)
                    target = got[o - m.bases[layer]]
            parts.append((k, target))
        blob = b"".join(target for _, target in parts)
        # The ends are constant between link entries: built run by run, not entry by entry,
        # in the width they are saved in (a column of a million ends in q would be 8 MB).
        tc = colfile.narrow([len(blob)])[0]
        ends = array.array(tc)
        total = done = 0
        for k, target in parts:
            ends.extend(array.array(tc, [total]) * (k - done))
            total += len(target)
            ends.append(total)
            done = k + 1
        ends.extend(array.array(tc, [total]) * (len(ino) - done))
        return blob, ends

    @staticmethod
    def _xattr_column(m: Merge, meta: Sequence[int], all_xattrs: bool
                      ) -> dict[int, dict[str, bytes]]:
        by_ordinal: dict[int, dict[str, bytes]] = {}
        for layer, x in enumerate(m.layers):
            base = m.bases[layer]
            for i, attrs in x._xattrs.items():
                by_ordinal[base + i] = attrs
        for o, like in m.syn.like.items():
            if like in by_ordinal:
                by_ordinal[o] = by_ordinal[like]
        out: dict[int, dict[str, bytes]] = {}
        if by_ordinal:
            for k, o in enumerate(meta):
                attrs = by_ordinal.get(o)
                if attrs:
                    kept = _xattrs_out(attrs, all_xattrs, m.docker)
                    if kept:
                        out[k] = kept
        return out

    # -- saving -----------------------------------------------------------------------------
    def save(self) -> None:
        """Write the merged index at tar_path atomically, with each layer tar's stat key.

        The columns are then used from the file (mapped), so the merge's arrays leave the heap.
        """
        meta = json.dumps({"n": len(self), "layers": [
            [p, *s] for p, s in zip(self._sources, self._stamps, strict=True)]}).encode()
        sections = self._sections(_SAVED)
        mode = None
        if self._sources:
            # The index tells no more than the layers do.
            with contextlib.suppress(OSError):
                mode = os.stat(self._sources[0]).st_mode & 0o666
        colfile.write(self.tar_path, _MAGIC, _VERSION, meta, sections, mode)
        mapped = MergedIndex.load(self.tar_path, self._sources)
        if mapped is not None:
            for attr, _ in _SAVED:
                setattr(self, attr, getattr(mapped, attr))
            self._maps = mapped._maps
            heap.give_back()  # the arrays just replaced: else the heap keeps their pages

    @classmethod
    def load(cls, path: str, layer_paths: Sequence[str]) -> MergedIndex | None:  # type: ignore[override]
        """The index saved at `path`; None if missing, damaged, foreign or a layer changed
        (a damaged one is logged in one line)."""
        try:
            mapped = colfile.read(path, _MAGIC, _VERSION)
        except colfile.Damaged as e:
            log.warning("merged index %s: %s: merged again", path, e)
            return None
        if mapped is None:
            return None
        try:
            head = json.loads(mapped.meta)
            layers = head["layers"]
            if [x[0] for x in layers] != list(layer_paths):
                return None
            try:
                if any(Stamp.of_path(x[0]) != tuple(x[1:]) for x in layers):
                    return None
            except OSError:
                return None
            self = cls._from_mapped_sections(path, head, mapped)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error) as e:
            log.warning("merged index %s: malformed (%s): merged again", path, e)
            return None
        return self

    @classmethod
    def _from_mapped_sections(cls, path: str, head: dict, mapped: colfile.Mapped
                              ) -> MergedIndex:
        n = head["n"]
        self = cls(path, Stamp(0, 0, 0))
        self._adopt(mapped, _SAVED, n)
        self._sources = [x[0] for x in head["layers"]]
        self._stamps = [Stamp(*x[1:]) for x in head["layers"]]
        if n and max(self._srcs) >= len(self._sources):
            raise ValueError("layer number out of range")
        return self


def _getter(refs: Sequence[int]) -> Callable[[Sequence[int]], Iterator[int]]:
    """refs -> a function picking those items of a sequence, in one C loop (lazily: the
    callers fill an array, never a tuple of a million ints)."""
    return lambda seq: map(seq.__getitem__, refs)


def _common_typecode(columns: Sequence[Sequence[int]], extra: list[int], wide: str) -> str:
    """The columns' own (narrowed, unsigned) typecode if they share one and `extra` fits in
    it, else `wide`: a gather then copies the layers' columns at their saved width."""
    codes = {c.format if isinstance(c, memoryview) else getattr(c, "typecode", wide)
             for c in columns}
    if len(codes) != 1:
        return wide
    (tc,) = codes
    if tc not in "BHI" or array.array(tc).itemsize > array.array(wide).itemsize:
        return wide
    if extra and (min(extra) < 0 or max(extra) >> (8 * array.array(tc).itemsize)):
        return wide
    return tc


def _drop_pages(layers: Sequence[TarIndex]) -> None:
    """After a pass over the layers' columns: their pages leave RSS (the mapped files' pages
    count in the peak as much as the heap does: a 1M-entry layer index is 50 MB)."""
    for x in layers:
        x.drop_pages()


def _narrow(column: array.array) -> array.array:
    """The column in the narrowest typecode that holds it (colfile's, as it is saved)."""
    narrowed = colfile.narrow(column)[1]
    return narrowed if isinstance(narrowed, array.array) else column


def _all(codes: bytes | bytearray, code: int) -> Iterator[int]:
    pos = codes.find(code)
    while pos >= 0:
        yield pos
        pos = codes.find(code, pos + 1)


def _extend(dst: array.array, column: Sequence[int]) -> None:
    """dst += column, whatever the column's typecode (saved columns are narrowed)."""
    if isinstance(column, array.array) and column.typecode == dst.typecode:
        dst.extend(column)
    elif isinstance(column, memoryview) and column.format == dst.typecode:
        dst.frombytes(column.cast("B"))
    else:
        dst.extend(array.array(dst.typecode, column))


def _nonzero(a: Sequence[int]) -> bool:
    raw = a.tobytes()
    return raw.count(0) != len(raw)



