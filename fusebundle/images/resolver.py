"""Which source each image comes from: the `--from` list in order, or the default order.

Sources are named on the command line as `store`, `docker`, `registry`, `docker-archive:FILE`
and `oci:DIR`.  With no `--from` the order is: the store (images pulled before), then the
Docker engine if one answers, then the registry.  The store is asked first in every case,
unless `--pull` is given, but with `--from` only for images that one of the named sources
gave: the store never shadows a source the user did not ask for.  An image no source has ends
with one line that names every source tried and why it had nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fusebundle.atomic import TempName, atomic_file
from fusebundle.errors import ConfigError, EngineError, UserError
from fusebundle.images import refspec
from fusebundle.images.exported import Cache, LazyImage, cache_subdir
from fusebundle.images.handle import PullableImage
from fusebundle.images.layered import LayeredImage
from fusebundle.sources import TRANSPORTS, ImageInfo, LayerSource, Options, Platform, engineapi
from fusebundle.sources.engine import DockerEngine
from fusebundle.sources.reference import parse
from fusebundle.store import Store

if TYPE_CHECKING:
    from fusebundle.sources.regnet import Mirror

SOURCES_HELP = ("where images come from, tried in the order given (repeatable): store, docker "
                "(or docker-daemon:), registry (or docker://), docker-archive:FILE, oci:DIR, "
                "oci-archive:FILE; default: the store, then the Docker engine if one answers, "
                "then the registry")
DEFAULT_ORDER = ("store", "docker", "registry")


def parse_spec(spec: str) -> tuple[str, str]:
    """(kind, argument) of one `--from` value; ConfigError for anything else."""
    kind, sep, arg = refspec.from_spec(spec).partition(":")
    transport = TRANSPORTS.get(kind)
    takes_path = transport is not None and transport.takes_path
    if (kind in ("store", "docker") or transport is not None) and not takes_path and not sep:
        return kind, ""
    if takes_path and sep and arg:
        return kind, os.path.abspath(os.path.expanduser(arg))
    raise ConfigError(f"--from {spec}: expected store, docker, registry, docker-archive:FILE "
                      f"or oci:DIR (or docker-daemon:, docker://, oci-archive:FILE)")


def source_name(kind: str, arg: str) -> str:
    """How messages and store records name a source."""
    return f"{kind}:{arg}" if arg else kind


@dataclass
class Resolver:
    """Resolves image references to handles, asking the sources in order."""

    specs: list[str] | None  # --from values; None for the default order
    cache_root: str
    docker_host: str | None = None
    pull: bool = False
    platform: Platform = field(default_factory=Platform.host)
    insecure: tuple[str, ...] = ()
    cert_dir: str | None = None
    registry_mirrors: tuple[str, ...] = ()  # --registry-mirror URL, for docker.io
    mirrors: tuple[str, ...] = ()  # --mirror [REGISTRY=]URL
    show_progress: bool = False
    verify_layers: bool = False  # hash stored layers again before use (for pack)
    # The engine's images as layers (`docker save` into the store), not as container exports:
    # what the image commands look at.
    engine_layers: bool = False
    _sources: dict[str, LayerSource] = field(default_factory=dict)
    _store: Store | None = None
    _cache: Cache | None = None
    _engine: DockerEngine | None = None

    def __post_init__(self) -> None:
        self.order = [parse_spec(s) for s in self.specs] if self.specs else [
            (k, "") for k in DEFAULT_ORDER]
        self.options = Options(self.insecure, self.cert_dir, self._mirror_table())

    def _mirror_table(self) -> dict[str, list[Mirror]]:
        """The mirror flags, checked now (a bad one is an error even if no registry is asked)."""
        if not self.registry_mirrors and not self.mirrors:
            return {}
        # Imported only when mirrors are given: regnet brings the registry's auth with it.
        from fusebundle.sources.regnet import parse_mirrors

        return parse_mirrors(self.registry_mirrors, self.mirrors)

    # -------------------------------------------------------------------------- parts
    @property
    def cache(self) -> Cache:
        """The engine exports' cache (also where kernel tars are copied out)."""
        if self._cache is None:
            self._cache = Cache(self.cache_root)
        return self._cache

    @property
    def store(self) -> Store:
        """The layer store, opened on first need."""
        if self._store is None:
            self._store = Store(self.cache_root)
        return self._store

    def engine(self) -> DockerEngine:
        """The Docker engine source (connects lazily)."""
        if self._engine is None:
            self._engine = DockerEngine(self.docker_host)
        return self._engine

    def _layer_source(self, kind: str, arg: str) -> LayerSource:
        name = source_name(kind, arg)
        src = self._sources.get(name)
        if src is None:
            src = self._sources[name] = TRANSPORTS[kind].open(arg, self.options)
        return src

    def sole_ref(self, kind: str, arg: str) -> str:
        """The reference of the one image a layout or archive holds (NotFound otherwise)."""
        return self._layer_source(kind, arg).sole_ref()

    # -------------------------------------------------------------------------- resolving
    def resolve(self, ref: str) -> PullableImage:
        """A handle for `ref` from the first source that has it; one line if none has."""
        name = parse(ref).name
        if not self.pull:
            hit = self._from_store(ref, name)
            if hit is not None:
                return hit
        tried: list[str] = []
        for kind, arg in self.order:
            if kind == "store":
                if self.pull:
                    tried.append("store: skipped (--pull)")
                else:
                    tried.append("store: not there")
                continue
            try:
                if kind == "docker":
                    return self._from_engine(ref)
                return self._from_layers(ref, kind, arg)
            except UserError as e:  # not there, unreachable, or broken: say so, go on
                tried.append(_reason(source_name(kind, arg), e))
        raise UserError(f"image {ref}: not found: {'; '.join(tried)}")

    def _from_store(self, ref: str, name: str) -> LayeredImage | None:
        if not any(kind != "docker" for kind, _ in self.order):
            return None  # only the engine was asked for: its exports are its own cache
        image = self.store.find_image(name, str(self.platform))
        if image is None:
            return None
        allowed = {source_name(k, a) for k, a in self.order}
        if self.specs and "store" not in allowed and image.source not in allowed:
            return None
        # Held from now on: a prune while this process runs must not take them away.
        self.store.hold(layer.diff_id for layer in image.layers)
        if not all(self.store.has_layer(layer.diff_id) for layer in image.layers):
            return None  # pruned or half-pulled: a source fetches the rest
        image.ref = ref

        def fallback() -> LayerSource | None:
            # The first named layer source, to fetch a stored layer found corrupt again.
            for kind, arg in self.order:
                if kind in TRANSPORTS:
                    return self._layer_source(kind, arg)
            return None

        return LayeredImage(image, None, self.store, self.cache, self.show_progress,
                            self.verify_layers, fallback)

    def _from_engine(self, ref: str) -> LazyImage:
        if not self.specs:
            # In the default order the engine is asked only if one answers: no engine is
            # not an error when another source has the image.
            sock = engineapi.socket_path(self.docker_host)
            if sock is not None and not os.path.exists(sock):
                raise EngineError(f"no Docker engine at unix://{sock}")
        info = self.engine().inspect(ref, self.pull)
        if self.engine_layers:
            return self._engine_saved(ref, info)
        return LazyImage(info, self.cache, self.engine(), self.show_progress)

    def _engine_saved(self, ref: str, info: ImageInfo) -> LayeredImage:
        """The engine's image as its layers: from the store when it holds that image ID,
        else `docker save` to a temporary archive in the cache, its layers stored, the
        archive removed."""
        stored = None if self.pull else self.store.find_image(parse(ref).name,
                                                              str(self.platform))
        if stored is not None and stored.config_digest == info.id:
            self.store.hold(layer.diff_id for layer in stored.layers)
            if all(self.store.has_layer(layer.diff_id) for layer in stored.layers):
                stored.ref = ref
                return LayeredImage(stored, None, self.store, self.cache, self.show_progress,
                                    self.verify_layers)
        path = os.path.join(cache_subdir(self.cache_root, "saves"), info.hex + ".tar")
        api = self.engine().api
        try:
            try:
                with atomic_file(path, TempName(f".{info.hex}.")) as t, \
                        os.fdopen(t.fd, "wb", closefd=False) as out:
                    # 1 MiB chunks, as the session's layout tars read the same stream
                    for chunk in api.get_image(parse(ref).name, 1 << 20):
                        out.write(chunk)
            except OSError as e:
                raise UserError(f"image {ref}: cannot write its save to the cache: "
                                f"{e.strerror or e}") from None
            except Exception as e:  # the SDK's errors: the engine refused or went away
                raise EngineError(f"docker save {ref}: {e}") from None
            archive = TRANSPORTS["docker-archive"].open(path, self.options)
            image = archive.resolve(ref, self.platform)
            handle = LayeredImage(image, archive, self.store, self.cache,
                                  self.show_progress, self.verify_layers)
            handle.fetch()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        image.source = "docker-daemon"
        handle.source = None  # every layer is in the store now
        self.store.put_image(image)  # found by its ID next time: no second save
        return handle

    def _from_layers(self, ref: str, kind: str, arg: str) -> LayeredImage:
        src = self._layer_source(kind, arg)
        image = src.resolve(ref, self.platform)
        return LayeredImage(image, src, self.store, self.cache, self.show_progress,
                            self.verify_layers)


def _reason(name: str, e: Exception) -> str:
    text = str(e)
    # Sources word their NotFound with their own name first; do not say it twice.
    for prefix in (f"{name}: ", f"{name} ", "docker: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return f"{name}: {text}"
