"""Image records: what a source said of an image, kept so that it needs no source next time.

One JSON file per (name, platform) under `<root>/images/`, named by a hash of the two and
written atomically.  The config is kept inline, base64, so its exact bytes (and so the image
ID) survive; its digest is checked when the record is read back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from fusebundle.atomic import TempName, atomic_file
from fusebundle.errors import UserError
from fusebundle.sources import LayerRef, ResolvedImage, jsondoc

VERSION = 1
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class BadRecord(Exception):
    """Internal: a record file that cannot be used; the text says why."""


def digest_hex(digest: str) -> str | None:
    """The hex of a "sha256:<64 hex>" digest; None for anything else (never a path)."""
    m = _DIGEST.fullmatch(digest)
    return m.group(1) if m else None


@dataclass
class ImageRecord:
    """A stored image and when it was stored."""

    image: ResolvedImage
    stored: str  # UTC, ISO 8601 to the second
    path: str


def file_name(name: str, platform: str) -> str:
    """The record's file name for a normalised reference and a platform."""
    return hashlib.sha256(f"{name}\n{platform}".encode()).hexdigest() + ".json"


def encode(image: ResolvedImage) -> bytes:
    """The record of `image`, as written to disk."""
    doc = {
        "version": VERSION,
        "name": image.name,
        "ref": image.ref,
        "platform": image.platform,
        "source": image.source,
        "manifestDigest": image.manifest_digest,
        "configDigest": image.config_digest,
        "config": base64.b64encode(image.config_bytes).decode("ascii"),
        "layers": [{"digest": x.digest, "diffID": x.diff_id, "mediaType": x.media_type,
                    "size": x.size} for x in image.layers],
        "stored": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


def _str(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise BadRecord(f"{key!r} is not a string")
    return value


def decode(data: bytes, path: str) -> ImageRecord:
    """Parse and check a record; BadRecord says what is wrong with it."""
    try:
        doc = jsondoc.parse(data, "record", "not JSON")
    except UserError as e:
        raise BadRecord(str(e).removeprefix("record: ")) from None
    if not isinstance(doc, dict) or type(doc.get("version")) is not int or \
            doc["version"] != VERSION:
        raise BadRecord("not a version 1 image record")
    name, platform = _str(doc, "name"), _str(doc, "platform")
    if os.path.basename(path) != file_name(name, platform):
        raise BadRecord(f"its file name does not match {name} {platform}")
    try:
        config = base64.b64decode(_str(doc, "config"), validate=True)
    except (binascii.Error, ValueError):  # ValueError: a str that is not ASCII
        raise BadRecord("'config' is not base64") from None
    want = _str(doc, "configDigest")
    if "sha256:" + hashlib.sha256(config).hexdigest() != want:
        raise BadRecord(f"the config does not match its digest {want}")
    try:
        # Checked as it was when the image was resolved: a record that passes here never
        # fails a command later.
        jsondoc.image_container_config(config, "its config")
    except UserError as e:
        raise BadRecord(str(e)) from None
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise BadRecord("'layers' is not a list")
    refs = []
    for x in layers:
        if not isinstance(x, dict):
            raise BadRecord("a layer is not an object")
        ref = LayerRef(_str(x, "digest"), _str(x, "diffID"), _str(x, "mediaType"),
                       x.get("size", -1) if isinstance(x.get("size"), int) else -1)
        if digest_hex(ref.digest) is None or digest_hex(ref.diff_id) is None:
            raise BadRecord(f"layer {ref.digest or '?'} has a malformed digest")
        refs.append(ref)
    image = ResolvedImage(ref=_str(doc, "ref"), name=name, source=_str(doc, "source"),
                          config_bytes=config, platform=platform, layers=refs,
                          manifest_digest=_str(doc, "manifestDigest"))
    return ImageRecord(image, _str(doc, "stored"), path)


def read(path: str) -> ImageRecord:
    """Read one record file; BadRecord if it is unreadable or corrupt."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BadRecord(f"cannot read it: {e.strerror or e}") from None
    return decode(data, path)


def write(directory: str, image: ResolvedImage) -> str:
    """Write the record of `image` atomically (atomic_file); its path."""
    path = os.path.join(directory, file_name(image.name, image.platform))
    with atomic_file(path, TempName("." + os.path.basename(path) + ".", ".tmp"), 0o644) as t, \
            os.fdopen(t.fd, "wb", closefd=False) as f:
        f.write(encode(image))
    return path


def scan(directory: str) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
    """Every record under `directory`, sorted by name and platform, and the corrupt ones
    as (path, why)."""
    good: list[ImageRecord] = []
    bad: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return good, bad
    for n in names:
        if n.startswith(".") or not n.endswith(".json"):
            continue
        path = os.path.join(directory, n)
        try:
            good.append(read(path))
        except BadRecord as e:
            bad.append((path, str(e)))
    good.sort(key=lambda r: (r.image.name, r.image.platform))
    return good, bad
