"""Image references in skopeo's spelling: a transport, where it is, and the image in it.

    docker://NAME[:TAG|@DIGEST]     a registry
    docker-daemon:NAME[:TAG]        the Docker engine
    oci:DIR[:REF]                   an OCI layout directory (REF: its ref.name; none: its one image)
    oci-archive:FILE[:REF]          an OCI layout in a tar
    docker-archive:FILE[:REF]       a `docker save` tar
    NAME                            the default order (store, engine, registry) or --from

As in skopeo, a transport's name ends at the first ':' (`oci:DIR:REF` splits there and at the
next one), and anything that is not a transport is an image name (`foo:bar` is foo, tag bar).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fusebundle.errors import ConfigError

# Transport -> the resolver's source kind (see resolver.parse_spec).
_KINDS = {"docker": "registry", "docker-daemon": "docker", "oci": "oci",
          "oci-archive": "oci-archive", "docker-archive": "docker-archive"}
_PATHS = ("oci", "oci-archive", "docker-archive")
SPELLINGS = ("docker://NAME, docker-daemon:NAME, oci:DIR[:REF], oci-archive:FILE[:REF], "
             "docker-archive:FILE[:REF] or a bare NAME")


@dataclass(frozen=True)
class ImageSpec:
    """One spelled image: which source kind (None: the default order), its path, the name."""

    kind: str | None  # "registry", "docker", "oci", "oci-archive", "docker-archive"
    path: str  # absolute, for the kinds that take one
    name: str  # the image within; "" for the one image a layout or archive holds
    text: str  # as the user wrote it

    def sources(self, default: list[str] | None) -> list[str] | None:
        """The resolver's `--from` list for this image (`default` for a bare name)."""
        if self.kind is None:
            return default
        return [f"{self.kind}:{self.path}" if self.path else self.kind]


def parse(text: str) -> ImageSpec:
    """Split a spelled reference; ConfigError (one line) for an unknown transport or a missing
    part.  The name itself is checked when it is resolved."""
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme != "docker":
            raise ConfigError(f"{text}: unknown transport {scheme + '://'!r}; the image "
                              f"spellings are {SPELLINGS}")
        if not rest:
            raise ConfigError(f"{text}: expected docker://NAME[:TAG|@DIGEST]")
        return ImageSpec("registry", "", rest, text)
    transport, sep, rest = text.partition(":")
    if not sep or transport not in _KINDS or transport == "docker":
        return ImageSpec(None, "", text, text)
    if transport == "docker-daemon":
        if not rest:
            raise ConfigError(f"{text}: expected docker-daemon:NAME[:TAG]")
        return ImageSpec("docker", "", rest, text)
    path, _, name = rest.partition(":")
    if not path:
        raise ConfigError(f"{text}: expected {transport}:"
                          f"{'DIR' if transport == 'oci' else 'FILE'}[:REF]")
    return ImageSpec(_KINDS[transport], os.path.abspath(os.path.expanduser(path)), name, text)


def from_spec(spec: str) -> str:
    """A `--from` value in skopeo's spelling made the resolver's own (`docker://` is
    `registry`, `docker-daemon:` is `docker`); others unchanged."""
    if spec in ("docker://", "docker-daemon:", "docker-daemon"):
        return "registry" if spec == "docker://" else "docker"
    return spec
