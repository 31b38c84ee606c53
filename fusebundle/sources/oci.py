"""An OCI image layout as a source: LinuxKit's cache, `skopeo copy ... oci:DIR`, buildx output.

The layout is read through a tiny file interface (`Files`), so the same reader serves a
directory (`OCILayout`) and the layout inside a Docker >= 25 `docker save` tar
(`sources.archive`).  Blobs nothing chosen needs may be absent (LinuxKit keeps only the
chosen platform's); every manifest, index and config read is checked against its digest.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
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


def is_blob(path: str) -> bool:
    """True for a path under blobs/: those must be regular files, never links."""
    return path.startswith("blobs/")


def not_regular(what: str, kind: str) -> UserError:
    """The one line for a blob that is a symlink, a FIFO, a directory, ..."""
    return UserError(f"{what} is a {kind}, not a regular file (a layout's blobs must be)")


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISLNK, "symlink"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return word
    return "special file"


class DirFiles:
    """`Files` over a directory of the file system.

    Blobs are taken only as regular files, never through a symlink (as go-containerregistry's
    layout reader): a link could put any file the user can read into the store.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path)

    def exists(self, path: str) -> bool:
        if not is_blob(path):
            return os.path.isfile(self._path(path))
        try:
            mode = os.lstat(self._path(path)).st_mode
        except OSError:
            return False
        if not stat.S_ISREG(mode):
            raise not_regular(self._path(path), _kind(mode))
        return True

    def read(self, path: str, limit: int = mf.MAX_METADATA) -> bytes:
        with self.open(path) as f:
            return read_limited(f, limit, f"{self._path(path)}: larger than {limit} bytes")

    def open(self, path: str) -> BinaryIO:
        full = self._path(path)
        if not is_blob(path):
            try:
                return open(full, "rb")
            except OSError as e:
                raise UserError(f"{full}: {e.strerror or e}") from None
        try:
            # No link followed, and a FIFO put in the blob's place cannot block the open.
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise not_regular(full, "symlink") from None
            raise UserError(f"{full}: {e.strerror or e}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise not_regular(full, _kind(mode))
        return os.fdopen(fd, "rb")


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


class _Names:
    """index.json's descriptors by the names of each matching rule, the first in index order
    for each name, so that a lookup costs the same in a layout of ten images or 10,000 (each
    name is normalised once, not once per lookup).

    The rules, in order: the exact ref.name; ref.name normalised (when it looks like a
    reference, not a bare tag); the containerd name normalised; the tag alone (ref.name), on
    descriptors without a containerd name that is a reference.
    """

    def __init__(self, descriptors: list[dict[str, Any]]) -> None:
        self.ref_name: dict[str, dict[str, Any]] = {}
        self.normalised: dict[str, dict[str, Any]] = {}
        self.containerd: dict[str, dict[str, Any]] = {}
        self.tag: dict[str, list[dict[str, Any]]] = {}
        for desc in descriptors:
            annotations = desc.get("annotations")
            annotations = annotations if isinstance(annotations, dict) else {}
            ref_name = annotations.get(mf.REF_NAME)
            ctr_name = annotations.get(mf.CONTAINERD_NAME)
            ctr = reference.normalise(ctr_name) if isinstance(ctr_name, str) else None
            if ctr is not None:
                self.containerd.setdefault(ctr, desc)
            if not isinstance(ref_name, str):
                continue
            self.ref_name.setdefault(ref_name, desc)
            if _looks_like_reference(ref_name) and \
                    (name := reference.normalise(ref_name)) is not None:
                self.normalised.setdefault(name, desc)
            if ctr is None:
                self.tag.setdefault(ref_name, []).append(desc)


class LayoutReader:
    """Resolves references in an OCI image layout read through `files`; `name` heads messages."""

    def __init__(self, files: Files, name: str) -> None:
        self.files = files
        self.name = name
        self._index: dict[str, Any] | None = None
        self._by_name: _Names | None = None

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
        what it holds when it holds several (or none)."""
        have = self.available()
        if len(self.index()["manifests"]) == 1 and have:
            # An image without a name (skopeo copy ... oci:DIR) is found by its digest.
            return have[0] if not have[0].startswith("@") else "unnamed" + have[0]
        shown = ", ".join(have[:_LISTED]) or "no images"
        holds = "no image" if not have else f"{len(have)} images"
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
    def _lookup(self) -> _Names:
        """index.json's descriptors by each name a reference can match (built once)."""
        if self._by_name is None:
            self._by_name = _Names(self.index()["manifests"])
        return self._by_name

    def find(self, ref: str, parsed: reference.Reference) -> dict[str, Any] | None:
        """The index.json descriptor `ref` (parsed: `parsed`) names, or None."""
        if parsed.digest:
            return self._by_digest(self.index()["manifests"], parsed.digest)
        names = self._lookup()
        for tier, key in ((names.ref_name, ref), (names.normalised, parsed.name),
                          (names.containerd, parsed.name)):
            if key in tier:
                return tier[key]
        # The tag alone, as Docker >= 25 and skopeo write it, unless the descriptor's
        # containerd name says it is another image with that tag.
        tagged = names.tag.get(parsed.tag, [])
        digests = {d["digest"] for d in tagged}
        if len(digests) > 1:
            raise UserError(f"{self.name}: {ref}: the tag {parsed.tag!r} alone names "
                            f"{len(digests)} different images; name it in full")
        return tagged[0] if tagged else None

    def _by_digest(self, top: list[dict[str, Any]], digest: str) -> dict[str, Any] | None:
        """A descriptor with `digest`: in index.json, else in the indexes it holds."""
        queue = collections.deque(top)
        seen: set[str] = set()
        while queue:
            desc = queue.popleft()
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
        size = desc["size"]
        if size > mf.MAX_METADATA:
            raise UserError(f"{what}: {kind} {digest} is {size} bytes, too big for a {kind}")
        data = mf.verify(self.files.read(path, mf.MAX_METADATA), digest, f"{what} ({kind})")
        if len(data) != size:
            raise UserError(f"{what}: {kind} blob {digest} is {len(data)} bytes, its "
                            f"descriptor says {size}")
        return data

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
