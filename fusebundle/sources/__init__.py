"""Where images come from: one module per transport behind the interfaces in `base`.

`TRANSPORTS` names the layer sources `--from` can ask for (`oci:DIR`, `oci-archive:FILE`,
`docker-archive:FILE`, `registry`), each with whether it takes a path and the module and class
that implement it, imported the first time a reference needs that transport: a mount of images
already in the store loads none of them (nor httpx, the registry's auth or mirrors).  The
resolver looks them up here instead of telling them apart itself.  The Docker engine
(`engine`) is not among them: it exports a container rather than giving layers.  `reference`
normalises references as docker does; `manifest` reads manifests and indexes; `regauth` is
the registry's auth.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusebundle.errors import UserError
from fusebundle.sources.base import (
    ImageInfo,
    LayerRef,
    LayerSource,
    NotFound,
    Platform,
    ResolvedImage,
)

if TYPE_CHECKING:
    from fusebundle.sources.regnet import Mirror


@dataclass(frozen=True)
class Options:
    """What the command line says to the layer sources it opens (only a registry uses any)."""

    insecure: tuple[str, ...] = ()  # registries that may be reached over plain HTTP
    cert_dir: str | None = None  # a certs.d tree instead of the system's
    mirrors: dict[str, list[Mirror]] | None = None  # regnet.parse_mirrors' table


@dataclass(frozen=True)
class Transport:
    """A kind of layer source: whether `--from` gives it a path, and the module and class that
    open one (the class takes the path, or for a path-less transport the command's options)."""

    name: str
    takes_path: bool
    module: str  # under fusebundle.sources
    cls: str

    def open(self, path: str, options: Options) -> LayerSource:
        """A source of this transport at `path` ("" when it takes none); imports its module
        the first time, and says in one line if it cannot be."""
        try:
            module = importlib.import_module(f"fusebundle.sources.{self.module}")
        except ImportError as e:
            raise UserError(f"the {self.name} transport cannot be loaded: {e}") from None
        cls: Callable[..., LayerSource] = getattr(module, self.cls)
        if self.takes_path:
            return cls(path)
        return cls(insecure=options.insecure, cert_dir=options.cert_dir, mirrors=options.mirrors)


TRANSPORTS: dict[str, Transport] = {t.name: t for t in (
    Transport("oci", True, "oci", "OCILayout"),
    Transport("docker-archive", True, "archive", "DockerArchive"),
    Transport("oci-archive", True, "archive", "OCIArchive"),
    Transport("registry", False, "registry", "Registry"),
)}

__all__ = ["TRANSPORTS", "ImageInfo", "Options", "LayerRef", "LayerSource", "NotFound", "Platform",
           "ResolvedImage", "Transport"]
