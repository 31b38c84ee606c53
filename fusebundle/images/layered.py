"""An image made of layers: fetched into the store on first use, shown as one merged index.

The handle is what the view asks for (`info`, `index()`, `nested_index()`), the same as an
engine export's.  Resolving it reads only manifests and the config; the layers are fetched,
verified, decompressed and indexed the first time `index()` is called, and the merged index is
saved in the store so a later run never merges again.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fusebundle import testhook
from fusebundle.errors import UserError
from fusebundle.images import flatten as layermod
from fusebundle.images.exported import Cache
from fusebundle.images.handle import Pulled
from fusebundle.progress import Bar
from fusebundle.sources import ImageInfo, LayerRef, LayerSource, ResolvedImage
from fusebundle.sources.base import RegistryError
from fusebundle.store import BadLayer, CorruptLayer, Store, locks
from fusebundle.tar import TarIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

PARALLEL_LAYERS = 4  # at most at once, as docker pulls them


def layer_workers() -> int:
    """Layers to ingest at once: up to PARALLEL_LAYERS, no more than the cores we may run on.

    An ingest keeps a core busy decoding and part of another hashing, writing and indexing
    (store/stream.py, tar/feed.py); a third layer at once on two cores only shares them.
    """
    try:
        cores = len(os.sched_getaffinity(0))  # what taskset, cgroups' cpusets and CI grant us
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(PARALLEL_LAYERS, cores))


def image_info(image: ResolvedImage) -> ImageInfo:
    """What the view needs of an image: its reference, ID (the config digest) and config."""
    size = sum(max(layer.size, 0) for layer in image.layers)
    return ImageInfo(ref=image.ref, id=image.config_digest, config=image.config, size=size)


@dataclass
class Fetched:
    """What making one image's layers present cost: for `pull`'s summary."""

    layers: int = 0  # layers fetched and decompressed by this process
    bytes: int = 0  # their blob bytes
    present: int = 0  # layers that were already in the store


@dataclass
class LayeredImage:
    """An image a layer source resolved, whose layers live in the store."""

    image: ResolvedImage
    source: LayerSource | None  # None: every layer is in the store already
    store: Store
    cache: Cache
    show_progress: bool = False
    verify: bool = False  # hash every stored layer again before use (pack reads them all anyway)
    # For an image found in the store: the source to fetch a corrupt layer from again, if any.
    fallback: Callable[[], LayerSource | None] | None = None
    info: ImageInfo = field(init=False)
    fetched: Fetched = field(default_factory=Fetched)
    _index: TarIndex | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.info = image_info(self.image)

    _own: TarIndex | None = None

    @property
    def merged_path(self) -> str:
        """Where the merged index of this image is kept in the store."""
        return self._merged_path(True)

    def _merged_path(self, docker: bool) -> str:
        hexdigest = self.image.config_digest.split(":", 1)[1]
        suffix = ".idx" if docker else ".image.idx"
        return os.path.join(self.store.root, "merged", hexdigest + suffix)

    def fetch(self) -> Fetched:
        """Make every layer present in the store (layer_workers() at once); count what it
        cost."""
        layers = self.image.layers
        self.store.hold(layer.diff_id for layer in layers)
        missing = [layer for layer in layers if not self.store.has_layer(layer.diff_id)]
        self.fetched.present += len(layers) - len(missing)
        if not missing:
            return self.fetched
        if self.source is None:
            raise _missing_in_store(self.image, missing[0])
        source = self.source

        def one(layer: LayerRef) -> None:
            short = layer.digest.split(":", 1)[-1][:12]
            opened: list[bool] = []

            def open_blob() -> Any:
                # Called by the store only when no process has the layer yet: then this
                # thread does the work (a counter shared by the threads could not tell).
                opened.append(True)
                return source.open_blob(self.image, layer)

            with Bar(f"{self.image.ref} {short}", layer.size, self.show_progress) as bar:
                while True:
                    try:
                        self.store.ingest(layer, open_blob, self.image.ref, bar.to)
                        break
                    except (BadLayer, RegistryError) as e:
                        # A registry mirror's bad blob is fetched again from the next endpoint.
                        refused = getattr(source, "refused_blob", None)
                        if refused is None or not refused(self.image, layer, e):
                            raise
            with self._count:
                if opened:
                    self.fetched.layers += 1
                    self.fetched.bytes += max(layer.size, 0)
                else:  # another process made it while we waited for its lock
                    self.fetched.present += 1

        if len(missing) == 1:
            one(missing[0])
        else:
            # Imported here: only a fetch of several layers runs a pool (a remount fetches none).
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(layer_workers(), len(missing))) as pool:
                for future in [pool.submit(one, layer) for layer in missing]:
                    future.result()
        return self.fetched

    def index(self) -> TarIndex:
        """The merged index of the image's layers; fetches and merges the first time."""
        with self._lock:
            if self._index is None:
                self._index = self._load(True)
            return self._index

    def own_index(self) -> layermod.MergedIndex:
        """The image's own filesystem as its layers make it (no docker artefacts), each entry
        knowing its layer; fetches and merges the first time."""
        with self._lock:
            if self._own is None:
                self._own = self._load(False)
            return self._own  # type: ignore[return-value]

    def layer_index(self, n: int) -> TarIndex:
        """Layer n's own index (0 = bottom), whiteouts and all."""
        self.fetch()
        if self.source is not None:  # recorded, so that prune keeps what was fetched
            self.store.put_image(self.image)
        return self._checked(self.image.layers[n], self.store.layer_index)

    def _load(self, docker: bool) -> TarIndex:
        paths = [self.store.layer_path(layer.diff_id) for layer in self.image.layers]
        self.store.hold(layer.diff_id for layer in self.image.layers)
        if self.verify:
            for layer in self.image.layers:
                if self.store.has_layer(layer.diff_id):
                    self._checked(layer, self.store.verify_layer)
        where = self._merged_path(docker)
        merged = layermod.MergedIndex.load(where, paths)
        if merged is None:
            self.fetch()
            indexes = [self._checked(layer, self.store.layer_index) for layer in self.image.layers]
            digests = [layer.digest for layer in self.image.layers]
            os.makedirs(os.path.dirname(where), exist_ok=True)
            merged = layermod.merge(indexes, digests, self.image.ref, where, docker=docker)
            testhook.stop_at("merge")
            self._save(merged, where)
        if self.source is not None:
            self.store.put_image(self.image)
        return merged

    def _save(self, merged: Any, where: str) -> None:
        """Save the merged index; under its lock, its temporary files are a dead process's."""
        directory = os.path.dirname(where)
        try:
            lock = os.path.join(self.store.root, "locks", "merge-" + os.path.basename(where))
            with locks.held(lock):
                stale = "." + os.path.basename(where) + "."
                for n in os.listdir(directory):
                    if n.startswith(stale) and n.endswith(".part"):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(directory, n))
                merged.save()
        except OSError as e:  # a read-only store still works; the next run merges again
            log.warning("%s: not saved: %s", where, e.strerror or e)

    def _checked(self, layer: LayerRef, use: Callable[[str], T]) -> T:
        """use(diff_id); if the stored layer turns out corrupt (the store then drops it), fetch
        it again from the source and use that, or say that no source was given."""
        try:
            return use(layer.diff_id)
        except CorruptLayer as e:
            if self.source is None and self.fallback is not None:
                self.source = self.fallback()
            if self.source is None:
                raise UserError(f"image {self.image.ref}: {e}; no source was given to fetch it "
                                f"again (use --from)") from None
            self.store.warn(f"image {self.image.ref}: {e}; fetching it again")
        self.fetch()
        return use(layer.diff_id)

    def pull(self, ref: str) -> Pulled:
        """Fetch and merge the image's layers; the line `pull` prints and its counts."""
        source = self.source.name if self.source is not None else "store"
        self.index()
        served_by = getattr(self.source, "served_by", None)
        if served_by is not None and served_by(ref, self.image.name):
            source += f" ({served_by(ref, self.image.name)})"
        f = self.fetched
        return Pulled(f"{ref}: {self.image.config_digest[:19]} {self.image.platform} from "
                      f"{source}: {f.layers} layers fetched, {f.present} already in the store",
                      layers=f.layers, present=f.present, bytes=f.bytes)

    def nested_index(self, name: bytes) -> TarIndex:
        """The index of a tar file inside this image (a kernel tar)."""
        return self.cache.nested(self.info, self.index(), name)

    def save(self, _image_id: str = "") -> Iterator[bytes]:
        """The image as `docker save` (20.10) writes it, in chunks: its config, then each
        stored layer as `<n>/layer.tar`, then manifest.json (for volumes: format: oci)."""
        self.fetch()
        hexdigest = self.image.config_digest.split(":", 1)[1]
        with tempfile.TemporaryFile(dir=self.store.root) as tmp:
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
                names = [f"{n}/layer.tar" for n in range(len(self.image.layers))]
                for name, layer in zip(names, self.image.layers, strict=True):
                    out.add(self.store.layer_path(layer.diff_id), name)
                manifest = json.dumps([{"Config": f"{hexdigest}.json", "Layers": names,
                                        "RepoTags": [self.image.ref]}]).encode()
                for name, data in ((f"{hexdigest}.json", self.image.config_bytes),
                                   ("manifest.json", manifest)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    out.addfile(info, io.BytesIO(data))
            tmp.seek(0)
            while chunk := tmp.read(1 << 20):
                yield chunk


def _missing_in_store(image: ResolvedImage, layer: LayerRef) -> Exception:
    return UserError(f"image {image.ref}: layer {layer.diff_id} is no longer in the store and "
                     f"no source was given to fetch it again (use --from)")

