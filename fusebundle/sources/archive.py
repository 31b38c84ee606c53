"""A `docker save` tar as a source, in both formats, read in place; and an OCI layout in a tar.

Docker 20.10 writes `manifest.json`, `<image id>.json` and `<v1 id>/layer.tar` (uncompressed,
so sha256(layer.tar) is the diff_id; a repeated layer is a symlink to the first copy).
Docker >= 25 writes an OCI image layout (`index.json`, `blobs/sha256/`) and a `manifest.json`
beside it.  The outer tar is indexed in memory with the project's own scanner and its members
are served as bounded views (pread at the member's offset); nothing is written beside it.
"""

from __future__ import annotations

import os
import posixpath
import threading
from typing import Any, BinaryIO, cast

from fusebundle.errors import CorruptTar, UserError
from fusebundle.sources import jsondoc, reference
from fusebundle.sources import manifest as mf
from fusebundle.sources.base import LayerRef, NotFound, Platform, ResolvedImage
from fusebundle.sources.oci import LayoutReader, is_blob, not_regular, read_limited
from fusebundle.tar import Extent, TarIndex

_MAX_LINKS = 8  # symlink hops inside the archive before giving up (docker writes one)
_TYPE_WORDS = {"l": "symlink", "d": "directory", "p": "FIFO", "c": "character device",
               "b": "block device"}


class TarFiles:
    """`Files` over the members of a tar, indexed once by `TarIndex.scan` and kept in memory."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        self._index: TarIndex | None = None
        self._lock = threading.Lock()

    def index(self) -> TarIndex:
        """The archive's member index (scanned on first use)."""
        with self._lock:
            if self._index is None:
                if not os.path.isfile(self.path):
                    raise UserError(f"{self.name}: no such file")
                try:
                    self._index = TarIndex.scan(self.path)
                except CorruptTar as e:
                    raise CorruptTar(f"{self.name}: not a readable tar: {e}") from None
                except OSError as e:
                    raise UserError(f"{self.name}: {e.strerror or e}") from None
            return self._index

    def member(self, path: str) -> Extent | None:
        """Where the regular member at `path` is, links followed; None if absent."""
        index = self.index()
        name = path
        for _ in range(_MAX_LINKS):
            i = index.find(name.encode("utf-8", "surrogateescape"))
            if i is None:
                return None
            entry = index.entry(i)
            if entry.type == "f":
                return index.extent(i)
            if is_blob(path) and entry.type != "h":  # a hard link names a member's bytes
                raise not_regular(f"{self.name}: member {path}", _TYPE_WORDS.get(
                    entry.type, "special file"))
            link = entry.linkname.decode("utf-8", "surrogateescape")
            if entry.type == "h":
                name = link
            elif entry.type == "l":
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
                if posixpath.isabs(link) or joined == ".." or joined.startswith("../"):
                    raise UserError(f"{self.name}: member {path} links outside the archive "
                                    f"({link})")
                name = joined
            else:
                return None
        raise UserError(f"{self.name}: member {path}: more than {_MAX_LINKS} links to follow")

    def exists(self, path: str) -> bool:
        return self.member(path) is not None

    def read(self, path: str, limit: int = mf.MAX_METADATA) -> bytes:
        with self.open(path) as f:
            return read_limited(f, limit, f"{self.name}: member {path} is larger than {limit} "
                                          "bytes")

    def open(self, path: str) -> BinaryIO:
        where = self.member(path)
        if where is None:
            raise UserError(f"{self.name}: no member {path} in the archive")
        what = f"{self.name}: member {path}"
        try:
            # Unbuffered: the store reads in large chunks, and each read is one pread.
            # The archive shrinking after it was indexed is an error, never a short blob.
            return cast(BinaryIO, where.open(
                lambda: UserError(f"{what}: truncated (the archive ends inside it)")))
        except OSError as e:
            raise UserError(f"{self.name}: {e.strerror or e}") from None


class DockerArchive:
    """A `docker save` tar as a `LayerSource` ("docker-archive:FILE")."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"docker-archive:{path}"
        self.files = TarFiles(path, self.name)
        self._layout = LayoutReader(self.files, self.name)
        self._manifest: list[dict[str, Any]] | None = None
        self._layer_paths: dict[str, str] = {}  # blob digest -> member, for manifest.json images

    # -- manifest.json (both formats) ---------------------------------------------------------
    def manifest(self) -> list[dict[str, Any]]:
        """The checked items of manifest.json ([] if the archive has none)."""
        if self._manifest is None:
            if not self.files.exists("manifest.json"):
                self._manifest = []
                return self._manifest
            doc = jsondoc.parse(self.files.read("manifest.json", mf.MAX_METADATA),
                                f"{self.name}: manifest.json",
                                f"{self.name}: manifest.json is not valid JSON")
            if not isinstance(doc, list) or not all(isinstance(i, dict) for i in doc):
                raise UserError(f"{self.name}: manifest.json is not a list of images")
            for item in doc:
                self._check_item(item)
            self._manifest = doc
        return self._manifest

    def _check_item(self, item: dict[str, Any]) -> None:
        layers = item.get("Layers")
        if not isinstance(item.get("Config"), str) or not isinstance(layers, list) or \
                not all(isinstance(p, str) for p in layers):
            raise UserError(f"{self.name}: manifest.json item without Config or Layers")
        tags = item.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise UserError(f"{self.name}: manifest.json RepoTags is not a list of names")

    def _tagged(self) -> list[str]:
        names = [t for item in self.manifest() for t in (item.get("RepoTags") or [])]
        untagged = [f"<untagged {item['Config']}>" for item in self.manifest()
                    if not item.get("RepoTags")]
        return names + untagged

    def _from_manifest(self, ref: str, parsed: reference.Reference, platform: Platform
                       ) -> ResolvedImage | None:
        if parsed.digest:
            return None  # a save's manifest.json carries no manifest digests to match
        for item in self.manifest():
            if any(reference.normalise(t) == parsed.name for t in item.get("RepoTags") or []):
                return self._image(ref, parsed.name, item, platform)
        return None

    def _image(self, ref: str, name: str, item: dict[str, Any], platform: Platform
               ) -> ResolvedImage:
        what = f"{self.name}: {ref}"
        config_path = item["Config"]
        if not self.files.exists(config_path):
            raise UserError(f"{what}: config {config_path} is missing from the archive")
        config_bytes = self.files.read(config_path, mf.MAX_METADATA)
        # 20.10 names the config <image id>.json, >= 25 blobs/sha256/<hex>: either way the
        # name is its digest, so check it.
        stem = posixpath.basename(config_path).removesuffix(".json")
        if mf.is_sha256("sha256:" + stem):
            mf.verify(config_bytes, "sha256:" + stem, f"{what} (config)")
        plat = mf.check_platform(config_bytes, platform, what)
        diff_ids = mf.config_diff_ids(config_bytes, what)
        if len(diff_ids) != len(item["Layers"]):
            raise UserError(f"{what}: config lists {len(diff_ids)} diff_ids for "
                            f"{len(item['Layers'])} layers")
        layers: list[dict[str, Any]] = []
        for path, diff_id in zip(item["Layers"], diff_ids, strict=True):
            where = self.files.member(path)
            if where is None:
                raise UserError(f"{what}: layer {path} is missing from the archive")
            # A blobs/sha256/<hex> member is named by its own digest (maybe compressed);
            # a 20.10 <v1 id>/layer.tar is the uncompressed layer: its digest is the diff_id.
            parts = path.split("/")
            named = "sha256:" + parts[-1]
            digest = named if parts[:2] == ["blobs", "sha256"] and mf.is_sha256(named) \
                else diff_id
            mf.hex_of(digest, f"{what}: layer {path}")
            self._layer_paths[digest] = path
            layers.append({"mediaType": mf.DOCKER_LAYER, "digest": digest, "size": where.size})
        return mf.image_from(ref, name, self.name, plat, "", config_bytes, layers)

    # -- LayerSource ---------------------------------------------------------------------------
    def resolve(self, ref: str, platform: Platform) -> ResolvedImage:
        """The image `ref` names in the archive, for `platform`."""
        parsed = reference.parse(ref)
        if self.files.exists("index.json") and self.files.exists("oci-layout"):
            # Docker >= 25: the OCI layout inside has manifest digests and media types.
            desc = self._layout.find(ref, parsed)
            if desc is not None:
                return self._layout.image(ref, parsed.name, desc, platform)
            image = self._from_manifest(ref, parsed, platform)
            if image is not None:
                return image
            raise self._layout.not_found(ref, self._tagged())
        if not self.manifest():
            raise UserError(f"{self.name}: not a docker save archive (no manifest.json "
                            "or index.json)")
        image = self._from_manifest(ref, parsed, platform)
        if image is None:
            have = ", ".join(self._tagged()) or "no images"
            raise NotFound(f"{self.name}: no image {ref} (it has: {have})")
        return image

    def sole_ref(self) -> str:
        """The reference of the one image the archive holds (for `docker-archive:FILE`)."""
        if self.files.exists("index.json") and self.files.exists("oci-layout") \
                and not self.manifest():
            return self._layout.sole_ref()
        tagged = self._tagged()
        if len(self.manifest()) == 1 and self.manifest()[0].get("RepoTags"):
            return self.manifest()[0]["RepoTags"][0]
        if not self.manifest():
            raise UserError(f"{self.name}: not a docker save archive (no manifest.json "
                            "or index.json)")
        if len(self.manifest()) == 1:  # untagged (docker save IMAGE-ID): nothing to name
            raise NotFound(f"{self.name}: its one image has no tag to find it by (it has: "
                           f"{tagged[0]}); save it by NAME:TAG")
        raise NotFound(f"{self.name}: holds {len(tagged)} images; name one as "
                       f"{self.name}:REF (it has: {', '.join(tagged)})")

    def open_blob(self, image: ResolvedImage, layer: LayerRef) -> BinaryIO:
        """The layer blob, read in place from the archive."""
        path = self._layer_paths.get(layer.digest)
        if path is None and not image.manifest_digest:
            # An image resolved by another DockerArchive object: find its members again.
            self.resolve(image.ref, Platform.parse(image.platform))
            path = self._layer_paths.get(layer.digest)
        if path is None:
            return self._layout.open_blob(image, layer)
        if not self.files.exists(path):
            raise UserError(f"{self.name}: {image.ref}: layer {path} is missing")
        return self.files.open(path)


class OCIArchive:
    """An OCI image layout packed in a tar as a `LayerSource` ("oci-archive:FILE"), read in
    place (skopeo's oci-archive transport writes these)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"oci-archive:{path}"
        self._reader = LayoutReader(TarFiles(path, self.name), self.name)

    def resolve(self, ref: str, platform: Platform) -> ResolvedImage:
        """The image `ref` names in the archive's layout, for `platform`."""
        return self._reader.resolve(ref, platform)

    def sole_ref(self) -> str:
        """The reference of the one image the archive holds."""
        return self._reader.sole_ref()

    def open_blob(self, image: ResolvedImage, layer: LayerRef) -> BinaryIO:
        """The layer blob, read in place from the archive."""
        return self._reader.open_blob(image, layer)
