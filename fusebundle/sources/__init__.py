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
from fusebundle.sources.registry import Registry


@dataclass(frozen=True)
class Transport:
    """A kind of layer source: whether `--from` gives it a path, and how to open one."""

    takes_path: bool
    open: Callable[[str, tuple[str, ...]], LayerSource]  # (path or "", insecure registries)


TRANSPORTS: dict[str, Transport] = {
    "oci": Transport(True, lambda path, _insecure: OCILayout(path)),
    "docker-archive": Transport(True, lambda path, _insecure: DockerArchive(path)),
    "oci-archive": Transport(True, lambda path, _insecure: OCIArchive(path)),
    "registry": Transport(False, lambda _path, insecure: Registry(insecure=insecure)),
}

__all__ = ["TRANSPORTS", "ImageInfo", "LayerRef", "LayerSource", "NotFound", "Platform",
           "ResolvedImage", "Transport"]
