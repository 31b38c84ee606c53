"""One command's session: its merged config, and the resolver that turns references into images."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusebundle.images import refspec
from fusebundle.images.exported import default_cache_dir
from fusebundle.images.handle import ImageHandle, PullableImage
from fusebundle.images.layered import LayeredImage
from fusebundle.images.layout import LayoutImage
from fusebundle.images.resolver import Resolver, parse_spec
from fusebundle.progress import enabled
from fusebundle.sources.base import Platform


def resolver(args: argparse.Namespace, sources: list[str] | None, **more: Any) -> Resolver:
    """A resolver for the command's source flags (`sources`: its --from list, or None)."""
    platform = Platform.parse(args.platform) if args.platform else Platform.host()
    return Resolver(sources, args.cache_dir or default_cache_dir(),
                    docker_host=args.docker_host, pull=args.pull,
                    platform=platform, insecure=tuple(args.insecure_registry or ()),
                    cert_dir=args.cert_dir,
                    registry_mirrors=tuple(args.registry_mirror or ()),
                    mirrors=tuple(args.mirror or ()),
                    show_progress=enabled(args.quiet), **more)


class _Session:
    """The sources, the store and the images of one command, created on demand."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.show_progress = enabled(args.quiet)
        self.resolver = resolver(args, args.sources, verify_layers=args.command == "pack")
        self.cache = self.resolver.cache
        self._images: dict[str, PullableImage] = {}

    def resolve(self, ref: str) -> PullableImage:
        """The handle of an image (resolved once per reference)."""
        if ref not in self._images:
            self._images[ref] = self.resolver.resolve(ref)
        return self._images[ref]

    def resolve_layout(self, ref: str, platforms: list[str]) -> ImageHandle:
        """A handle on the image's OCI layout as a tar (today's `volumes: format: oci`)."""
        handle = self.resolve(ref)
        return LayoutImage(handle.info, handle.save, self.cache.root, platforms)


def open_session(args: argparse.Namespace) -> _Session:
    """A session for a command's own flags (the image commands' `diff` of a config)."""
    return _Session(args)


def open_image(args: argparse.Namespace, text: str) -> LayeredImage:
    """The image `text` spells (skopeo's transports, or a name for --from or the default
    order), as layers: the engine's saved into the store rather than exported."""
    spec = refspec.parse(text)
    sources = spec.sources(args.sources)
    found = resolver(args, sources, engine_layers=True)
    ref = spec.name
    if not ref:  # oci:DIR, oci-archive:FILE, docker-archive:FILE: the one image there
        assert sources is not None
        ref = found.sole_ref(*parse_spec(sources[0]))
    handle = found.resolve(ref)
    assert isinstance(handle, LayeredImage)  # engine_layers: the engine's too
    return handle


def load_session(args: argparse.Namespace) -> tuple[Any, _Session]:
    """The merged config of the command's files, and a session to resolve its images."""
    from fusebundle.config.load import load_config  # the YAML parser: not for image commands

    cfg = load_config(args.configs)
    if cfg.trust and not args.quiet:
        print("fusebundle: warning: trust: is not supported (no notary); images are used "
              "as the engine has them", file=sys.stderr)
    return cfg, _Session(args)
