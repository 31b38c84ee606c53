"""Images straight from a registry, over the OCI distribution API (`/v2/`), on httpx.

Manifests are fetched by tag or digest and checked against the digest asked for (or the one
the registry names); an index is narrowed to the platform with `manifest.choose`.  Blobs are
streamed: redirects followed (Authorization is dropped across hosts), a dropped connection
resumed with `Range`, 429/5xx/connection errors retried with backoff, a bounded number of
times.  The client is httpx's synchronous one: the store and the view read blobs from worker
threads, where a blocking file-like object is what they consume.
"""

from __future__ import annotations

import hashlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from fusebundle.errors import UserError
from fusebundle.sources import manifest, reference
from fusebundle.sources.base import LayerRef, NotFound, Platform, ResolvedImage
from fusebundle.sources.netbounds import (
    PING_WINDOW,
    RATE_WINDOW,
    Deadline,
    Pace,
    httpx_module,
    scaled,
)
from fusebundle.sources.regauth import (
    Authenticator,
    Denied,
    DockerConfig,
    RegistryError,
    host_without_port,
    plain_http_allowed,
    scrub,
)
from fusebundle.sources.regnet import (
    HostTLS,
    Mirror,
    Proxy,
    host_tls,
    mirrors_for,
    proxy_for,
    ssl_context,
)

if TYPE_CHECKING:
    import ssl  # imported by _tls_failure and regnet's contexts, not on every start

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


def _tls_failure(exc: BaseException) -> bool:
    """True if a request failed in TLS (an SSLError under it, or one only its text names)."""
    import ssl  # loaded already (httpx imports it); not at the top, off every start's path

    return _caused_by(exc, (ssl.SSLError,)) or "SSL" in str(exc)


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds a Retry-After header asks for (delta or HTTP date), capped; None if absent."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        # email (3-4 ms of imports, -X importtime) only for a Retry-After given as an HTTP date.
        import email.utils

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
                 backoff: float = 0.5, max_wait: float = 30.0, cert_dir: str | None = None,
                 mirrors: dict[str, list[Mirror]] | None = None) -> None:
        self.insecure = tuple(insecure)
        self.cert_dir = cert_dir
        self.mirrors = mirrors or {}
        self._tls: dict[str, HostTLS | None] = {}
        self._proxies: dict[tuple[str, str], Proxy | None] = {}  # (scheme, host) -> proxy
        self._proxy_secrets: set[str] = set()
        self._contexts: dict[tuple[HostTLS | None, bool], ssl.SSLContext] = {}
        # image name -> (the endpoint whose manifest was used, why the ones before it failed)
        self.answered: dict[str, tuple[str, str]] = {}
        self._refused: dict[tuple[str, str], set[str]] = {}  # (name, layer) -> endpoints
        self._blob_endpoint: dict[tuple[str, str], str] = {}  # (name, layer) -> last used
        self.blob_notes: dict[str, list[str]] = {}  # image name -> layers taken elsewhere
        self._schemes: dict[str, str] = {}  # mirror host -> the scheme its URL gave
        self.tries = max(1, tries)
        self.backoff = backoff
        self.max_wait = max_wait
        self._timeout = (timeout, connect_timeout)
        self._auth = Authenticator(DockerConfig(docker_config), self.insecure)
        self._clients: dict[str, httpx.Client] = {}  # by host: its TLS and proxies
        self._bases: dict[str, str] = {}  # host -> "https://host" or "http://host", once pinged
        self._unreachable: dict[str, str] = {}  # host -> why its ping failed, this session
        self._log_filter: _ScrubLog | None = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------
    def _secrets(self) -> set[str]:
        return self._auth.secrets() | self._proxy_secrets

    def host_tls(self, host: str) -> HostTLS | None:
        """The certs.d entry for HOST (read once)."""
        with self._lock:
            if host not in self._tls:
                self._tls[host] = host_tls(host, self.cert_dir)
            return self._tls[host]

    def proxy(self, scheme: str, host: str) -> Proxy | None:
        """The proxy for SCHEME://HOST from the environment (decided once per host)."""
        with self._lock:
            key = (scheme, host)
            if key not in self._proxies:
                found = proxy_for(scheme, host)
                self._proxies[key] = found
                if found is not None:
                    self._proxy_secrets.update(found.secrets)
            return self._proxies[key]

    def verifies(self, host: str) -> bool:
        """Is HOST's certificate checked?  Always with a certs.d entry (as skopeo), unless
        --insecure-registry names it; without one, except where plain HTTP is allowed."""
        named = host in self.insecure or host_without_port(host) in self.insecure
        if self.host_tls(host) is not None:
            return not named
        return not plain_http_allowed(host, self.insecure)

    def _client_for(self, host: str) -> httpx.Client:
        """HOST's client: its certs.d CAs and client certificate, its proxies, by scheme."""
        tls, verify = self.host_tls(host), self.verifies(host)
        proxies = {scheme: self.proxy(scheme, host) for scheme in ("https", "http")}
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                httpx = httpx_module()

                read, connect = self._timeout
                context = self._contexts.get((tls, verify))
                if context is None:  # one per kind: loading a CA store costs tens of ms
                    context = self._contexts[(tls, verify)] = ssl_context(tls, verify)
                # trust_env stays off, but no longer for .netrc: in httpx 0.29 (read in its
                # _client.py, _utils.py and _auth.py) .netrc is used only through an explicit
                # NetRCAuth, and trust_env means environment proxies and SSL_CERT_FILE/DIR
                # (the latter only when verify=True; we pass a context).  The proxies are
                # read in regnet instead: CIDRs and host:port in NO_PROXY, loopback never,
                # credentials kept out of messages.
                https, http = (httpx.HTTPTransport(verify=context,
                                                   proxy=proxy.url if proxy else None)
                               for proxy in (proxies["https"], proxies["http"]))
                # `transport` given: httpx makes no default one (with a CA store of its own).
                client = httpx.Client(
                    follow_redirects=True, trust_env=False, transport=https,
                    mounts={"http://": http},
                    timeout=httpx.Timeout(read, connect=connect),
                    headers={"User-Agent": "fusebundle"})
                self._clients[host] = client
                if self._log_filter is None:
                    self._log_filter = _ScrubLog(self._secrets)
                    for name in _HTTP_LOGGERS:
                        logging.getLogger(name).addFilter(self._log_filter)
            return client

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
        return scrub(text, self._secrets())[:200]

    def _delay(self, attempt: int, wait: float | None = None) -> float:
        return min(wait if wait is not None else self.backoff * 2 ** (attempt - 1), self.max_wait)

    def _sleep_before(self, attempt: int, wait: float | None = None) -> None:
        time.sleep(self._delay(attempt, wait))

    def _attempt_timeout(self, deadline: Deadline, read: float | None) -> httpx.Timeout:
        """One try's timeouts: today's per-operation ones, cut to what the deadline leaves."""
        httpx = httpx_module()

        default_read, connect = self._timeout
        left = deadline.left()
        return httpx.Timeout(min(read or default_read, left), connect=min(connect, left))

    def _send(self, where: str, host: str, domain: str, repo: str, path: str, *,
              headers: dict[str, str] | None = None, stream: bool = False,
              challenge: bool = True, base: str = "", tries: int = 0,
              deadline: Deadline | None = None, read: float | None = None) -> httpx.Response:
        """GET host/path with auth and bounded retries; the response of any final status.

        Waiting on the network, summed over the tries, ends at DEADLINE (default: one
        per-read timeout, so retries fit in the time one silent try used to take).
        """
        httpx = httpx_module()

        client = self._client_for(host)
        url = (base or self._bases[host]) + path
        proxy = self.proxy(url.split(":", 1)[0], host)
        if proxy is not None:
            where = f"{where} (through proxy {proxy})"
        tries = tries or self.tries
        deadline = deadline or Deadline(self._timeout[0])
        attempt = 0
        answered = False
        while True:
            attempt += 1
            sent = dict(headers or {})
            grant = self._auth.header(host, repo)
            if grant:
                sent["Authorization"] = grant
            try:
                if deadline.passed():
                    raise httpx.TimeoutException("timed out")
                request = client.build_request("GET", url, headers=sent,
                                               timeout=self._attempt_timeout(deadline, read))
                response = client.send(request, stream=stream)
            except httpx.RequestError as e:
                if isinstance(e, httpx.ProxyError):
                    raise RegistryError(f"{where}: the proxy refused ({self._reason(e)})"
                                        ) from None
                if _tls_failure(e):
                    hint = ("; its CA goes in certs.d/HOST/*.crt or --cert-dir"
                            if "verify failed" in str(e) else "")
                    raise RegistryError(f"{where}: TLS failure ({self._reason(e)}){hint}"
                                        ) from None
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
                if deadline.left() <= self._delay(attempt):
                    raise RegistryError(f"{where}: no answer within {deadline.shown()} "
                                        f"({self._reason(e)})") from None
                self._sleep_before(attempt)
                continue
            status = response.status_code
            if status == 407:
                response.close()
                raise RegistryError(f"{where}: the proxy wants credentials (HTTP 407" +
                                    (", and refused those in its URL)"
                                     if proxy is not None and proxy.secrets else ")"))
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
                    except Denied as e:
                        if proxy is None:
                            raise
                        # Some proxies (tinyproxy) answer wrong proxy credentials with a 401
                        # of their own: it cannot be told from the registry's.
                        raise Denied(f"{e} (asked through proxy {proxy}, which may be the "
                                     "one refusing)") from None
                    answered = True
                    attempt -= 1  # the challenge round is not a failure
                    deadline = deadline.renewed()
                    continue
                return response
            if status == 429 or status >= 500:
                wait = _retry_after(response.headers.get("retry-after"), self.max_wait)
                response.close()
                if attempt >= tries:
                    raise RegistryError(f"{where}: gave up after {tries} tries "
                                        f"(last answer HTTP {status})")
                self._sleep_before(attempt, wait)
                deadline = deadline.renewed()
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
        certificate not checked), then on HTTP.  All of it ends within PING_WINDOW, the HTTPS
        try of such a host within half of it, so that a silent server costs ~15 s, not minutes.
        """
        if host in self._bases:
            return
        if host in self._unreachable:  # a dead mirror costs its wait once, not per image
            raise RegistryError(self._unreachable[host])
        where = f"registry {host}"
        # A certs.d entry means verified HTTPS only, loopback included (as skopeo); a mirror
        # URL with a scheme is used with that scheme only.
        schemes = ["https"] if self.verifies(host) else ["https", "http"]
        if host in self._schemes:
            schemes = [self._schemes[host]]
        overall = Deadline(PING_WINDOW)
        for scheme in schemes:
            last = scheme == schemes[-1]
            try:
                response = self._send(where, host, domain, "", "/v2/", challenge=False,
                                      base=f"{scheme}://{host}", tries=0 if last else 1,
                                      deadline=overall if last else Deadline(PING_WINDOW / 2))
            except RegistryError as e:
                if last:
                    self._unreachable[host] = str(e)
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
        pace = Pace()
        try:
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > manifest.MAX_METADATA:
                    raise RegistryError(f"{where}: bigger than {manifest.MAX_METADATA} bytes")
                slow = pace.add(len(chunk))
                if slow:
                    raise RegistryError(f"{where}: {slow}")
        except Exception as e:
            httpx = httpx_module()

            if isinstance(e, httpx.TransportError):
                raise RegistryError(f"{where}: connection lost ({self._reason(e)})") from None
            raise
        finally:
            response.close()
        return bytes(data)

    # -- manifests --------------------------------------------------------------------------
    def _manifest(self, host: str, ref: reference.Reference, wanted: str,
                  shown: str, domain: str) -> tuple[bytes, str]:
        """A manifest or index by tag or digest, checked; (body, its digest)."""
        where = f"registry {host}: {ref.path}"
        response = self._send(where, host, domain, ref.path,
                              f"/v2/{ref.path}/manifests/{wanted}",
                              headers={"Accept": MANIFEST_ACCEPT}, stream=True)
        status = response.status_code
        if status != 200:
            response.close()
            if status == 404:
                raise NotFound(f"registry: no image {shown} (at {host})")
            if status in (401, 403):
                raise self._denied(where, domain, status)
            raise RegistryError(f"{where}: manifest {wanted}: HTTP {status}")
        named = response.headers.get("docker-content-digest", "")
        body = self._read_small(response, f"{where}: manifest {wanted}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = wanted if wanted.startswith("sha256:") else named
        if expected.startswith("sha256:") and expected != digest:
            raise RegistryError(f"{where}: manifest {wanted} has a bad digest (asked "
                                f"{expected}, its content hashes to {digest})")
        return body, digest

    def _config(self, host: str, ref: reference.Reference, desc: dict[str, Any],
                domain: str) -> bytes:
        where = f"registry {host}: {ref.path}"
        digest = desc["digest"]
        response = self._send(where, host, domain, ref.path,
                              f"/v2/{ref.path}/blobs/{digest}", stream=True)
        if response.status_code != 200:
            response.close()
            raise self._blob_status(where, domain, digest, response.status_code)
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

    def _endpoints(self, domain: str) -> list[tuple[str, str]]:
        """(label, host) for DOMAIN in the order tried: its mirrors, then the origin."""
        found = []
        for mirror in mirrors_for(self.mirrors, domain):
            if mirror.scheme:
                self._schemes[mirror.host] = mirror.scheme
            found.append((f"mirror {mirror}", mirror.host))
        return [*found, (f"origin {registry_host(domain)}", registry_host(domain))]

    def resolve(self, ref: str, platform: Platform) -> ResolvedImage:
        """The image REF names, for PLATFORM; NotFound if the registry has no such image.

        Mirrors are asked first; the next one, then the origin, when one does not have the
        image, fails, or serves a manifest or config that fails verification.
        """
        parsed = reference.parse(ref)
        failures: list[str] = []
        for label, host in self._endpoints(parsed.domain):
            is_origin = label.startswith("origin")
            try:
                image = self._resolve_at(host, parsed, ref, platform, is_origin)
            except UserError as e:
                if is_origin:
                    raise
                failures.append(f"{label}: {str(e)[:200]}")
                continue
            self.answered[ref] = (label, "; ".join(failures))
            return image
        raise AssertionError("the origin is always the last endpoint")

    def _resolve_at(self, host: str, parsed: reference.Reference, ref: str,
                    platform: Platform, is_origin: bool) -> ResolvedImage:
        shown = parsed.familiar
        what = f"registry {host}: {shown}"
        # A mirror gets its own credentials (by its host), never the origin's.
        domain = parsed.domain if is_origin else host
        self._ping(host, domain)
        # A pinned digest decides what the image is, whatever the tag says now.
        body, digest = self._manifest(host, parsed, parsed.digest or parsed.tag, shown, domain)
        for _ in range(_MAX_INDEX_DEPTH + 1):
            doc = manifest.load_json(body, f"{what}: manifest {digest}")
            media_type = manifest.own_media_type(doc, f"{what}: manifest {digest}")
            if media_type not in manifest.INDEX_TYPES and not (
                    media_type is None and "manifests" in doc):
                break
            chosen = manifest.choose(doc, platform, what)
            body, digest = self._manifest(host, parsed, chosen["digest"], shown, domain)
        else:
            raise RegistryError(f"{what}: image indexes nested deeper than {_MAX_INDEX_DEPTH}")
        config_desc, layers = manifest.parse_manifest(body, f"{what}: manifest {digest}")
        config = self._config(host, parsed, config_desc, domain)
        plat = manifest.check_platform(config, platform, what)
        return manifest.image_from(ref, parsed.name, self.name, plat, digest, config, layers)

    # -- blobs ------------------------------------------------------------------------------
    def open_blob(self, image: ResolvedImage, layer: LayerRef) -> BinaryIO:
        """A stream of the layer blob's exact bytes, resumed across dropped connections.

        From the endpoint whose manifest was used, else the mirrors in order, else the
        origin; an endpoint that failed for this layer (see `refused_blob`) is skipped.
        """
        parsed = reference.parse(image.name)
        if layer.size < 0:  # the size bounds the download; manifests must give it
            raise RegistryError(f"registry {registry_host(parsed.domain)}: {parsed.path}: blob "
                                f"{layer.digest} has no size")
        key = (image.name, layer.digest)
        endpoints = self._endpoints(parsed.domain)
        first = self.answered.get(image.ref, ("", ""))[0]
        endpoints.sort(key=lambda e: e[0] != first)
        refused = self._refused.get(key, set())
        candidates = [e for e in endpoints if e[0] not in refused]
        for label, host in candidates:
            is_origin = label.startswith("origin")
            domain = parsed.domain if is_origin else host
            try:
                self._ping(host, domain)  # the image may come from the store, not resolve()
                stream = _BlobStream(self, host, domain, parsed.path, layer.digest, layer.size)
            except UserError as e:
                if is_origin:
                    raise
                self._note_refusal(image.name, layer.digest, label, e)
                continue
            self._blob_endpoint[key] = label
            return io.BufferedReader(stream, _CHUNK)  # type: ignore[return-value]
        raise AssertionError("the origin is always the last endpoint")

    def _note_refusal(self, name: str, digest: str, label: str, error: BaseException) -> None:
        self._refused.setdefault((name, digest), set()).add(label)
        reason = str(error).rsplit(f"{digest}: ", 1)[-1]  # the store's line names the layer
        self.blob_notes.setdefault(name, []).append(
            f"layer {digest[:19]} not from {label}: {reason[:160]}")

    def refused_blob(self, image: ResolvedImage, layer: LayerRef, error: BaseException) -> bool:
        """The store refused a blob (`error`: its BadLayer, or this registry's RegistryError
        for a broken stream): True if it should be asked again, from the next endpoint; only a
        mirror's blob is, the origin's error stands."""
        label = self._blob_endpoint.get((image.name, layer.digest), "")
        if not label.startswith("mirror"):
            return False
        self._note_refusal(image.name, layer.digest, label, error)
        return True

    def served_by(self, ref: str, name: str) -> str:
        """Which mirror or origin gave REF's manifest, and what was taken elsewhere."""
        label, failed = self.answered.get(ref, ("", ""))
        notes = [*([f"after {failed}"] if failed else []), *self.blob_notes.get(name, [])]
        return "; ".join([label, *notes])


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
        self._pace = Pace()  # over the whole blob, reconnections included
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
                                        headers=headers, stream=True,
                                        # no byte in a rate window is below any minimum rate
                                        read=scaled(RATE_WINDOW))
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
        httpx = httpx_module()

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
            slow = self._pace.add(len(chunk))
            if slow:
                self._drop()
                raise RegistryError(f"{self._where}: {slow}; gave up at byte {self._received}")
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
