"""An image as an OCI image layout in one tar, for today's `volumes: format: oci`.

LinuxKit places such a volume's image in its lower/ directory as an OCI v1 layout (oci-layout,
index.json, blobs/sha256/...).  We make that layout once per image from the engine's
`docker save`, keep it in the cache as `layouts/<image-id>.tar` (written under a temporary
name, renamed when complete) and serve it like any other tar, through its index.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

from fusebundle.atomic import atomic_file
from fusebundle.errors import CorruptTar, EngineError, UserError
from fusebundle.images.exported import cache_subdir
from fusebundle.sources import ImageInfo
from fusebundle.tar import TarIndex, open_index

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"

Save = Callable[[str], Iterable[bytes]]  # image id -> the chunks of `docker save`


def _json(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":")).encode()


def _add(out: tarfile.TarFile, name: str, f: IO[bytes] | None, size: int = 0) -> None:
    ti = tarfile.TarInfo(name)
    if f is None:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    else:
        ti.size, ti.mode = size, 0o644
    out.addfile(ti, f)


def _digest(f: IO[bytes]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _platform(config: dict) -> str:
    parts = [config.get("os") or "linux", config.get("architecture") or ""]
    if config.get("variant"):
        parts.append(config["variant"])
    return "/".join(parts)


def write_layout(save_tar: str, ref: str, platforms: list[str], dest: str) -> None:
    """Turn a `docker save` archive into an OCI layout tar at `dest` (atomically)."""
    with tarfile.open(save_tar) as src:
        try:
            manifest = json.loads(src.extractfile("manifest.json").read())[0]  # type: ignore[union-attr]
            config_bytes = src.extractfile(manifest["Config"]).read()  # type: ignore[union-attr]
            layers = list(manifest["Layers"])
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise CorruptTar(f"image {ref}: the engine's saved image has no usable "
                             "manifest.json") from None
        config = json.loads(config_bytes)
        have = _platform(config)
        missing = [p for p in platforms if p != have and not have.startswith(p + "/")]
        if missing:
            raise UserError(f"image {ref}: the engine holds it for {have} only, not for "
                            f"{', '.join(missing)}")
        with atomic_file(dest) as t, os.fdopen(t.fd, "wb", closefd=False) as raw, \
                tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as out:
            _write(src, out, ref, config, config_bytes, layers)


def _write(src: tarfile.TarFile, out: tarfile.TarFile, ref: str, config: dict,
           config_bytes: bytes, layers: list[str]) -> None:
    layout = _json({"imageLayoutVersion": "1.0.0"})
    descs = []
    for name in layers:
        f = src.extractfile(name)
        if f is None:
            raise CorruptTar(f"image {ref}: layer {name} missing from the saved image")
        descs.append((name, *_digest(f)))
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = _json({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest,
                   "size": len(config_bytes)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": d, "size": n} for _, d, n in descs],
    })
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    platform = {"architecture": config.get("architecture") or "", "os": config.get("os")
                or "linux"}
    if config.get("variant"):
        platform["variant"] = config["variant"]
    index = _json({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [{
        "mediaType": MANIFEST_TYPE, "digest": manifest_digest, "size": len(manifest),
        "annotations": {REF_NAME: ref}, "platform": platform}]})
    _add(out, "oci-layout", io.BytesIO(layout), len(layout))
    _add(out, "index.json", io.BytesIO(index), len(index))
    _add(out, "blobs", None)
    _add(out, "blobs/sha256", None)
    written = set()
    for data in (manifest, config_bytes):
        name = "blobs/sha256/" + hashlib.sha256(data).hexdigest()
        _add(out, name, io.BytesIO(data), len(data))
        written.add(name)
    for name, digest, size in descs:
        blob = "blobs/sha256/" + digest.split(":", 1)[1]
        if blob in written:  # two equal layers: one blob
            continue
        written.add(blob)
        _add(out, blob, src.extractfile(name), size)


@dataclass
class LayoutImage:
    """An engine image whose OCI layout tar is made and indexed on first use."""

    info: ImageInfo
    save: Save
    cache_root: str
    platforms: list[str]

    def _path(self) -> str:
        d = cache_subdir(self.cache_root, "layouts")
        # the ref is in index.json, so it is part of the name
        tag = hashlib.sha256(self.info.ref.encode()).hexdigest()[:12]
        return os.path.join(d, f"{self.info.hex}-{tag}.tar")

    def index(self) -> TarIndex:
        """The layout tar's index; saves the image and writes the layout the first time."""
        path = self._path()
        if not os.path.exists(path):
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".save.part")
            try:
                with os.fdopen(fd, "wb") as out:
                    try:
                        for chunk in self.save(self.info.id):
                            out.write(chunk)
                    except (UserError, OSError):
                        raise
                    except Exception as e:  # the SDK's, whatever its type
                        raise EngineError(f"image {self.info.ref}: save failed: "
                                          f"{' '.join(str(e).split())}") from None
                write_layout(tmp, self.info.ref, self.platforms, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return open_index(path)

    def nested_index(self, name: bytes) -> TarIndex:
        raise UserError(f"image {self.info.ref}: no nested tar in an OCI layout")
