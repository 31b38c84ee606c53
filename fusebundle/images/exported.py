"""Images exported by an engine, kept in a cache as tars beside their indexes.

The cache is content-addressed by image ID: `<cache>/exports/<hex>.tar` beside its index
`<hex>.tar.idx`. A tar is written under a temporary name and renamed when complete, and an
exclusive lock per image keeps two processes from exporting the same image at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from fusebundle.atomic import TempName, atomic_file
from fusebundle.errors import CorruptTar, UserError
from fusebundle.images.handle import Pulled
from fusebundle.progress import Bar
from fusebundle.sources import ImageInfo
from fusebundle.sources.base import ImageSource, Progress
from fusebundle.tar import Extent, TarIndex, open_index


def default_cache_dir() -> str:
    """$FUSEBUNDLE_CACHE_DIR, else $XDG_CACHE_HOME/fusebundle, else ~/.cache/fusebundle."""
    env = os.environ.get("FUSEBUNDLE_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fusebundle")


def cache_subdir(root: str, name: str) -> str:
    """root/name, made if missing; one line if it cannot be."""
    d = os.path.join(root, name)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise UserError(f"cache directory {d}: {e.strerror}") from None
    return d


@dataclass
class Cache:
    """Exported image tars and their indexes, by image ID."""

    root: str
    exports: int = 0  # how many images this process exported (a cache miss each)
    _indexes: dict[str, TarIndex] = field(default_factory=dict)

    def _dir(self) -> str:
        return cache_subdir(self.root, "exports")

    def tar_path(self, info: ImageInfo) -> str:
        """Where the export of this image lives (it may not exist yet)."""
        return os.path.join(self._dir(), info.hex + ".tar")

    @contextlib.contextmanager
    def _locked(self, info: ImageInfo) -> Iterator[None]:
        path = os.path.join(self._dir(), info.hex + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(self, info: ImageInfo, source: ImageSource,
               progress: Progress | None = None) -> str:
        """Export the image into the cache unless it is there; return the tar's path."""
        path = self.tar_path(info)
        if os.path.exists(path):
            return path
        with self._locked(info):
            if os.path.exists(path):  # another process exported it while we waited
                return path
            try:
                with atomic_file(path, TempName(f".{info.hex}.")) as t, \
                        os.fdopen(t.fd, "wb", closefd=False) as out:
                    source.export(info, out, progress)
            except OSError as e:
                raise UserError(f"image {info.ref}: cannot write its export to the cache: "
                                f"{e.strerror or e}") from None
            self.exports += 1
        return path

    def nested(self, info: ImageInfo, outer: TarIndex, name: bytes) -> TarIndex:
        """The index of a tar stored as a file inside an image's export (a kernel.tar).

        The inner tar is copied out once, next to the export, so it can be indexed and
        served like any other tar.
        """
        i = outer.find(name)
        if i is None:
            raise UserError(f"image {info.ref}: no {name.decode(errors='replace')} in it")
        e = outer.entry(i)
        tag = hashlib.sha256(name).hexdigest()[:16]
        path = os.path.join(self._dir(), f"{info.hex}.inner-{tag}.tar")
        if not os.path.exists(path):
            with self._locked(info):
                if not os.path.exists(path):
                    if e.sparse is not None:
                        raise UserError(f"image {info.ref}: {name.decode(errors='replace')} "
                                        f"is stored as a sparse file; a nested tar cannot be")
                    self._copy_out(outer.extent(i), path)
        try:
            return open_index(path)
        except CorruptTar as err:
            raise CorruptTar(f"image {info.ref}: {name.decode(errors='replace')} is not a "
                             f"valid tar ({err})") from None

    @staticmethod
    def _copy_out(ext: Extent, dest: str) -> None:
        with atomic_file(dest) as t, open(ext.source.path, "rb") as f, \
                os.fdopen(t.fd, "wb", closefd=False) as out:
            try:
                ext.copy_to(f.fileno(), out)
            except EOFError:
                raise CorruptTar(f"{ext.source.path}: ends early inside an inner tar") from None

    def index(self, info: ImageInfo, source: ImageSource,
              progress: Progress | None = None) -> TarIndex:
        """The index of the image's export, exporting and scanning as needed."""
        if info.id in self._indexes:
            return self._indexes[info.id]
        path = self.ensure(info, source, progress)
        try:
            idx = open_index(path)
        except CorruptTar as e:
            raise CorruptTar(f"cached export of {info.ref} is corrupt ({e}); "
                             f"delete {path} to export it again") from None
        self._indexes[info.id] = idx
        return idx


@dataclass
class LazyImage:
    """An inspected image whose export is fetched and indexed on first use."""

    info: ImageInfo
    cache: Cache
    source: ImageSource
    show_progress: bool = False

    def index(self) -> TarIndex:
        """The export's index; exports and scans the image the first time."""
        with Bar(f"export {self.info.ref}", self.info.size, self.show_progress) as bar:
            return self.cache.index(self.info, self.source, bar.to)

    def pull(self, ref: str) -> Pulled:
        """Export and index the image unless cached; the line `pull` prints and its counts."""
        before = self.cache.exports
        self.index()
        done = self.cache.exports - before
        return Pulled(f"{ref}: {self.info.id[:19]} from docker: "
                      f"{'exported' if done else 'export already cached'}", exported=done)

    def save(self, image_id: str) -> Iterator[bytes]:
        """The image as the engine saves it, in chunks (for volumes: format: oci)."""
        return self.source.save(image_id)

    def nested_index(self, name: bytes) -> TarIndex:
        """The index of a tar file inside this image's export."""
        return self.cache.nested(self.info, self.index(), name)
