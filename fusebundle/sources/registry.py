"""Images straight from a registry, over the OCI distribution API (`/v2/`), on httpx.

Manifests are fetched by tag or digest and checked against the digest asked for (or the one
the registry names); an index is narrowed to the platform with `manifest.choose`.  Blobs are
streamed: redirects followed (Authorization is dropped across hosts), a dropped connection
resumed with `Range`, 429/5xx/connection errors retried with backoff, a bounded number of
times.  The client is httpx's synchronous one: the store and the view read blobs from worker
threads, where a blocking file-like object is what they consume.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from fusebundle.errors import UserError
from fusebundle.sources import manifest, reference
from fusebundle.sources.base import LayerRef, NotFound, Platform, ResolvedImage
from fusebundle.sources.regauth import (
    Authenticator,
    Denied,
    DockerConfig,
    RegistryError,
    plain_http_allowed,
    scrub,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["Registry", "RegistryError", "Denied", "registry_host"]

MANIFEST_ACCEPT = ", ".join((manifest.OCI_INDEX, manifest.OCI_MANIFEST,
                             manifest.DOCKER_MANIFEST_LIST, manifest.DOCKER_MANIFEST))
_CHUNK = 1 << 20
_HUB_HOST = "registry-1.docker.io"
_MAX_INDEX_DEPTH = 2  # an index may name an index (rare); deeper is a loop or hostile
# A logger's filters see only its own records, so each one that logs URLs or headers is named.
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2",
                 "httpcore.proxy")
_MAX_RESUMES = 50  # per blob: a line that drops after every few bytes is not worth more


def registry_host(domain: str) -> str:
    """The host to talk to for a reference's domain, as docker maps it."""
    return _HUB_HOST if domain == reference.DEFAULT_DOMAIN else domain


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # httpx wraps httpcore wraps the socket's error
        if seen is None:
            return False
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds a Retry-After header asks for (delta or HTTP date), capped; None if absent."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), cap)


class _ScrubLog(logging.Filter):
    """Keeps secrets and signed URLs (blob redirects carry keys) out of httpx's request log."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage(), self._secrets())
        record.args = None
        return True


class Registry:
    """A `LayerSource` reading from the registries references name (docker.io and others)."""

    name = "registry"

    def __init__(self, insecure: Iterable[str] = (), docker_config: str | None = None, *,
                 timeout: float = 60.0, connect_timeout: float = 15.0, tries: int = 5,
                 backoff: float = 0.5, max_wait: float = 30.0) -> None:
        self.insecure = tuple(insecure)
        self.tries = max(1, tries)
        self.backoff = backoff
        self.max_wait = max_wait
        self._timeout = (timeout, connect_timeout)
        self._auth = Authenticator(DockerConfig(docker_config), self.insecure)
        self._clients: dict[bool, httpx.Client] = {}  # by "verify the certificate"
        self._bases: dict[str, str] = {}  # host -> "https://host" or "http://host", once pinged
        self._log_filter: _ScrubLog | None = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------
    def _http(self, verify: bool = True) -> httpx.Client:
        """The client that verifies certificates (system CAs), or the one that does not."""
        with self._lock:
            client = self._clients.get(verify)
            if client is None:
                import httpx  # only commands that reach a registry pay for importing it

                read, connect = self._timeout
                # trust_env off: no .netrc credentials slipped in, no proxy from the environment.
                client = httpx.Client(
                    follow_redirects=True, trust_env=False,
                    verify=ssl.create_default_context() if verify else False,
                    timeout=httpx.Timeout(read, connect=connect),
                    headers={"User-Agent": "fusebundle"})
                self._clients[verify] = client
                if self._log_filter is None:
                    self._log_filter = _ScrubLog(self._auth.secrets)
                    for name in _HTTP_LOGGERS:
                        logging.getLogger(name).addFilter(self._log_filter)
            return client

    def _client_for(self, host: str) -> httpx.Client:
        """Certificates are checked except where plain HTTP would be allowed anyway (as docker)."""
        return self._http(verify=not plain_http_allowed(host, self.insecure))

    def close(self) -> None:
        """Close the connections (the object may be used again; it reconnects)."""
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            if self._log_filter is not None:
                for name in _HTTP_LOGGERS:
                    logging.getLogger(name).removeFilter(self._log_filter)
                self._log_filter = None

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reason(self, exc: BaseException) -> str:
        """A transport error as a short phrase, scrubbed of anything secret."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        return scrub(text, self._auth.secrets())[:200]

    def _sleep_before(self, attempt: int, wait: float | None = None) -> None:
        delay = wait if wait is not None else self.backoff * 2 ** (attempt - 1)
        time.sleep(min(delay, self.max_wait))

    def _send(self, where: str, host: str, domain: str, repo: str, path: str, *,
              headers: dict[str, str] | None = None, stream: bool = False,
              challenge: bool = True, base: str = "", tries: int = 0) -> httpx.Response:
        """GET host/path with auth and bounded retries; the response of any final status."""
        import httpx

        client = self._client_for(host)
        url = (base or self._bases[host]) + path
        tries = tries or self.tries
        attempt = 0
        answered = False
        while True:
            attempt += 1
            sent = dict(headers or {})
            grant = self._auth.header(host, repo)
            if grant:
                sent["Authorization"] = grant
            try:
                response = client.send(client.build_request("GET", url, headers=sent),
                                       stream=stream)
            except httpx.RequestError as e:
                if _caused_by(e, (ssl.SSLError,)) or "SSL" in str(e):
                    raise RegistryError(f"{where}: TLS failure ({self._reason(e)})") from None
                if _caused_by(e, (socket.gaierror,)):
                    raise RegistryError(f"{where}: unreachable (cannot resolve {host})") from None
                if not isinstance(e, httpx.NetworkError | httpx.TimeoutException |
                                  httpx.RemoteProtocolError):
                    # Too many redirects, a redirect to ftp:, ...: trying again changes nothing.
                    raise RegistryError(f"{where}: {self._reason(e)}") from None
                if attempt >= tries:
                    raise RegistryError(f"{where}: unreachable after {tries} "
                                        f"{'try' if tries == 1 else 'tries'} "
                                        f"({self._reason(e)})") from None
                self._sleep_before(attempt)
                continue
            status = response.status_code
            if status == 401 and challenge and not answered:
                offer = response.headers.get("www-authenticate")
                response.close()
                if offer:
                    self._auth.forget(host, repo)
                    try:
                        self._auth.answer(self._client_for, host, domain, repo, offer)
                    except httpx.RequestError as e:
                        raise RegistryError(f"{where}: the token service is unreachable "
                                            f"({self._reason(e)})") from None
                    answered = True
                    attempt -= 1  # the challenge round is not a failure
                    continue
                return response
            if status == 429 or status >= 500:
                wait = _retry_after(response.headers.get("retry-after"), self.max_wait)
                response.close()
                if attempt >= tries:
                    raise RegistryError(f"{where}: gave up after {tries} tries "
                                        f"(last answer HTTP {status})")
                self._sleep_before(attempt, wait)
                continue
            return response

    def _denied(self, where: str, domain: str, status: int) -> Denied:
        creds = self._auth.credentials(domain)
        how = (f"with credentials from {creds.origin}" if creds is not None
               else "anonymously; no credentials for it in the docker config")
        # Docker Hub and others answer 401 for a repository that does not exist, to hide it.
        return Denied(f"{where}: access denied (HTTP {status}, asked {how}; or there is no "
                      "such repository)")

    def _ping(self, host: str, domain: str) -> None:
        """GET /v2/ once per host: is a registry there, and on HTTPS or (where allowed) HTTP?

        As docker does, a host where plain HTTP is allowed is tried on HTTPS first (its
        certificate not checked), then on HTTP.
        """
        if host in self._bases:
            return
        where = f"registry {host}"
        schemes = ["https", "http"] if plain_http_allowed(host, self.insecure) else ["https"]
        for scheme in schemes:
            last = scheme == schemes[-1]
            try:
                response = self._send(where, host, domain, "", "/v2/", challenge=False,
                                      base=f"{scheme}://{host}", tries=0 if last else 1)
            except RegistryError:
                if last:
                    raise
                continue
            response.close()
            if response.status_code in (200, 401):
                self._bases[host] = f"{scheme}://{host}"
                return
            if last or response.status_code != 400:  # 400: HTTP sent to an HTTPS port
                raise RegistryError(f"{where}: not a registry (GET /v2/ answered HTTP "
                                    f"{response.status_code})")

    def _read_small(self, response: httpx.Response, where: str) -> bytes:
        """The body of a manifest or config, refusing one too big to be one."""
        data = bytearray()
        try:
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > manifest.MAX_METADATA:
                    raise RegistryError(f"{where}: bigger than {manifest.MAX_METADATA} bytes")
        except Exception as e:
            import httpx

            if isinstance(e, httpx.TransportError):
                raise RegistryError(f"{where}: connection lost ({self._reason(e)})") from None
            raise
        finally:
            response.close()
        return bytes(data)

    # -- manifests --------------------------------------------------------------------------
    def _manifest(self, host: str, ref: reference.Reference, wanted: str,
                  shown: str) -> tuple[bytes, str]:
        """A manifest or index by tag or digest, checked; (body, its digest)."""
        where = f"registry {host}: {ref.path}"
        response = self._send(where, host, ref.domain, ref.path,
                              f"/v2/{ref.path}/manifests/{wanted}",
                              headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        status = response.status_code
        if status != 200:
            response.close()
            if status == 404:
                raise NotFound(f"registry: no image {shown} (at {host})")
            if status in (401, 403):
                raise self._denied(where, ref.domain, status)
            raise RegistryError(f"{where}: manifest {wanted}: HTTP {status}")
        named = response.headers.get("docker-content-digest", "")
        body = self._read_small(response, f"{where}: manifest {wanted}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = wanted if wanted.startswith("sha256:") else named
        if expected.startswith("sha256:") and expected != digest:
            raise RegistryError(f"{where}: manifest {wanted} has a bad digest (asked "
                                f"{expected}, its content hashes to {digest})")
        return body, digest

    def _config(self, host: str, ref: reference.Reference, desc: dict[str, Any]) -> bytes:
        where = f"registry {host}: {ref.path}"
        digest = desc["digest"]
        response = self._send(where, host, ref.domain, ref.path,
                              f"/v2/{ref.path}/blobs/{digest}", stream=True)
        if response.status_code != 200:
            response.close()
            raise self._blob_status(where, ref.domain, digest, response.status_code)
        data = self._read_small(response, f"{where}: config {digest}")
        try:
            return manifest.verify(data, digest, where)
        except UserError as e:
            raise RegistryError(str(e)) from None

    def _blob_status(self, where: str, domain: str, digest: str, status: int) -> RegistryError:
        if status in (401, 403):
            return self._denied(where, domain, status)
        if status == 404:
            return RegistryError(f"{where}: blob {digest} is not in the registry")
        return RegistryError(f"{where}: blob {digest}: HTTP {status}")

    def resolve(self, ref: str, platform: Platform) -> ResolvedImage:
        """The image REF names, for PLATFORM; NotFound if the registry has no such image."""
        parsed = reference.parse(ref)
        host = registry_host(parsed.domain)
        shown = parsed.familiar
        what = f"registry {host}: {shown}"
        self._ping(host, parsed.domain)
        # A pinned digest decides what the image is, whatever the tag says now.
        body, digest = self._manifest(host, parsed, parsed.digest or parsed.tag, shown)
        for _ in range(_MAX_INDEX_DEPTH + 1):
            doc = manifest.load_json(body, f"{what}: manifest {digest}")
            if doc.get("mediaType") not in manifest.INDEX_TYPES and not (
                    doc.get("mediaType") is None and "manifests" in doc):
                break
            chosen = manifest.choose(doc, platform, what)
            body, digest = self._manifest(host, parsed, chosen["digest"], shown)
        else:
            raise RegistryError(f"{what}: image indexes nested deeper than {_MAX_INDEX_DEPTH}")
        config_desc, layers = manifest.parse_manifest(body, f"{what}: manifest {digest}")
        config = self._config(host, parsed, config_desc)
        plat = manifest.check_platform(config, platform, what)
        return manifest.image_from(ref, parsed.name, self.name, plat, digest, config, layers)

    # -- blobs ------------------------------------------------------------------------------
    def open_blob(self, image: ResolvedImage, layer: LayerRef) -> BinaryIO:
        """A stream of the layer blob's exact bytes, resumed across dropped connections."""
        parsed = reference.parse(image.name)
        host = registry_host(parsed.domain)
        if layer.size < 0:  # the size bounds the download; manifests must give it
            raise RegistryError(f"registry {host}: {parsed.path}: blob {layer.digest} has no "
                                "size")
        self._ping(host, parsed.domain)  # the image may come from the store, not resolve()
        stream = _BlobStream(self, host, parsed.domain, parsed.path, layer.digest, layer.size)
        return io.BufferedReader(stream, _CHUNK)  # type: ignore[return-value]


class _BlobStream(io.RawIOBase):
    """One blob's bytes, in order, exactly once, whatever the connection does."""

    def __init__(self, registry: Registry, host: str, domain: str, repo: str, digest: str,
                 size: int) -> None:
        super().__init__()
        self._registry = registry
        self._host, self._domain, self._repo = host, domain, repo
        self.digest = digest
        self.size = size
        self._where = f"registry {host}: {repo}: blob {digest}"
        self._received = 0  # bytes of the blob taken from the network so far
        self._skip = 0  # bytes a 200 answer to a Range request repeats
        self._buf = memoryview(b"")
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._failures = 0  # consecutive drops without a byte in between
        self._resumes = 0
        self._done = False
        self._open()

    def readable(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<blob {self.digest} from {self._host}/{self._repo}>"

    def _open(self) -> None:
        headers = {"Accept-Encoding": "identity"}  # the blob's own bytes, not a re-encoding
        if self._received:
            headers["Range"] = f"bytes={self._received}-"
        response = self._registry._send(self._where, self._host, self._domain, self._repo,
                                        f"/v2/{self._repo}/blobs/{self.digest}",
                                        headers=headers, stream=True)
        status = response.status_code
        if status == 206 and self._received:
            start = response.headers.get("content-range", "").removeprefix("bytes ")
            if start.split("-", 1)[0] != str(self._received):
                response.close()
                raise RegistryError(f"{self._where}: resumed at the wrong offset "
                                    f"(asked {self._received}, got {start or 'no range'})")
            self._skip = 0
        elif status == 200:
            # No Range support: the blob starts over; drop what was already passed on.
            self._skip = self._received
        else:
            response.close()
            raise self._registry._blob_status(self._where, self._domain, self.digest, status)
        length = response.headers.get("content-length")
        if status == 200 and length and length.isdigit() and self.size >= 0 \
                and int(length) != self.size:
            response.close()
            raise RegistryError(f"{self._where}: the registry sends {length} bytes, the "
                                f"manifest says {self.size}")
        self._response = response
        # No chunk size: httpx would hold back a partial chunk, and lose it if the line drops.
        self._chunks = response.iter_raw()

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
        self._response, self._chunks = None, None

    def _next_chunk(self) -> bytes | None:
        """The next bytes of the blob, reconnecting as needed; None at its end."""
        import httpx

        while True:
            if self._chunks is None:
                self._open()
            assert self._chunks is not None
            try:
                chunk = next(self._chunks, None)
            except httpx.TransportError as e:
                self._drop()
                self._failures += 1
                self._resumes += 1
                if self._failures >= self._registry.tries or self._resumes > _MAX_RESUMES:
                    raise RegistryError(
                        f"{self._where}: connection dropped {self._resumes} times, the last "
                        f"at byte {self._received} ({self._registry._reason(e)})") from None
                self._registry._sleep_before(self._failures)
                continue
            if chunk is None:
                self._drop()
                return None
            if self._skip:
                cut = min(self._skip, len(chunk))
                self._skip -= cut
                chunk = chunk[cut:]
                if not chunk:
                    continue
            self._failures = 0
            self._received += len(chunk)
            if 0 <= self.size < self._received:
                self._drop()
                raise RegistryError(f"{self._where}: more bytes than the {self.size} the "
                                    "manifest says")
            return chunk

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        while not self._buf:
            chunk = self._next_chunk()
            if chunk is None:
                self._done = True
                if self._skip or (self.size >= 0 and self._received != self.size):
                    raise RegistryError(f"{self._where}: ended after {self._received} of "
                                        f"{self.size} bytes")
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def close(self) -> None:
        self._drop()
        super().close()
