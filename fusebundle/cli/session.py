"""One command's session: its merged config, and the resolver that turns references into images."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fusebundle.config.load import load_config
from fusebundle.images.exported import default_cache_dir
from fusebundle.images.handle import ImageHandle, PullableImage
from fusebundle.images.layout import LayoutImage
from fusebundle.images.resolver import Resolver
from fusebundle.progress import enabled
from fusebundle.sources.base import Platform


class _Session:
    """The sources, the store and the images of one command, created on demand."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.show_progress = enabled(args.quiet)
        platform = Platform.parse(args.platform) if args.platform else Platform.host()
        self.resolver = Resolver(args.sources, args.cache_dir or default_cache_dir(),
                                 docker_host=args.docker_host, pull=args.pull,
                                 platform=platform, insecure=tuple(args.insecure_registry or ()),
                                 cert_dir=args.cert_dir,
                                 registry_mirrors=tuple(args.registry_mirror or ()),
                                 mirrors=tuple(args.mirror or ()),
                                 show_progress=self.show_progress,
                                 verify_layers=args.command == "pack")
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


def load_session(args: argparse.Namespace) -> tuple[Any, _Session]:
    """The merged config of the command's files, and a session to resolve its images."""
    cfg = load_config(args.configs)
    if cfg.trust and not args.quiet:
        print("fusebundle: warning: trust: is not supported (no notary); images are used "
              "as the engine has them", file=sys.stderr)
    return cfg, _Session(args)
