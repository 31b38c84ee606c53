"""The layer store: each layer once, as an uncompressed tar keyed by its diff_id, indexed once.

Layout under the cache directory (`exports/` beside it belongs to images.Cache):

    layers/sha256/<hex>.tar        the layer's tar; sha256 of it = the diff_id
    layers/sha256/<hex>.tar.idx    its tarindex (anything else named <hex>.tar.* is derived too)
    locks/<hex>.ingest             exclusive while one process writes the layer
    locks/<hex>.use                shared while a process uses it (`hold`); `prune` skips it then
    locks/images                   shared while a record is written; `prune` cleans temps under it
    images/<hash>.json             image records (records.py)
    merged/<config hex>.idx        an image's layers merged into one index (layered.py's)
    merged/<config hex>.image.idx  the same without docker's artefacts (the image commands')

A layer appears under its final name only complete and verified: it is written to a temporary
name in the same directory, checked, fsynced and indexed, then renamed.  Temporary names left by
a killed process (.<hex>.*) are removed by the next ingest of that layer and by `prune`.

A stored tar never changes, so one whose index no longer fits it (size, mtime or inode) is
hashed again before it is indexed again; `pack` hashes every stored layer it uses once (it reads
them all anyway).  One that is not its diff_id any more is removed and fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from fusebundle import testhook
from fusebundle.atomic import TempName, atomic_file
from fusebundle.errors import CorruptTar, UserError
from fusebundle.sources import LayerRef, ResolvedImage
from fusebundle.store import locks, records
from fusebundle.store.records import ImageRecord, digest_hex
from fusebundle.tar import TarIndex, open_index

if TYPE_CHECKING:
    from fusebundle.store.stream import Outcome

__all__ = ["BadLayer", "CorruptLayer", "ImageRecord", "LayerInfo", "PruneReport", "Store",
           "StoreError"]

# Bounds the open lock files of one prune pass (two per layer).
_PRUNE_BATCH = 200
# A merged index is saved within seconds and has no lock of its own: a temporary file this
# old was left by a process that died.
_MERGED_STALE = 3600.0


class StoreError(UserError):
    """The store cannot be read or written (permissions, a full disk, a missing layer)."""


class BadLayer(StoreError):
    """A layer blob failed its checks: digest, diff_id, compression, or its tar."""


class CorruptLayer(StoreError):
    """A stored layer's tar no longer hashes to its diff_id; it has been removed."""


@dataclass
class LayerInfo:
    """A stored layer, for `cache ls` and `cache prune`."""

    diff_id: str
    size: int  # bytes of the tar and everything derived beside it
    used_by: list[str] = field(default_factory=list)  # names of the image records using it


@dataclass
class PruneReport:
    """What `prune` did."""

    removed: list[LayerInfo] = field(default_factory=list)
    in_use: list[LayerInfo] = field(default_factory=list)  # unused by images, held by a process
    kept: int = 0  # layers some image record uses
    temps: list[tuple[str, int]] = field(default_factory=list)  # stale temporary files removed
    bad_records: list[tuple[str, str]] = field(default_factory=list)  # (path, why), removed
    merged: list[tuple[str, int]] = field(default_factory=list)  # of images no record has

    @property
    def freed(self) -> int:
        """Bytes freed in all."""
        return (sum(x.size for x in self.removed) + sum(n for _, n in self.temps)
                + sum(n for _, n in self.merged))


def _warn_stderr(message: str) -> None:
    print(f"fusebundle: warning: {message}", file=sys.stderr)


def _size(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


class Store:
    """Layers and image records under one cache directory."""

    def __init__(self, root: str, warn: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.ingested = 0  # layers this object decompressed (a miss each)
        self._warn = warn or _warn_stderr
        self._layers = os.path.join(root, "layers", "sha256")
        self._locks = os.path.join(root, "locks")
        self._images = os.path.join(root, "images")
        self._merged = os.path.join(root, "merged")
        self._held: dict[str, int | None] = {}
        self._mutex = threading.Lock()  # ingest may run in several threads at once
        self._indexes: dict[str, TarIndex] = {}
        self._verified: set[str] = set()  # diff_ids hashed (or written) by this object

    # ------------------------------------------------------------------ paths and locks
    def _mkdir(self, d: str) -> str:
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cache directory {d}: {e.strerror}") from None
        return d

    @staticmethod
    def _hex(diff_id: str) -> str:
        h = digest_hex(diff_id)
        if h is None:
            raise StoreError(f"layer diff_id {diff_id!r}: expected sha256:<64 hex digits>")
        return h

    def layer_path(self, diff_id: str) -> str:
        """Where the layer's tar is (or will be): root/layers/sha256/<hex>.tar."""
        return os.path.join(self._layers, self._hex(diff_id) + ".tar")

    def has_layer(self, diff_id: str) -> bool:
        """True if the layer is stored (complete and verified: nothing else has its name)."""
        return os.path.exists(self.layer_path(diff_id))

    def _lock_path(self, hex_: str, what: str) -> str:
        return os.path.join(self._locks, f"{hex_}.{what}")

    def hold(self, diff_ids: Iterable[str]) -> None:
        """Keep `prune` off these layers (present or still to come) until close()."""
        for d in diff_ids:
            path = self._lock_path(self._hex(d), "use")
            # Under the mutex: a thread of ours that finds the layer held must find it locked.
            # take() waits only while a prune is deleting this layer.
            with self._mutex:
                if d not in self._held:
                    self._mkdir(self._locks)
                    self._held[d] = locks.take(path, shared=True)

    def close(self) -> None:
        """Release every layer this object holds."""
        with self._mutex:
            held, self._held = self._held, {}
            self._indexes.clear()
        for fd in held.values():
            locks.release(fd)

    def warn(self, message: str) -> None:
        """Say something the user should know that does not stop the command."""
        self._warn(message)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ layers
    def ingest(self, layer: LayerRef, open_blob: Callable[[], BinaryIO], what: str,
               progress: Callable[[int], None] | None = None) -> str:
        """Make the layer's tar present and indexed, reading its blob only if it is missing;
        return the tar's path.  `progress(n)` gets the blob bytes read so far.

        The layer stays held (see `hold`) until close().  Every failure is one line naming
        `what` and the blob's digest, and leaves nothing of the layer behind.
        """
        path = self.layer_path(layer.diff_id)
        if digest_hex(layer.digest) is None:
            raise BadLayer(f"image {what}: layer digest {layer.digest!r}: expected "
                           "sha256:<64 hex digits>")
        self.hold([layer.diff_id])
        if os.path.exists(path):
            return path
        self._mkdir(self._layers)
        with locks.held(self._lock_path(self._hex(layer.diff_id), "ingest")):
            if os.path.exists(path):  # another process stored it while we waited
                return path
            self._clean_temps(self._hex(layer.diff_id))  # left by a process that was killed
            self._write(layer, open_blob, what, progress, path)
        with self._mutex:
            self.ingested += 1
            self._verified.add(layer.diff_id)
        testhook.note(f"ingested {layer.diff_id}")
        return path

    def _write(self, layer: LayerRef, open_blob: Callable[[], BinaryIO], what: str,
               progress: Callable[[int], None] | None, path: str) -> None:
        # Imported by the ingest alone: a mount or pack of stored layers decodes and scans none.
        from fusebundle.store.stream import ReadError, WriteError, unpack
        from fusebundle.tar.feed import ScanAlong

        where = f"image {what}: layer {layer.digest}"
        hex_ = os.path.basename(path)[: -len(".tar")]
        placed = False  # the temp is 0600: unverified bytes are for no one else to read
        try:
            # The layer is indexed as it is written, from the same bytes: the tar is never read
            # again.  Sparse members (GNU tar, bsdtar) are served with their holes as zeros.
            # (The scan ends before the file is closed or removed.)
            with atomic_file(path, TempName(f".{hex_}.")) as t, \
                    ScanAlong(t.fd, sparse=True) as scan:
                try:
                    with open_blob() as src:
                        if layer.size < 0:  # only from a record older than sizes being required
                            raise BadLayer(f"{where}: its descriptor gives no size; pull the "
                                           "image again (--pull)")
                        got = unpack(src, t.fd, progress, limit=layer.size, tap=scan.push)
                except ReadError as e:
                    raise BadLayer(f"{where}: {e}") from None
                except WriteError as e:
                    raise StoreError(f"{where}: cannot write {t.path}: {e}") from None
                except OSError as e:  # from open_blob
                    raise BadLayer(f"{where}: cannot read the blob: {e.strerror or e}") from None
                problem = _verdict(layer, got)
                if problem:
                    raise BadLayer(f"{where}: {problem}")
                os.fchmod(t.fd, 0o644)  # its digests are right: readable as every stored layer is
                os.fsync(t.fd)
                testhook.stop_at("layer-written")
                try:
                    # The index keys on size, mtime and inode: the rename keeps them.
                    scan.save(t.path, path + ".idx")
                except CorruptTar as e:
                    raise BadLayer(f"{where}: not a valid tar: "
                                   f"{str(e).removeprefix(t.path + ': ')}") from None
                testhook.stop_at("layer-indexed")
            placed = True
        except OSError as e:
            raise StoreError(f"{where}: cannot store it: {e.strerror or e}") from None
        finally:
            if not placed:
                # On a failing disk even this may fail: the next ingest or prune removes it.
                with contextlib.suppress(OSError):
                    os.unlink(path + ".idx")

    def layer_index(self, diff_id: str) -> TarIndex:
        """The index of a stored layer (loaded from beside it, or scanned once); held.

        A saved index that is missing, corrupt or keyed on another size, mtime or inode of the
        tar is rebuilt, but only once the tar has been hashed again: a stored tar never
        changes, so a changed one is suspect.  CorruptLayer if it no longer hashes to its
        diff_id (it is then removed from the store).
        """
        if diff_id in self._indexes:
            return self._indexes[diff_id]
        self.hold([diff_id])
        path = self.layer_path(diff_id)
        if not os.path.exists(path):
            raise StoreError(f"layer {diff_id} is not in the store {self.root}")
        index = TarIndex.load(path + ".idx", path)
        if index is None:
            self.verify_layer(diff_id)
            try:
                index = open_index(path, sparse=True)
            except CorruptTar as e:  # hashes right, yet unreadable: only by a changed reader
                raise StoreError(f"stored layer {diff_id} cannot be indexed ({e}); `fusebundle "
                                 f"cache prune` after removing {path} drops it") from None
        self._indexes[diff_id] = index
        return index

    def verify_layer(self, diff_id: str) -> None:
        """Hash the stored tar again (once per Store object); if it is not its diff_id any
        more, remove it from the store and raise CorruptLayer."""
        if diff_id in self._verified:
            return
        self.hold([diff_id])
        path = self.layer_path(diff_id)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                got = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        except FileNotFoundError:
            raise StoreError(f"layer {diff_id} is not in the store {self.root}") from None
        except OSError as e:
            got, size = f"unreadable ({e.strerror or e})", _size(path)
        if got == diff_id:
            self._verified.add(diff_id)
            return
        self.drop_layer(diff_id)
        why = got if got.startswith("unreadable") else f"its {size} bytes hash to {got}"
        raise CorruptLayer(f"stored layer {diff_id} is corrupt ({why}): removed it from the store")

    def drop_layer(self, diff_id: str) -> None:
        """Remove a stored layer's tar and what is derived from it (a corrupt one)."""
        hex_ = self._hex(diff_id)
        self._indexes.pop(diff_id, None)
        self._verified.discard(diff_id)
        self._mkdir(self._locks)
        with locks.held(self._lock_path(hex_, "ingest")):
            for p in sorted(self._layer_files().get(hex_, []),
                            key=lambda p: not p.endswith(".tar")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)

    def _clean_temps(self, hex_: str) -> list[tuple[str, int]]:
        # Callers hold the layer's ingest lock (and for prune its use lock): no live process
        # is writing these.
        gone = []
        with contextlib.suppress(FileNotFoundError):
            for n in sorted(os.listdir(self._layers)):
                if n.startswith(f".{hex_}."):
                    p = os.path.join(self._layers, n)
                    size = _size(p)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                        gone.append((p, size))
        return gone

    # ------------------------------------------------------------------ image records
    def put_image(self, image: ResolvedImage) -> None:
        """Record the image (config bytes, layers, source, manifest digest, time), replacing
        the record of the same name and platform."""
        for x in image.layers:
            self._hex(x.diff_id)
            if digest_hex(x.digest) is None:
                raise StoreError(f"image {image.name}: layer digest {x.digest!r}: expected "
                                 "sha256:<64 hex digits>")
        self._mkdir(self._images)
        self._mkdir(self._locks)
        try:
            with locks.held(os.path.join(self._locks, "images"), shared=True):
                records.write(self._images, image)
        except OSError as e:
            raise StoreError(f"image {image.name}: cannot record it in {self._images}: "
                             f"{e.strerror or e}") from None

    def _record(self, path: str) -> ImageRecord | None:
        try:
            return records.read(path)
        except records.BadRecord as e:
            if os.path.exists(path):
                self._warn(f"ignoring the corrupt image record {path}: {e}")
            return None

    def find_image(self, name: str, platform: str) -> ResolvedImage | None:
        """The recorded image of this normalised name and platform; for a name@sha256:...,
        also a record with that manifest digest.  None if there is none."""
        path = os.path.join(self._images, records.file_name(name, platform))
        rec = self._record(path) if os.path.exists(path) else None
        if rec is not None:
            return rec.image
        _, _, digest = name.rpartition("@")
        if digest_hex(digest) is not None:
            for r in self.images():
                if r.image.manifest_digest == digest and r.image.platform == platform:
                    return r.image
        return None

    def images(self) -> list[ImageRecord]:
        """Every readable record, by name and platform; corrupt ones are warned about."""
        good, bad = records.scan(self._images)
        for path, why in bad:
            self._warn(f"ignoring the corrupt image record {path}: {why}")
        return good

    def layers(self, images: list[ImageRecord] | None = None) -> list[LayerInfo]:
        """Every stored layer, by diff_id, with its size and the images (of `images()`, or
        of the given records) using it."""
        users: dict[str, set[str]] = {}
        for r in self.images() if images is None else images:
            for x in r.image.layers:
                users.setdefault(x.diff_id, set()).add(r.image.name)
        files = self._layer_files()
        return [LayerInfo("sha256:" + h, sum(map(_size, files[h])),
                          sorted(users.get("sha256:" + h, ())))
                for h in sorted(files) if os.path.join(self._layers, h + ".tar") in files[h]]

    def _layer_files(self) -> dict[str, list[str]]:
        """hex -> the paths of <hex>.tar and everything derived beside it (<hex>.tar.*)."""
        out: dict[str, list[str]] = {}
        with contextlib.suppress(FileNotFoundError):
            for n in sorted(os.listdir(self._layers)):
                h, sep, rest = n.partition(".")
                if sep and (rest == "tar" or rest.startswith("tar.")) and \
                        digest_hex("sha256:" + h) is not None:
                    out.setdefault(h, []).append(os.path.join(self._layers, n))
        return out

    # ------------------------------------------------------------------ prune
    def prune(self) -> PruneReport:
        """Remove the layers no image record uses, and stale temporary files; a layer some
        live process holds is kept whatever the records say."""
        report = PruneReport()
        hexes = sorted(self._candidates())
        for i in range(0, len(hexes), _PRUNE_BATCH):
            self._prune_batch(hexes[i : i + _PRUNE_BATCH], report)
        self._prune_images(report)
        self._prune_merged(report)
        return report

    def merged(self) -> list[tuple[str, int]]:
        """The merged indexes kept under root/merged, as (path, size)."""
        try:
            names = sorted(os.listdir(self._merged))
        except FileNotFoundError:
            return []
        paths = [os.path.join(self._merged, n) for n in names if not n.startswith(".")]
        return [(p, _size(p)) for p in paths]

    def _prune_merged(self, report: PruneReport) -> None:
        # Keyed by config digest. One removed under a process about to record its image only
        # costs that image a merge on its next use.
        good, _ = records.scan(self._images)
        configs = {r.image.config_digest.removeprefix("sha256:") for r in good}
        now = time.time()
        for path, size in self.merged():
            name = os.path.basename(path)
            # <config hex>.idx (docker's view) or <config hex>.image.idx (the image's own)
            if name.endswith(".idx") and name.split(".", 1)[0] not in configs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    report.merged.append((path, size))
        with contextlib.suppress(FileNotFoundError):
            for n in sorted(os.listdir(self._merged)):
                p = os.path.join(self._merged, n)
                with contextlib.suppress(FileNotFoundError):
                    if n.startswith(".") and now - os.lstat(p).st_mtime > _MERGED_STALE:
                        size = _size(p)
                        os.unlink(p)
                        report.temps.append((p, size))

    def _candidates(self) -> set[str]:
        # Layers, their temporary files (.<hex>.*) and lock files (<hex>.use) name the layer.
        found: set[str] = set()
        for d in (self._layers, self._locks):
            with contextlib.suppress(FileNotFoundError):
                for n in os.listdir(d):
                    h = n.lstrip(".")[:64]
                    if digest_hex("sha256:" + h) is not None:
                        found.add(h)
        return found

    def _prune_batch(self, hexes: list[str], report: PruneReport) -> None:
        taken: dict[str, tuple[int, int]] = {}
        busy: list[str] = []
        try:
            for h in hexes:
                use = locks.take(self._lock_path(h, "use"), wait=False)
                ingest = locks.take(self._lock_path(h, "ingest"), wait=False) if use else None
                if use is None or ingest is None:
                    locks.release(use)
                    busy.append(h)
                else:
                    taken[h] = (use, ingest)
            # Read only now: whoever records an image holds its layers until the record is
            # written, so a record we cannot see yet belongs to a layer we could not lock.
            good, _ = records.scan(self._images)  # the corrupt ones are reported when removed
            used = {x.diff_id for r in good for x in r.image.layers}
            stored = self._layer_files()
            for h in busy:
                if h in stored and "sha256:" + h not in used:
                    report.in_use.append(LayerInfo("sha256:" + h, sum(map(_size, stored[h]))))
                elif h in stored:
                    report.kept += 1
            for h in taken:
                report.temps += self._clean_temps(h)
                diff_id = "sha256:" + h
                if diff_id in used:
                    report.kept += h in stored
                    continue
                files = stored.get(h, [])
                if files:
                    size = sum(_size(p) for p in files)
                    # The tar first: without it the rest is garbage to the next prune.
                    for p in sorted(files, key=lambda p: not p.endswith(".tar")):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(p)
                    report.removed.append(LayerInfo(diff_id, size))
                for what in ("ingest", "use"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._lock_path(h, what))
        except OSError as e:
            raise StoreError(f"cache prune in {self.root}: {e.strerror or e}") from None
        finally:
            for use, ingest in taken.values():
                locks.release(ingest)
                locks.release(use)

    def _prune_images(self, report: PruneReport) -> None:
        if not os.path.isdir(self._images):
            return
        fd = locks.take(os.path.join(self._mkdir(self._locks), "images"), wait=False)
        if fd is None:
            return  # a record is being written; its temp file is not stale
        try:
            _, bad = records.scan(self._images)
            for path, why in bad:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    report.bad_records.append((path, why))
            for n in sorted(os.listdir(self._images)):
                if n.startswith(".") and n.endswith(".tmp"):
                    p = os.path.join(self._images, n)
                    size = _size(p)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                        report.temps.append((p, size))
        finally:
            locks.release(fd)


def _verdict(layer: LayerRef, got: Outcome) -> str:
    """What is wrong with a blob that was read to its end, most fundamental first; "" if
    nothing is."""
    if got.longer:  # containerd: "unexpected commit size"
        return (f"unexpected blob size: longer than the {layer.size} bytes its descriptor "
                "says (read no further)")
    if got.blob_digest != layer.digest:
        sizes = (f" ({got.blob_size} bytes, the manifest says {layer.size})"
                 if layer.size >= 0 and layer.size != got.blob_size else "")
        return f"blob digest mismatch: its bytes hash to {got.blob_digest}{sizes}"
    if layer.size >= 0 and got.blob_size != layer.size:
        return (f"unexpected blob size: {got.blob_size} bytes, its descriptor says "
                f"{layer.size}")
    if got.problem:
        return got.problem
    if got.tar_digest != layer.diff_id:
        return (f"diff_id mismatch: the {got.compression} blob holds a tar hashing to "
                f"{got.tar_digest}, the image config says {layer.diff_id}")
    return ""
