"""What an image source gives: an image's config and its ordered layers, and the layers' bytes.

Every transport (an OCI layout, a `docker save` archive, a registry) resolves a reference to a
`ResolvedImage` and opens the blobs its `LayerRef`s name; the store verifies and decompresses
them.  The engine is the odd one out: it exports a container instead (`sources.engine`).
"""

from __future__ import annotations

import hashlib
import platform as _platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from fusebundle.errors import ConfigError, UserError
from fusebundle.sources import jsondoc

_MACHINE_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
                 "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
                 "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


Progress = Callable[[int], None]


@dataclass
class ImageInfo:
    """What the engine says of one image reference: its ID and its config."""

    ref: str
    id: str
    config: dict[str, Any]
    size: int = 0

    @property
    def hex(self) -> str:
        """The ID without its algorithm prefix, safe as a file name."""
        return self.id.split(":", 1)[-1]


class ImageSource(Protocol):
    """Somewhere images come from: a Docker engine today, archives later."""

    def inspect(self, ref: str, pull: bool) -> ImageInfo: ...

    def export(self, info: ImageInfo, out: Any, progress: Progress | None) -> None: ...

    def save(self, image_id: str) -> Iterator[bytes]: ...


class NotFound(UserError):
    """This source does not have the image; the message says what it has instead."""


class RegistryError(UserError):
    """A registry refused, failed or sent something wrong; one line naming it.  Defined here,
    not in `regauth` (which raises it), so that catching it loads no registry code."""


@dataclass(frozen=True)
class Platform:
    """os/architecture[/variant], as image indexes and `--platform` write it."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse "linux/amd64" or "linux/arm64/v8"; ConfigError (exit 2) on anything else."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(f"platform {text!r}: expected OS/ARCH or OS/ARCH/VARIANT")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        """The platform of this machine (linux/amd64 on x86_64)."""
        machine = _platform.machine().lower()
        return cls("linux", _MACHINE_ARCH.get(machine, machine))

    def matches(self, desc: dict[str, Any]) -> bool:
        """True if an index descriptor's `platform` object is this platform."""
        if desc.get("os") != self.os or desc.get("architecture") != self.architecture:
            return False
        want = self.variant or _DEFAULT_VARIANT.get(self.architecture, "")
        have = desc.get("variant") or _DEFAULT_VARIANT.get(self.architecture, "")
        return not want or want == have

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class LayerRef:
    """One layer of an image: its blob as the source stores it, and the tar it holds."""

    digest: str  # "sha256:<hex>" of the blob (compressed or not)
    diff_id: str  # "sha256:<hex>" of the uncompressed tar, from the config's rootfs.diff_ids
    media_type: str
    size: int = -1  # the blob's size, when known


@dataclass
class ResolvedImage:
    """An image a source found: its exact config bytes and its layers, bottom first."""

    ref: str  # as the YAML wrote it
    name: str  # normalised: docker.io/library/alpine:latest (or ...@sha256:...)
    source: str  # the source that found it, e.g. "oci:/root/.linuxkit/cache"
    config_bytes: bytes
    platform: str  # e.g. "linux/amd64"
    layers: list[LayerRef] = field(default_factory=list)
    manifest_digest: str = ""  # "" where the source has no manifest (docker save 20.10)

    @property
    def config_digest(self) -> str:
        """sha256 of the config blob: the image ID, whatever the source."""
        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()

    @property
    def config(self) -> dict[str, Any]:
        """The config's `config` object (Env, Entrypoint, Cmd, WorkingDir, Labels, ...), its
        fields decoded as Docker decodes them; UserError if one has the wrong type."""
        return jsondoc.image_container_config(self.config_bytes,
                                              f"{self.source}: {self.ref}: config")


class LayerSource(Protocol):
    """A transport that holds images as layers (an OCI layout, a save archive, a registry)."""

    name: str  # how messages name it: "oci:./layout", "docker-archive:images.tar"

    def resolve(self, ref: str, platform: Platform) -> ResolvedImage:
        """The image `ref` names for `platform`; NotFound if this source has no such image."""
        ...

    def open_blob(self, image: ResolvedImage, layer: LayerRef) -> BinaryIO:
        """A stream of the layer blob's bytes, as stored (the store checks the digests)."""
        ...
