"""What every image handle offers, whatever it came from: a store's layers, an engine's export
or an OCI layout made for a volume.  Nothing outside `images` asks which kind it holds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from fusebundle.sources import ImageInfo
from fusebundle.tar import TarIndex


@dataclass
class Pulled:
    """What `pull` did for one image: the line it prints, and what it counts."""

    line: str
    layers: int = 0  # layers fetched
    present: int = 0  # layers already in the store
    bytes: int = 0  # bytes of the layers fetched
    exported: int = 0  # engine exports made


class ImageHandle(Protocol):
    """An image whose export can be indexed on demand."""

    info: ImageInfo

    def index(self) -> TarIndex:
        """The index of the image's export (fetched, exported or merged the first time)."""
        ...

    def nested_index(self, name: bytes) -> TarIndex:
        """The index of a tar file inside the image (a kernel tar)."""
        ...


class PullableImage(ImageHandle, Protocol):
    """A handle a config names directly: it can be pulled, and saved as `docker save` does."""

    def pull(self, ref: str) -> Pulled:
        """Make the image present (store or cache); what was done."""
        ...

    def save(self, image_id: str) -> Iterator[bytes]:
        """The image as `docker save` writes it, in chunks (for volumes: format: oci)."""
        ...
