"""The Docker engine as a source: inspect (and pull) an image, export a container made from it.

Unlike the layer sources, the engine hands over one flattened tar: `docker export` of a
temporary container that is never started.  `images.Cache` keeps that tar by image ID.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from fusebundle.errors import EngineError
from fusebundle.sources import engineapi, jsondoc
from fusebundle.sources.base import ImageInfo, Progress

_TRANSPORT = {"FileNotFoundError": "no such socket", "ConnectionRefusedError": "connection refused",
              "Connection refused": "connection refused",
              "PermissionError": "permission denied", "TimeoutError": "timed out"}


def _engine_error(what: str, e: Exception) -> EngineError:
    text = str(getattr(e, "explanation", None) or e or type(e).__name__)
    # The SDK nests the socket's OSError several layers deep; its name says it best.
    for marker, plain in _TRANSPORT.items():
        if marker in text:
            text = plain
            break
    return EngineError(f"{what}: {' '.join(text.split())}")


class DockerEngine:
    """Images from a Docker engine, through the Docker SDK (inspect straight over the socket)."""

    def __init__(self, host: str | None = None) -> None:
        self._host = host
        self._socket = engineapi.socket_path(host)
        self._docker: Any = None
        self._requests: Any = None
        self._client: Any = None

    def _sdk(self) -> Any:
        """The docker module, once a client is connected; EngineError if it cannot be."""
        if self._client is None:
            # The SDK (and requests, its transport) is imported here on first need and nowhere
            # else: a warm mount never needs it.
            import docker
            import requests

            self._docker, self._requests = docker, requests
            where = self._host or os.environ.get("DOCKER_HOST") or "the default socket"
            try:
                if self._host:
                    self._client = docker.DockerClient(base_url=self._host, version="auto")
                else:
                    self._client = docker.from_env(version="auto")
            except Exception as e:  # the SDK wraps every transport problem differently
                raise _engine_error(f"cannot reach the Docker engine at {where}", e) from None
        return self._docker

    @property
    def api(self) -> Any:
        """The SDK's low-level client."""
        self._sdk()
        return self._client.api

    @contextlib.contextmanager
    def _reported(self, what: str) -> Iterator[None]:
        """Turn whatever the SDK raises into one EngineError line; our own errors pass."""
        docker = self._sdk()
        try:
            yield
        except (docker.errors.DockerException, self._requests.RequestException) as e:
            # Checked first: both are OSError subclasses, but the engine's, not ours.
            raise _engine_error(what, e) from None
        except (EngineError, OSError):
            raise  # e.g. the cache's disk is full: the caller says so
        except Exception as e:  # the SDK wraps some transport problems in other types
            raise _engine_error(what, e) from None

    def _inspect(self, ref: str) -> dict[str, Any] | None:
        if self._socket is not None:
            try:
                data = engineapi.inspect_image(self._socket, ref)
            except engineapi.NoSuchImage:
                return None
            if data is not None:
                return data
        with self._reported(f"image {ref}: inspect failed"):
            try:
                return self.api.inspect_image(ref)
            except self._docker.errors.ImageNotFound:
                return None

    def _pull(self, ref: str) -> None:
        repo, tag = self._sdk().utils.parse_repository_tag(ref)
        with self._reported(f"image {ref}: not found and pull failed"):
            for msg in self.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
                if isinstance(msg, dict) and msg.get("error"):
                    raise EngineError(f"image {ref}: pull failed: {msg['error']}")

    def inspect(self, ref: str, pull: bool) -> ImageInfo:
        """Inspect an image, pulling it first when asked or when it is missing."""
        data = None if pull else self._inspect(ref)
        if data is None:
            self._pull(ref)
            data = self._inspect(ref)
            if data is None:
                raise EngineError(f"image {ref}: not found after pulling it")
        what = f"image {ref}: inspect"
        fields = jsondoc.Fields(data, what)
        # The engine's own typed structs wrote this answer; checked all the same, as every
        # document from outside is.
        image_id = fields.string("Id")
        if not image_id:
            raise EngineError(f"{what}: the engine's answer has no Id")
        return ImageInfo(ref=ref, id=image_id,
                         config=jsondoc.container_config(data.get("Config"), what),
                         size=fields.integer("Size", 0, jsondoc.INT64_MAX) or 0)

    def save(self, image_id: str) -> Iterator[bytes]:
        """`docker save` of one image, in chunks of 1 MiB."""
        return self.api.get_image(image_id, 1 << 20)

    def export(self, info: ImageInfo, out: Any, progress: Progress | None) -> None:
        """Stream `docker export` of a temporary container into `out`; always remove it."""
        with self._reported(f"image {info.ref}: cannot create a container"):
            # Never started: the command only has to exist for create to accept images
            # that have none.
            cid = self.api.create_container(info.id, command=["/dev/null"])["Id"]
        try:
            with self._reported(f"image {info.ref}: export failed"):
                done = 0
                for chunk in self.api.export(cid, chunk_size=1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done)
        finally:
            self._remove(cid)

    def _remove(self, cid: str) -> None:
        # A second Ctrl-C must not leave the container behind either.
        for _ in range(3):
            try:
                self.api.remove_container(cid, force=True)
                return
            except KeyboardInterrupt:
                continue
            except self._docker.errors.NotFound:
                return
            except Exception:
                return
