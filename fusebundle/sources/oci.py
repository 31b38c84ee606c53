"""An OCI image layout as a source: LinuxKit's cache, `skopeo copy ... oci:DIR`, buildx output.

The layout is read through a tiny file interface (`Files`), so the same reader serves a
directory (`OCILayout`) and the layout inside a Docker >= 25 `docker save` tar
(`sources.archive`).  Blobs nothing chosen needs may be absent (LinuxKit keeps only the
chosen platform's); every manifest, index and config read is checked against its digest.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Protocol

from fusebundle.errors import UserError
from fusebundle.sources import manifest as mf
from fusebundle.sources import reference
from fusebundle.sources.base import LayerRef, NotFound, Platform, ResolvedImage

_MAX_DEPTH = 4  # index -> index -> manifest is the deepest seen; a cycle must end
_LISTED = 12  # names a "no image" message shows before "and N more"


class Files(Protocol):
    """Read access to a tree of files by relative path ("index.json", "blobs/sha256/<hex>")."""

    def exists(self, path: str) -> bool:
        """True if `path` is a regular file (or a link to one) in the tree."""
        ...

    def read(self, path: str, limit: int = mf.MAX_METADATA) -> bytes:
        """The whole file; UserError if it is larger than `limit` bytes."""
        ...

    def open(self, path: str) -> BinaryIO:
        """The file, open for reading as a binary stream."""
        ...


def read_limited(f: BinaryIO, limit: int, too_big: str) -> bytes:
    """All of `f` when it holds at most `limit` bytes; UserError(too_big) when it holds more."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise UserError(too_big)
    return data


class DirFiles:
    """`Files` over a directory of the file system."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path)

    def exists(self, path: str) -> bool:
        return os.path.isfile(self._path(path))

    def read(self, path: str, limit: int = mf.MAX_METADATA) -> bytes:
        with self.open(path) as f:
            return read_limited(f, limit, f"{self._path(path)}: larger than {limit} bytes")

    def open(self, path: str) -> BinaryIO:
        try:
            return open(self._path(path), "rb")
        except OSError as e:
            raise UserError(f"{self._path(path)}: {e.strerror or e}") from None


def blob_path(digest: str, what: str) -> str:
    """Where a layout keeps the blob `digest` (only sha256 is supported)."""
    return "blobs/sha256/" + mf.hex_of(digest, what)


def _names(desc: dict[str, Any]) -> list[str]:
    annotations = desc.get("annotations")
    if not isinstance(annotations, dict):
        return []
    return [v for k in (mf.REF_NAME, mf.CONTAINERD_NAME)
            if isinstance(v := annotations.get(k), str) and v]


def _looks_like_reference(name: str) -> bool:
    # A bare tag ("3.13", "latest") would normalise to a Docker Hub library image.
    return "/" in name or ":" in name or "@" in name


class LayoutReader:
    """Resolves references in an OCI image layout read through `files`; `name` heads messages."""

    def __init__(self, files: Files, name: str) -> None:
        self.files = files
        self.name = name
        self._index: dict[str, Any] | None = None

    # -- the layout ---------------------------------------------------------------------------
    def index(self) -> dict[str, Any]:
        """index.json, after checking that this is an OCI layout at all."""
        if self._index is None:
            if not self.files.exists("oci-layout"):
                raise UserError(f"{self.name}: not an OCI image layout (no oci-layout file)")
            layout = mf.load_json(self.files.read("oci-layout", mf.MAX_METADATA),
                                  f"{self.name}: oci-layout")
            version = layout.get("imageLayoutVersion")
            if not isinstance(version, str) or not version.startswith("1."):
                raise UserError(f"{self.name}: unsupported imageLayoutVersion {version!r}")
            if not self.files.exists("index.json"):
                raise UserError(f"{self.name}: not an OCI image layout (no index.json)")
            index = mf.load_json(self.files.read("index.json", mf.MAX_METADATA),
                                 f"{self.name}: index.json")
            mf.manifests_of(index, f"{self.name}: index.json")
            self._index = index
        return self._index

    def available(self) -> list[str]:
        """What the layout names its images (ref.name and containerd names, else digests)."""
        seen: dict[str, None] = {}
        for desc in self.index()["manifests"]:
            for name in _names(desc) or [f"@{desc['digest']}"]:
                seen.setdefault(name)
        return list(seen)

    def sole_ref(self) -> str:
        """The name of the layout's one image (for `oci:DIR` with no REF); NotFound naming
        what it holds when it holds several or one without a name."""
        have = self.available()
        if len(self.index()["manifests"]) == 1 and have and not have[0].startswith("@"):
            return have[0]
        shown = ", ".join(have[:_LISTED]) or "no images"
        holds = "no named image" if len(have) <= 1 else f"{len(have)} images"
        raise NotFound(f"{self.name}: holds {holds}; name one as {self.name}:REF "
                       f"(it has: {shown})")

    def not_found(self, ref: str, extra: list[str] | None = None) -> NotFound:
        """NotFound("SOURCE: no image REF (it has: a, b, c)")."""
        have = list(dict.fromkeys(self.available() + (extra or [])))
        shown = ", ".join(have[:_LISTED]) or "no images"
        if len(have) > _LISTED:
            shown += f" and {len(have) - _LISTED} more"
        return NotFound(f"{self.name}: no image {ref} (it has: {shown})")

    # -- finding the descriptor ----------------------------------------------------------------
    def find(self, ref: str, parsed: reference.Reference) -> dict[str, Any] | None:
        """The index.json descriptor `ref` (parsed: `parsed`) names, or None."""
        top = self.index()["manifests"]
        if parsed.digest:
            return self._by_digest(top, parsed.digest)
        tiers: list[list[dict[str, Any]]] = [[], [], [], []]
        for desc in top:
            annotations = desc.get("annotations")
            annotations = annotations if isinstance(annotations, dict) else {}
            ref_name = annotations.get(mf.REF_NAME)
            ctr_name = annotations.get(mf.CONTAINERD_NAME)
            if ref_name == ref:
                tiers[0].append(desc)
            elif isinstance(ref_name, str) and _looks_like_reference(ref_name) and \
                    reference.normalise(ref_name) == parsed.name:
                tiers[1].append(desc)
            elif isinstance(ctr_name, str) and reference.normalise(ctr_name) == parsed.name:
                tiers[2].append(desc)
            # The tag alone, as Docker >= 25 and skopeo write it, unless the descriptor's
            # containerd name says it is another image with that tag.
            elif ref_name == parsed.tag and (
                    not isinstance(ctr_name, str) or reference.normalise(ctr_name) is None):
                tiers[3].append(desc)
        for n, tier in enumerate(tiers):
            digests = {d["digest"] for d in tier}
            if n == 3 and len(digests) > 1:
                raise UserError(f"{self.name}: {ref}: the tag {parsed.tag!r} alone names "
                                f"{len(digests)} different images; name it in full")
            if tier:
                return tier[0]
        return None

    def _by_digest(self, top: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
        """A descriptor with `digest`: in index.json, else in the indexes it holds."""
        queue = list(top)
        seen: set[str] = set()
        while queue:
            desc = queue.pop(0)
            if desc["digest"] == digest:
                return desc
            if desc["mediaType"] not in mf.INDEX_TYPES or desc["digest"] in seen:
                continue
            seen.add(desc["digest"])
            path = blob_path(desc["digest"], self.name)
            if not self.files.exists(path):
                continue  # another platform's index, not kept here
            data = self._read_blob(desc, "index", f"{self.name}: {desc['digest']}")
            queue.extend(mf.manifests_of(mf.load_json(data, f"{self.name}: index"), self.name))
        return None

    # -- reading the image ---------------------------------------------------------------------
    def _read_blob(self, desc: dict[str, Any], kind: str, what: str) -> bytes:
        digest = desc["digest"]
        path = blob_path(digest, what)
        if not self.files.exists(path):
            raise UserError(f"{what}: {kind} blob {digest} is missing from the layout")
        size = desc.get("size", -1)
        if size > mf.MAX_METADATA:
            raise UserError(f"{what}: {kind} {digest} is {size} bytes, too big for a {kind}")
        data = self.files.read(path, mf.MAX_METADATA)
        return mf.verify(data, digest, f"{what} ({kind})")

    def resolve(self, ref: str, platform: Platform) -> ResolvedImage:
        """The image `ref` names, for `platform`; NotFound if the layout does not have it."""
        parsed = reference.parse(ref)
        desc = self.find(ref, parsed)
        if desc is None:
            raise self.not_found(ref)
        return self.image(ref, parsed.name, desc, platform)

    def image(self, ref: str, name: str, desc: dict[str, Any], platform: Platform
              ) -> ResolvedImage:
        """The image behind descriptor `desc` (a manifest, or an index to choose from)."""
        what = f"{self.name}: {ref}"
        for _ in range(_MAX_DEPTH):
            if desc["mediaType"] in mf.INDEX_TYPES:
                index = mf.load_json(self._read_blob(desc, "index", what), f"{what} (index)")
                desc = mf.choose(index, platform, what)
                continue
            if desc["mediaType"] not in mf.MANIFEST_TYPES:
                raise UserError(f"{what}: unknown manifest media type {desc['mediaType']!r}")
            data = self._read_blob(desc, "manifest", what)
            config_desc, layers = mf.parse_manifest(data, f"{what} (manifest)")
            config_bytes = self._read_blob(config_desc, "config", what)
            plat = mf.check_platform(config_bytes, platform, what)
            return mf.image_from(ref, name, self.name, plat, desc["digest"], config_bytes,
                                 layers)
        raise UserError(f"{what}: image indexes nested more than {_MAX_DEPTH} deep")

    def open_blob(self, image: ResolvedImage, layer: LayerRef) -> BinaryIO:
        """The layer blob as the layout stores it."""
        what = f"{self.name}: {image.ref}"
        path = blob_path(layer.digest, what)
        if not self.files.exists(path):
            raise UserError(f"{what}: layer blob {layer.digest} is missing from the layout")
        return self.files.open(path)


class OCILayout:
    """An OCI image layout directory as a `LayerSource` ("oci:DIR")."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.name = f"oci:{path}"
        self._reader = LayoutReader(DirFiles(path), self.name)

    def resolve(self, ref: str, platform: Platform) -> ResolvedImage:
        """The image `ref` names in this layout, for `platform`."""
        if not os.path.isdir(self.path):
            raise UserError(f"{self.name}: no such directory")
        return self._reader.resolve(ref, platform)

    def sole_ref(self) -> str:
        """The name of the layout's one image."""
        if not os.path.isdir(self.path):
            raise UserError(f"{self.name}: no such directory")
        return self._reader.sole_ref()

    def open_blob(self, image: ResolvedImage, layer: LayerRef) -> BinaryIO:
        """A stream of the layer's blob, as stored (compressed or not)."""
        return self._reader.open_blob(image, layer)
