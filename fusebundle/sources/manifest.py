"""Manifests, indexes and configs as OCI and Docker write them: media types, platform choice,
checks, and the `ResolvedImage` they describe.

Every blob read here is checked against its digest first; a source hands in the bytes and
the names that make the error messages useful (the source, the image, the blob).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from fusebundle.errors import UserError
from fusebundle.sources import jsondoc
from fusebundle.sources.base import LayerRef, NotFound, Platform, ResolvedImage

# -- media types ------------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_ND = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP = OCI_LAYER_ND + "+gzip"
OCI_LAYER_ND_ZSTD = OCI_LAYER_ND + "+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_LAYER_ZSTD = DOCKER_LAYER + ".zstd"
DOCKER_FOREIGN_LAYER_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
# What a layer may be; the store sniffs the real compression from the bytes.
LAYER_TYPES = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_ND, OCI_LAYER_ND_GZIP,
    OCI_LAYER_ND_ZSTD, DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_ZSTD,
    DOCKER_FOREIGN_LAYER_GZIP,
})

# Annotations an OCI layout's index.json names its images with.
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
_REFERENCE_TYPE = "vnd.docker.reference.type"
_ATTESTATION = "attestation-manifest"

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
# A manifest or config bigger than this is not one (a hostile file must not fill memory).
MAX_METADATA = 8 << 20


# -- digests ----------------------------------------------------------------------------------
def is_sha256(digest: Any) -> bool:
    """True for "sha256:<64 lowercase hex>", the only digest algorithm fusebundle handles."""
    return isinstance(digest, str) and _SHA256.fullmatch(digest) is not None


def hex_of(digest: str, what: str) -> str:
    """The hex part of a sha256 digest; UserError naming `what` for anything else."""
    if not is_sha256(digest):
        shown = digest if isinstance(digest, str) else repr(digest)
        raise UserError(f"{what}: digest {shown[:80]} is not sha256:<64 hex> "
                        "(only sha256 is supported)")
    return digest[7:]


def verify(data: bytes, digest: str, what: str) -> bytes:
    """`data` if its sha256 is `digest`; else a one-line UserError ("WHAT: blob D is corrupt")."""
    hex_of(digest, what)
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise UserError(f"{what}: blob {digest} is corrupt (its content hashes to {actual})")
    return data


def load_json(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from `data`, its depth bounded; one-line UserError naming `what` otherwise."""
    return jsondoc.parse_object(data, what)


def own_media_type(doc: dict[str, Any], what: str) -> str | None:
    """A manifest's or index's own mediaType (None when it has none, as OCI allows)."""
    if doc.get("mediaType") is None:
        return None
    return jsondoc.Fields(doc, what).string("mediaType")


_PLATFORM_STRINGS = ("os", "architecture", "variant")  # the fields of a platform read here


def _platform(fields: jsondoc.Fields) -> None:
    """A platform object's fields as the OCI spec's Platform struct types them (strings)."""
    for key in _PLATFORM_STRINGS:
        fields.string(key)


def _descriptor(desc: Any, what: str, kind: str) -> dict[str, Any]:
    """A descriptor with a str mediaType, a sha256 digest and a size of 0 or more bytes.

    Its platform, when there is one, is an object of strings and its annotations a
    map[string]string, as the OCI spec's Descriptor struct decodes them.
    """
    if not isinstance(desc, dict):
        raise UserError(f"{what}: {kind} descriptor is not an object")
    if not isinstance(desc.get("mediaType"), str):
        raise UserError(f"{what}: {kind} descriptor has no mediaType")
    hex_of(desc.get("digest"), f"{what}: {kind}")
    # OCI requires the size: it is what bounds reading the blob (as containerd, which refuses
    # any other size).
    if "size" not in desc:
        raise UserError(f"{what}: {kind} {desc['digest']} has no size (a descriptor must "
                        "give one)")
    size = desc["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise UserError(f"{what}: {kind} {desc['digest']} has a bad size {size!r}")
    plat, annotations = desc.get("platform"), desc.get("annotations")
    # The common case checked inline (an index may list tens of thousands of descriptors);
    # `Fields` words the message when something is off.
    if not (plat is None or isinstance(plat, dict) and _strings_only(plat, _PLATFORM_STRINGS)) \
            or not (annotations is None or isinstance(annotations, dict)
                    and _strings_only(annotations, annotations)):
        fields = jsondoc.Fields(desc, f"{what}: {kind} {desc['digest']}")
        if (platform_fields := fields.obj("platform")) is not None:
            _platform(platform_fields)
        fields.string_map("annotations")
    return desc


def _strings_only(obj: dict[str, Any], keys: Any) -> bool:
    return all(isinstance(obj[k], str) for k in keys if k in obj)


# -- indexes ----------------------------------------------------------------------------------
def is_attestation(desc: dict[str, Any]) -> bool:
    """True for buildkit's attestation manifests (provenance, SBOM): never an image to run."""
    annotations = desc.get("annotations") or {}
    plat = desc.get("platform") or {}
    return (isinstance(annotations, dict) and annotations.get(_REFERENCE_TYPE) == _ATTESTATION
            or (plat.get("os"), plat.get("architecture")) == ("unknown", "unknown"))


def platform_text(plat: dict[str, Any]) -> str:
    """"linux/arm64/v8" from an index descriptor's platform object."""
    parts = [plat.get("os"), plat.get("architecture"), plat.get("variant")]
    return "/".join(str(p) for p in parts if p)


def manifests_of(index: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """The checked descriptors of an image index or manifest list."""
    items = index.get("manifests")
    if not isinstance(items, list):
        raise UserError(f"{what}: not an image index (no manifests list)")
    return [_descriptor(d, what, "manifest") for d in items]


def choose(index: dict[str, Any], platform: Platform, what: str) -> dict[str, Any]:
    """The descriptor of `index` (OCI index or Docker manifest list) for `platform`.

    Attestation manifests are skipped; a descriptor without a platform is taken only when no
    descriptor names one that matches.  NotFound lists the platforms there are.
    """
    images = [d for d in manifests_of(index, what)
              if not is_attestation(d) and d["mediaType"] in MANIFEST_TYPES | INDEX_TYPES]
    for desc in images:
        plat = desc.get("platform")
        if isinstance(plat, dict) and platform.matches(plat):
            return desc
    unnamed = [d for d in images if not isinstance(d.get("platform"), dict)]
    if unnamed:
        return unnamed[0]
    there = sorted({platform_text(d["platform"]) for d in images})
    raise NotFound(f"{what}: no image for platform {platform} "
                   f"(it has: {', '.join(there) if there else 'none'})")


def config_diff_ids(config_bytes: bytes, what: str) -> list[Any]:
    """The rootfs.diff_ids of an image config, after checking every field fusebundle reads."""
    config = load_json(config_bytes, f"{what}: config")
    jsondoc.container_config(config.get("config"), f"{what}: config")
    rootfs = jsondoc.Fields(config, f"{what}: config").obj("rootfs")
    if rootfs is None or not isinstance(rootfs.doc.get("diff_ids"), list):
        raise UserError(f"{what}: config has no rootfs.diff_ids")
    if rootfs.string("type", "layers") != "layers":
        raise UserError(f"{what}: config rootfs.type is {rootfs.doc.get('type')!r}, not 'layers'")
    return list(rootfs.doc["diff_ids"])


# -- manifests and configs --------------------------------------------------------------------
def parse_manifest(data: bytes, what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The config descriptor and the layer descriptors (bottom first) of an image manifest."""
    doc = load_json(data, what)
    media_type = own_media_type(doc, what)
    if media_type in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED) or doc.get(
            "schemaVersion") == 1:
        raise UserError(f"{what}: Docker schema 1 manifests are not supported")
    if media_type in INDEX_TYPES or (media_type is None and "manifests" in doc):
        raise UserError(f"{what}: an image index where an image manifest was expected")
    if media_type is not None and media_type not in MANIFEST_TYPES:
        raise UserError(f"{what}: unknown manifest media type {media_type!r}")
    if doc.get("schemaVersion") != 2:
        raise UserError(f"{what}: schemaVersion is {doc.get('schemaVersion')!r}, not 2")
    config = _descriptor(doc.get("config"), what, "config")
    if config["mediaType"] not in CONFIG_TYPES:
        raise UserError(f"{what}: not a container image (config media type "
                        f"{config['mediaType']!r})")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise UserError(f"{what}: manifest has no layers list")
    checked = [_descriptor(d, what, "layer") for d in layers]
    for desc in checked:
        if desc["mediaType"] not in LAYER_TYPES:
            raise UserError(f"{what}: layer {desc['digest']} has an unknown media type "
                            f"{desc['mediaType']!r}")
    return config, checked


def config_platform(config: dict[str, Any], what: str) -> dict[str, str]:
    """The platform object (os, architecture, variant) an image config declares."""
    fields = jsondoc.Fields(config, what)
    return {k: v for k in ("os", "architecture", "variant") if (v := fields.string(k))}


def check_platform(config_bytes: bytes, platform: Platform, what: str) -> str:
    """The config's platform ("linux/amd64"); NotFound if it declares another than `platform`.

    A config that declares none is taken as `platform` (nothing says otherwise).
    """
    plat = config_platform(load_json(config_bytes, what + ": config"), what + ": config")
    if "os" not in plat or "architecture" not in plat:
        return str(platform)
    if not platform.matches(plat):
        raise NotFound(f"{what}: no image for platform {platform} "
                       f"(it has: {platform_text(plat)})")
    return platform_text(plat)


def image_from(ref: str, name: str, source: str, platform: str, manifest_digest: str,
               config_bytes: bytes, layers: list[dict[str, Any]]) -> ResolvedImage:
    """Check a config against its layer descriptors and make the `ResolvedImage` they are."""
    what = f"{source}: {ref}"
    diff_ids = config_diff_ids(config_bytes, what)
    if len(diff_ids) != len(layers):
        raise UserError(f"{what}: config lists {len(diff_ids)} diff_ids for "
                        f"{len(layers)} layers")
    refs: list[LayerRef] = []
    for i, (diff_id, desc) in enumerate(zip(diff_ids, layers, strict=True)):
        hex_of(diff_id, f"{what}: diff_id {i}")
        desc = _descriptor(desc, what, "layer")
        refs.append(LayerRef(desc["digest"], diff_id, desc["mediaType"], desc["size"]))
    return ResolvedImage(ref=ref, name=name, source=source, config_bytes=config_bytes,
                         platform=platform, layers=refs, manifest_digest=manifest_digest)
