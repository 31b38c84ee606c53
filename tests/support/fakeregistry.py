"""A small registry of our own, on real HTTP on 127.0.0.x, for what the real one cannot do.

It serves the distribution API's read side (`/v2/`, manifests, blobs with Range) from real
image bytes made by `make_image`, and on demand misbehaves: token or basic auth, 403, 429 with
Retry-After, 5xx, a connection dropped mid-blob, Range ignored, wrong bytes, a 307 redirect
to a second server.  Every request is logged with its headers, for the tests to inspect.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import re
import secrets
import socket
import ssl
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of regular files (mtime 0, root-owned)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass
class Image:
    """One image's blobs: manifest, config and gzip layers, all as bytes."""

    manifest: bytes
    config: bytes
    layers: list[bytes]  # compressed blobs, bottom first
    diff_ids: list[str]
    media_type: str = OCI_MANIFEST

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    def blobs(self) -> dict[str, bytes]:
        return {sha256(b): b for b in [self.config, *self.layers]}


def make_image(layers: list[dict[str, bytes]], os_: str = "linux", arch: str = "amd64",
               variant: str = "") -> Image:
    """An OCI image of the given layers (file name -> content)."""
    tars = [layer_tar(files) for files in layers]
    blobs = [gzip.compress(t, mtime=0) for t in tars]
    diff_ids = [sha256(t) for t in tars]
    config_doc: dict[str, Any] = {"architecture": arch, "os": os_,
                                  "config": {"Cmd": ["/bin/sh"]},
                                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if variant:
        config_doc["variant"] = variant
    config = json.dumps(config_doc, sort_keys=True).encode()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
           "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256(b), "size": len(b)}
                      for b in blobs]}
    return Image(json.dumps(doc).encode(), config, blobs, diff_ids)


def make_index(images: list[Image], media_type: str = OCI_INDEX) -> bytes:
    """An index (or docker manifest list) naming each image with its config's platform."""
    entries = []
    for image in images:
        conf = json.loads(image.config)
        plat = {"os": conf["os"], "architecture": conf["architecture"]}
        if conf.get("variant"):
            plat["variant"] = conf["variant"]
        entries.append({"mediaType": image.media_type, "digest": image.digest,
                        "size": len(image.manifest), "platform": plat})
    return json.dumps({"schemaVersion": 2, "mediaType": media_type,
                       "manifests": entries}).encode()


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    host: str  # the server that saw it, "127.0.0.1:PORT"


@dataclass
class FakeRegistry:
    """The registry's state and the misbehaviours the next requests get."""

    host: str = "127.0.0.1"
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    auth: str = ""  # "", "bearer" or "basic"
    users: dict[str, str] = field(default_factory=dict)  # user -> password
    identity_tokens: set[str] = field(default_factory=set)  # refresh tokens the realm takes
    anonymous_pull: bool = True  # the token service gives anonymous tokens
    forbidden: set[str] = field(default_factory=set)  # repositories that answer 403
    # Per-path queues of misbehaviours, consumed one per request: "429:SECONDS", "500",
    # "drop:N" (send N bytes of a blob, then cut the connection), "norange" (serve 200 to a
    # Range request), "short:N" (declare and send only N bytes), "flip" (one byte changed),
    # "redirect" (307 to the storage server), "drip" (the whole length declared, then one
    # byte every `drip_every` seconds for as long as the client listens).
    plan: dict[str, list[str]] = field(default_factory=dict)
    drip_every: float = 1.0
    # How the token service misbehaves: "" (not), "huge" (a 256 MiB answer, Content-Length
    # given), "endless" (a chunked answer that never ends), "silent" (never a byte).
    token_fault: str = ""
    bad_digest_header: bool = False  # Docker-Content-Digest that is not the body's
    storage: FakeRegistry | None = None  # where "redirect" sends blobs
    log: list[Seen] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> scope
    server: ThreadingHTTPServer | None = None
    tls: tuple[str, str] | None = None  # (certificate file, key file): serve HTTPS only
    # The token service's answer as bytes, given the token it issued (a hostile answer);
    # None for the usual {"token": ..., "expires_in": 300}.
    token_answer: Callable[[str], bytes] | None = None

    # -- content ---------------------------------------------------------------------------
    def put(self, repo: str, tag: str, image: Image) -> None:
        self.manifests[(repo, tag)] = (image.media_type, image.manifest)
        self.manifests[(repo, image.digest)] = (image.media_type, image.manifest)
        self.blobs.update(image.blobs())

    def put_index(self, repo: str, tag: str, images: list[Image],
                  media_type: str = OCI_INDEX) -> str:
        body = make_index(images, media_type)
        for image in images:
            self.put(repo, image.digest, image)
        self.manifests[(repo, tag)] = (media_type, body)
        self.manifests[(repo, sha256(body))] = (media_type, body)
        return sha256(body)

    def misbehave(self, path: str, *actions: str) -> None:
        self.plan.setdefault(path, []).extend(actions)

    def _next_action(self, path: str) -> str:
        with _LOCK:
            queue = self.plan.get(path)
            return queue.pop(0) if queue else ""

    # -- server ----------------------------------------------------------------------------
    @property
    def address(self) -> str:
        assert self.server is not None
        return f"{self.host}:{self.server.server_address[1]}"

    def start(self) -> FakeRegistry:
        handler = _handler_for(self)
        self.server = ThreadingHTTPServer((self.host, 0), handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def requests(self, pred: Callable[[Seen], bool] = lambda s: True) -> list[Seen]:
        return [s for s in self.log if pred(s)]


_LOCK = threading.Lock()
_BLOB = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")


def _handler_for(reg: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # the test output stays clean; `reg.log` has everything

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                   ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
            body = json.dumps({"errors": [{"code": code, "message": code.lower()}]}).encode()
            self._reply(status, body, dict({"Content-Type": "application/json"},
                                           **(headers or {})))

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            self._record()
            if urlsplit(self.path).path != "/token":
                return self._error(404, "NOT_FOUND")
            if form.get("grant_type") != ["refresh_token"] or \
                    form.get("refresh_token", [""])[0] not in reg.identity_tokens:
                return self._error(401, "UNAUTHORIZED")
            token = self._issue(form.get("scope", [""])[0])
            self._reply(200, json.dumps({"access_token": token, "expires_in": 300}).encode(),
                        {"Content-Type": "application/json"})

        def do_GET(self) -> None:  # noqa: N802
            self._record()
            url = urlsplit(self.path)
            path = url.path
            if path == "/token":
                if reg.token_fault:
                    return self._bad_token(reg.token_fault)
                return self._token(parse_qs(url.query))
            if path == "/v2/" or path == "/v2":
                if not self._authorized(""):
                    return
                return self._reply(200, b"{}", {"Docker-Distribution-API-Version": "registry/2.0"})
            m = _MANIFEST.match(path) or _BLOB.match(path)
            if m is None:
                return self._error(404, "NOT_FOUND")
            repo = m.group("repo")
            if not self._authorized(repo):
                return
            if repo in reg.forbidden:
                return self._error(403, "DENIED")
            action = reg._next_action(path)
            if action.startswith("429"):
                return self._error(429, "TOOMANYREQUESTS", {"Retry-After": action[4:] or "1"})
            if action.startswith("5"):
                return self._error(int(action[:3]), "UNAVAILABLE")
            if "digest" in m.groupdict():
                return self._blob(m.group("digest"), action)
            return self._manifest(repo, m.group("ref"), action)

        def _record(self) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            with _LOCK:
                reg.log.append(Seen(self.command, self.path, headers, reg.address))

        def _token(self, query: dict[str, list[str]]) -> None:
            given = self.headers.get("Authorization", "")
            if given.startswith("Basic "):
                user, _, password = base64.b64decode(given[6:]).decode().partition(":")
                if reg.users.get(user) != password or not user:
                    return self._error(401, "UNAUTHORIZED")
            elif not reg.anonymous_pull:
                return self._error(401, "UNAUTHORIZED")
            token = self._issue(query.get("scope", [""])[0])
            body = (reg.token_answer(token) if reg.token_answer is not None
                    else json.dumps({"token": token, "expires_in": 300}).encode())
            self._reply(200, body, {"Content-Type": "application/json"})

        def _bad_token(self, fault: str) -> None:
            """A token answer no client should hold whole or wait for, written as it goes."""
            piece = b"A" * 65536
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if fault == "huge":
                self.send_header("Content-Length", str(256 << 20))
            elif fault == "endless":
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.close_connection = True
            try:
                if fault == "huge":
                    self.wfile.write(b'{"token": "' + piece[11:])
                    for _ in range((256 << 20) // len(piece) - 1):
                        self.wfile.write(piece)
                elif fault == "endless":
                    self.wfile.write(b"%x\r\n%s\r\n" % (11, b'{"token": "'))
                    while True:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                else:
                    self.wfile.flush()
                    _hold(self.connection, 120)
            except OSError:
                pass  # the client hung up, as it should

        def _issue(self, scope: str) -> str:
            token = "tok-" + secrets.token_hex(16)
            with _LOCK:
                reg.tokens[token] = scope
            return token

        def _authorized(self, repo: str) -> bool:
            """True if the request may go on; else a 401 with a challenge has been sent."""
            given = self.headers.get("Authorization", "")
            if reg.auth == "bearer":
                scope = reg.tokens.get(given[7:]) if given.startswith("Bearer ") else None
                if scope is not None and (not repo or scope == f"repository:{repo}:pull"):
                    return True
                challenge = (f'Bearer realm="http://{reg.address}/token",'
                             f'service="fake-registry"')
                if repo:
                    challenge += f',scope="repository:{repo}:pull"'
            elif reg.auth == "basic":
                if given.startswith("Basic "):
                    user, _, password = base64.b64decode(given[6:]).decode().partition(":")
                    if user and reg.users.get(user) == password:
                        return True
                challenge = 'Basic realm="fake-registry"'
            else:
                return True
            self._error(401, "UNAUTHORIZED", {"WWW-Authenticate": challenge})
            return False

        def _manifest(self, repo: str, ref: str, action: str = "") -> None:
            found = reg.manifests.get((repo, ref))
            if found is None:
                return self._error(404, "MANIFEST_UNKNOWN")
            media_type, body = found
            digest = sha256(body) if not reg.bad_digest_header else sha256(body + b"x")
            if action == "drip":
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return self._drip(body)
            self._reply(200, body, {"Content-Type": media_type,
                                    "Docker-Content-Digest": digest})

        def _blob(self, digest: str, action: str) -> None:
            data = reg.blobs.get(digest)
            if data is None:
                return self._error(404, "BLOB_UNKNOWN")
            if action == "redirect" and reg.storage is not None:
                reg.storage.blobs[digest] = data
                where = f"http://{reg.storage.address}/v2/storage/blobs/{digest}?sig=s3cr3t"
                return self._reply(307, b"", {"Location": where})
            if action == "flip":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            if action.startswith("short:"):
                data = data[:int(action[6:])]
            start = 0
            rng = self.headers.get("Range", "")
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            if m and action != "norange":
                start = int(m.group(1))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Docker-Content-Digest", digest)
            self.end_headers()
            if action == "drip":
                return self._drip(body)
            if action.startswith("drop:"):
                self.wfile.write(body[:int(action[5:])])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

        def _drip(self, body: bytes) -> None:
            self.close_connection = True
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(reg.drip_every)
            except OSError:
                pass  # the client gave up, as it should

    return Handler


def _hold(conn: socket.socket, seconds: float) -> None:
    """Keep CONN open without a byte until the peer closes it or SECONDS pass."""
    conn.settimeout(seconds)
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (a hung registry)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=_hold, args=(conn, 300), daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
