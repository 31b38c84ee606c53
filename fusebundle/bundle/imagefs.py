"""One image's own filesystem, as the image commands see it: the layers merged with none of
docker's artefacts, each entry knowing the layer that gave it.

`ImageFS` answers lookups (symlinks followed as a chroot would), lists directories and subtrees,
reads files and gives the entries as a raw graft for the renderers (`pack`'s writer for
`image export`, the fs tree for `image mount`): the same model as a bundle's, one reader.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any, NamedTuple, Protocol

from fusebundle.bundle.entry import Entry, directory
from fusebundle.bundle.view import Graft, Members, View, graft_entries, members
from fusebundle.errors import UserError
from fusebundle.sources import ImageInfo, ResolvedImage
from fusebundle.tar import Extent, IndexEntry, TarIndex

# Symlinks followed in one lookup before it is called a loop: Linux's MAXSYMLINKS (40).
MAX_HOPS = 40
ROOT = -1  # the image's root directory: no entry of the index names it
_SEP = b"\x00"  # '/' as the walk order sorts it (flatten's)


class PathError(UserError):
    """A path the image does not have, or not of the kind asked for."""


class LayeredHandle(Protocol):
    """What the image commands need of an image handle (images.LayeredImage)."""

    image: ResolvedImage
    info: ImageInfo

    def own_index(self) -> Any: ...

    def layer_index(self, n: int) -> TarIndex: ...


class _Own:
    """The handle as a graft's image: its own index rather than docker's view, or with
    `layer` one layer's own tar (whiteouts as the entries they are)."""

    def __init__(self, handle: LayeredHandle, layer: int | None = None) -> None:
        self.handle = handle
        self.info = handle.info
        self.layer = layer

    def index(self) -> TarIndex:
        if self.layer is not None:
            return self.handle.layer_index(self.layer)
        return self.handle.own_index()

    def nested_index(self, name: bytes) -> TarIndex:
        raise UserError(f"image {self.info.ref}: no nested tars in the image commands")


class Row(NamedTuple):
    """One entry as `image ls` shows it (a tuple: 100k of them are made per listing)."""

    path: bytes  # inside the image, without the leading '/'
    type: str  # f d l h c b p
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link: bytes | None
    layer: int | None  # 0 = the bottom layer; None: no layer has a header for it
    diff_id: str | None
    dev: tuple[int, int] | None = None  # (major, minor) of a device


def split(path: bytes) -> list[bytes]:
    """The components of a path, '.' and empty ones dropped ('..' kept)."""
    return [c for c in path.split(b"/") if c and c != b"."]


def image_view(handle: LayeredHandle, layers: bool = False) -> View:
    """The image for the fs tree: its root at the mount's root; with `layers`, the merged tree
    at rootfs/ and each layer's own at layers/NN-<diff_id hex>/.  Nothing is read until used."""
    if not layers:
        return View(items=[Graft(prefix=b"", image=_Own(handle), raw=True, docker=False)])
    items: list[Any] = [directory(b"rootfs"),
                        Graft(prefix=b"rootfs/", image=_Own(handle), raw=True, docker=False),
                        directory(b"layers")]
    for n, layer in enumerate(handle.image.layers):
        top = f"layers/{n:02d}-{layer.diff_id.partition(':')[2]}".encode()
        items += [directory(top), Graft(prefix=top + b"/", image=_Own(handle, n), raw=True,
                                        docker=False)]
    return View(items=items)


class ImageFS:
    """The image's filesystem over its merged index (`own_index`)."""

    def __init__(self, handle: LayeredHandle) -> None:
        self.handle = handle
        self.ref = handle.image.ref
        self.idx = handle.own_index()
        self.layers = handle.image.layers

    # -- lookups ------------------------------------------------------------------------------
    def _fail(self, path: bytes, why: str) -> PathError:
        shown = "/" + path.decode("utf-8", "backslashreplace").lstrip("/")
        return PathError(f"image {self.ref}: {shown}: {why}")

    def type_of(self, i: int) -> str:
        """The entry's type letter (the root is a directory)."""
        return "d" if i == ROOT else self.idx.entry(i).type

    def resolve(self, path: bytes, follow: bool = True) -> int:
        """The entry `path` names, symlinks followed inside the image as a chroot would (an
        absolute target starts at the image's root, '..' at the root stays there); the last
        component's symlink only if `follow`.  PathError for a missing path or a loop."""
        todo = split(path)
        done: list[bytes] = []
        hops = 0
        i = ROOT
        while todo:
            c = todo.pop(0)
            if c == b"..":
                if done:
                    done.pop()
                i = self._find(done)
                continue
            j = self.idx.find(b"/".join([*done, c]))
            if j is None:
                raise self._fail(path, "no such file or directory")
            e = self.idx.entry(j)
            if e.type == "l" and (todo or follow):
                hops += 1
                if hops > MAX_HOPS:
                    raise self._fail(path, f"too many levels of symbolic links (more than "
                                           f"{MAX_HOPS}: a loop)")
                if e.linkname.startswith(b"/"):
                    done = []
                todo = split(e.linkname) + todo
                i = self._find(done)
                continue
            if todo and e.type != "d":
                raise self._fail(path, "not a directory")
            done.append(c)
            i = j
        return i

    def _find(self, parts: list[bytes]) -> int:
        if not parts:
            return ROOT
        j = self.idx.find(b"/".join(parts))
        assert j is not None  # only directories already walked come here
        return j

    def data_entry(self, i: int) -> IndexEntry:
        """The entry holding i's bytes: i itself, or the file a hard link names."""
        e = self.idx.entry(i)
        if e.type == "h":
            j = self.idx.find(e.linkname)
            if j is not None:
                return self.idx.entry(j)
        return e

    # -- listings -----------------------------------------------------------------------------
    def row(self, i: int) -> Row:
        """Entry i with its provenance."""
        if i == ROOT:
            return Row(b"", "d", 0o755, 0, 0, 0, 0, None, None, None)
        e = self.idx.entry(i)
        layer = self.idx.layer_of(i)
        return Row(e.name, e.type, e.mode, e.uid, e.gid, e.size if e.type == "f" else 0,
                   e.mtime_ns, e.linkname if e.type in "lh" else None, layer,
                   None if layer is None else self.layers[layer].diff_id,
                   (e.devmajor, e.devminor) if e.type in "cb" else None)

    def rows(self, ids: range) -> Iterator[Row]:
        """Rows of a run of entries; the whole index is read in one walk, not entry by entry."""
        idx, layers = self.idx, self.layers
        pairs = enumerate(idx) if ids == range(len(idx)) else ((i, idx.entry(i)) for i in ids)
        for i, e in pairs:
            layer = idx.layer_of(i)
            t = e.type
            yield Row(e.name, t, e.mode, e.uid, e.gid, e.size if t == "f" else 0, e.mtime_ns,
                      e.linkname if t == "l" or t == "h" else None, layer,
                      None if layer is None else layers[layer].diff_id,
                      (e.devmajor, e.devminor) if t == "c" or t == "b" else None)

    def subtree(self, i: int) -> range:
        """The entries below directory i: the index is in walk order ('/' sorting below every
        other byte), so they are one run, found by bisection."""
        if i == ROOT:
            return range(len(self.idx))
        key = self.idx.entry(i).name.replace(b"/", _SEP) + _SEP
        keys = _Keys(self.idx)
        return range(bisect_left(keys, key, i + 1), bisect_left(keys, key[:-1] + b"\x01", i + 1))

    def children(self, i: int) -> Iterator[int]:
        """The entries directly in directory i, in name order."""
        skip = 0 if i == ROOT else len(self.idx.entry(i).name) + 1  # "parent/"
        c = self.idx.columns()  # names from the column (bytes or a mapping): no entry made
        names, ends = c.names, c.name_ends
        for j in self.subtree(i):
            if names.find(b"/", (ends[j - 1] if j else 0) + skip, ends[j]) < 0:
                yield j

    # -- content ------------------------------------------------------------------------------
    def chunks(self, i: int) -> Iterator[bytes]:
        """The bytes of regular file (or hard link) i, a MiB at a time."""
        e = self.data_entry(i)
        if e.size == 0:
            return
        ext = self.idx.extent_of(e)
        with open(ext.source.path, "rb") as f:
            try:
                yield from ext.chunks(f.fileno())
            except EOFError:
                raise UserError(f"{e.src}: ends early inside {e.name!r}") from None

    def sha256(self, i: int) -> str:
        """The hex sha256 of a regular file's bytes."""
        h = hashlib.sha256()
        for chunk in self.chunks(i):
            h.update(chunk)
        return h.hexdigest()

    # -- for the renderers --------------------------------------------------------------------
    def graft(self) -> Graft:
        """The image as a raw graft at the root: no filter, no pinned mtimes."""
        return Graft(prefix=b"", image=_Own(self.handle), raw=True, docker=False)

    def pieces(self, top: int = ROOT) -> Iterator[Entry | Members]:
        """The same entries as entries(top), the whole image's as one `Members`."""
        if top == ROOT:
            yield members(self.graft())
            return
        yield from self.entries(top)

    def entries(self, top: int = ROOT) -> Iterator[Entry]:
        """Entries in the image's order: all, or `top` and its subtree (a hard link to a file
        outside it becomes a copy of that file)."""
        if top == ROOT:
            yield from graft_entries(self.graft())
            return
        names = {self.idx.entry(j).name for j in (top, *self.subtree(top))}
        gen = graft_entries(Graft(prefix=b"", image=_Picked(self, top), raw=True, docker=False))
        for e in gen:
            if e.type == "h" and e.linkname not in names:
                j = self.idx.find(e.linkname)
                assert j is not None
                t = self.idx.entry(j)
                e = Entry(path=e.path, type="f", mode=e.mode, uid=e.uid, gid=e.gid,
                          mtime_ns=e.mtime_ns, size=t.size, xattrs=e.xattrs,
                          body=self.idx.extent_of(t))
            yield e


class _Picked:
    """One subtree of the image's index, as a graft's image."""

    def __init__(self, fs: ImageFS, top: int) -> None:
        self.fs, self.top = fs, top
        self.info = fs.handle.info

    def index(self) -> Any:
        return _Slice(self.fs.idx, self.top, self.fs.subtree(self.top))

    def nested_index(self, name: bytes) -> TarIndex:
        raise UserError(f"image {self.info.ref}: no nested tars in the image commands")


class _Slice:
    """The entries `top` and `rest` of an index, iterated as an index is."""

    def __init__(self, idx: TarIndex, top: int, rest: range) -> None:
        self.idx, self.top, self.rest = idx, top, rest

    def __iter__(self) -> Iterator[IndexEntry]:
        yield self.idx.entry(self.top)
        for j in self.rest:
            yield self.idx.entry(j)

    def find(self, name: bytes) -> int | None:
        return self.idx.find(name)

    def entry(self, i: int) -> IndexEntry:
        return self.idx.entry(i)

    def extent_of(self, e: IndexEntry) -> Extent:
        return self.idx.extent_of(e)


class _Keys:
    """The index's names as the walk order sorts them, for bisection."""

    def __init__(self, idx: TarIndex) -> None:
        c = idx.columns()
        self.names, self.ends = c.names, c.name_ends

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> bytes:
        start = self.ends[i - 1] if i else 0
        return bytes(self.names[start : self.ends[i]]).replace(b"/", _SEP)
