"""Where images come from: one module per transport behind the interfaces in `base`.

`TRANSPORTS` names the layer sources `--from` can ask for (`oci:DIR`, `oci-archive:FILE`,
`docker-archive:FILE`, `registry`), each with whether it takes a path and how to open one;
the resolver looks them up here instead of telling them apart itself.  The Docker engine
(`engine`) is not among them: it exports a container rather than giving layers.  `reference`
normalises references as docker does; `manifest` reads manifests and indexes; `regauth` is
the registry's auth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusebundle.sources.archive import DockerArchive, OCIArchive
from fusebundle.sources.base import (
    ImageInfo,
    LayerRef,
    LayerSource,
    NotFound,
    Platform,
    ResolvedImage,
)
from fusebundle.sources.oci import OCILayout

if TYPE_CHECKING:  # the registry client (ssl, http) is imported only when one is opened
    from fusebundle.sources.regnet import Mirror


@dataclass(frozen=True)
class Options:
    """What the command line says to the layer sources it opens (only a registry uses any)."""

    insecure: tuple[str, ...] = ()  # registries that may be reached over plain HTTP
    cert_dir: str | None = None  # a certs.d tree instead of the system's
    mirrors: dict[str, list[Mirror]] | None = None  # regnet.parse_mirrors' table


@dataclass(frozen=True)
class Transport:
    """A kind of layer source: whether `--from` gives it a path, and how to open one."""

    takes_path: bool
    open: Callable[[str, Options], LayerSource]  # (path or "", the command's options)


def _registry(_path: str, o: Options) -> LayerSource:
    from fusebundle.sources.registry import Registry

    return Registry(insecure=o.insecure, cert_dir=o.cert_dir, mirrors=o.mirrors)


TRANSPORTS: dict[str, Transport] = {
    "oci": Transport(True, lambda path, _options: OCILayout(path)),
    "docker-archive": Transport(True, lambda path, _options: DockerArchive(path)),
    "oci-archive": Transport(True, lambda path, _options: OCIArchive(path)),
    "registry": Transport(False, _registry),
}

__all__ = ["TRANSPORTS", "ImageInfo", "Options", "LayerRef", "LayerSource", "NotFound", "Platform",
           "ResolvedImage", "Transport"]
