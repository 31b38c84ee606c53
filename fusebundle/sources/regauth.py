"""Registry credentials and tokens, found and used as docker does.

Credentials come from `$DOCKER_CONFIG/config.json` (default ~/.docker): `auths` (base64 `auth`,
`username`/`password`, `identitytoken`), `credHelpers` and `credsStore` through the
`docker-credential-NAME get` programs.  A 401 challenge is answered with basic auth or a bearer
token from the realm it names (anonymous, basic, or the OAuth2 refresh grant for an identity
token).  No secret is ever put in a URL, a message or a repr; `secrets()` lists them so that
error text can be scrubbed of any that slipped in.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fusebundle.errors import UserError
from fusebundle.sources import jsondoc
from fusebundle.sources.base import RegistryError
from fusebundle.sources.netbounds import TOKEN_MAX, TOKEN_WINDOW, Deadline, httpx_module

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # where docker keeps docker.io's credentials
_HELPER_TIMEOUT = 30.0
_TOKEN_LIFETIME = 60  # seconds, when the token service does not say (as the spec says)
_CHALLENGE_PARAM = re.compile(r'\s*([A-Za-z_][\w.-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')


class Denied(RegistryError):
    """401/403: the registry or its token service refused us."""


def plain_http_allowed(host: str, insecure: Iterable[str] = ()) -> bool:
    """True for localhost, 127.0.0.0/8, ::1 and hosts named as insecure (with or without port)."""
    bare = host_without_port(host)
    if bare == "localhost" or host in insecure or bare in insecure:
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def host_without_port(host: str) -> str:
    """`host[:port]` or `[v6]:port` without the port."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


@dataclass(frozen=True)
class Credentials:
    """A user name and password, or an identity (refresh) token; never shown by repr."""

    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    origin: str = ""  # where they came from, for messages: "config.json", "docker-credential-x"

    def basic(self) -> str:
        """The `Authorization: Basic` value."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")

    def secrets(self) -> list[str]:
        """Every string of these that must never be shown."""
        return [s for s in (self.password, self.identity_token) if s] + (
            [self.basic()[6:]] if self.password else [])


def _config_hostname(key: str) -> str:
    """An `auths` key as docker compares it: no scheme, no path ("https://h:5000/v1/" -> h:5000)."""
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


class DockerConfig:
    """The credentials docker would use for a registry, from one config directory."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or os.environ.get("DOCKER_CONFIG") or os.path.expanduser(
            "~/.docker")
        self._doc: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._doc is None:
            path = os.path.join(self.directory, "config.json")
            try:
                with open(path, "rb") as f:
                    doc = json.load(f)
            except FileNotFoundError:
                doc = {}
            except (OSError, ValueError, RecursionError) as e:
                # The error text of json could quote the file, which holds secrets: name it only.
                # (RecursionError: nested deeper than the decoder goes.)
                raise RegistryError(f"docker config {path}: unreadable ({type(e).__name__})"
                                    ) from None
            self._doc = doc if isinstance(doc, dict) else {}
        return self._doc

    def lookup(self, domain: str) -> Credentials | None:
        """Credentials for a registry as references name it ("docker.io", "host:5000")."""
        server = DOCKER_HUB_SERVER if domain == "docker.io" else domain
        doc = self._load()
        helpers = doc.get("credHelpers") if isinstance(doc.get("credHelpers"), dict) else {}
        helper = (helpers.get(server) or helpers.get(_config_hostname(server))
                  or helpers.get(domain) or doc.get("credsStore"))
        if isinstance(helper, str) and helper:
            found = _run_helper(helper, server)
            if found is not None:
                return found
        return _from_auths(doc.get("auths"), server)


def _from_auths(auths: Any, server: str) -> Credentials | None:
    if not isinstance(auths, dict):
        return None
    entry = auths.get(server)
    if entry is None:
        want = _config_hostname(server)
        entry = next((v for k, v in auths.items() if _config_hostname(k) == want), None)
    if not isinstance(entry, dict):
        return None
    user, password = entry.get("username") or "", entry.get("password") or ""
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise RegistryError(f"docker config: the auth of {server} is not base64 user:password"
                                ) from None
    token = entry.get("identitytoken") or ""
    if not (user or password or token):
        return None
    return Credentials(user, password, token, "config.json")


def _run_helper(name: str, server: str) -> Credentials | None:
    """`docker-credential-NAME get`: the server URL on stdin, JSON out; None if it has none."""
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise RegistryError(f"credential helper {program} (named in the docker config) is not "
                            "on PATH") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} did not answer in "
                            f"{_HELPER_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        # "credentials not found in native keychain" is how every helper says "none here".
        if b"not found" in done.stdout.lower() + done.stderr.lower():
            return None
        raise RegistryError(f"credential helper {program} failed for {server} "
                            f"(exit {done.returncode})")
    try:
        doc = json.loads(done.stdout)
        user, secret = str(doc.get("Username") or ""), str(doc.get("Secret") or "")
    except (ValueError, AttributeError, RecursionError):
        raise RegistryError(f"credential helper {program}: its answer is not JSON") from None
    if not secret:
        return None
    if user == "<token>":  # docker's marker: the secret is an identity token
        return Credentials(identity_token=secret, origin=program)
    return Credentials(user, secret, "", program)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {realm: ..., ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _CHALLENGE_PARAM.finditer(rest)}
    return scheme.lower(), {k: re.sub(r"\\(.)", r"\1", v) for k, v in params.items()}


@dataclass
class _Grant:
    header: str
    expires: float  # time.monotonic() after which it is asked again


class Authenticator:
    """Answers registry challenges and remembers the answer per registry and repository."""

    def __init__(self, config: DockerConfig, insecure: Iterable[str] = ()) -> None:
        self.config = config
        self.insecure = tuple(insecure)
        self._grants: dict[tuple[str, str], _Grant] = {}
        self._creds: dict[str, Credentials | None] = {}
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def secrets(self) -> set[str]:
        """Every credential and token seen so far (to scrub any text shown to the user)."""
        return set(self._secrets)

    def credentials(self, domain: str) -> Credentials | None:
        """The docker config's credentials for DOMAIN, looked up once."""
        with self._lock:
            if domain not in self._creds:
                creds = self.config.lookup(domain)
                self._creds[domain] = creds
                if creds is not None:
                    self._secrets.update(creds.secrets())
            return self._creds[domain]

    def header(self, host: str, repository: str) -> str | None:
        """The Authorization value to send, if a challenge was answered and it has not expired."""
        grant = self._grants.get((host, repository))
        if grant is None or time.monotonic() >= grant.expires:
            return None
        return grant.header

    def forget(self, host: str, repository: str) -> None:
        """Drop a grant the registry no longer takes (an expired or revoked token)."""
        self._grants.pop((host, repository), None)

    def answer(self, client_for: Callable[[str], Any], host: str, domain: str,
               repository: str, challenge: str) -> str:
        """The Authorization value that answers CHALLENGE (a WWW-Authenticate header).

        `client_for(host)` is the httpx client to reach a token service on `host` with.
        """
        scheme, params = parse_challenge(challenge)
        creds = self.credentials(domain)
        where = f"registry {host}: {repository}"
        if scheme == "basic":
            if creds is None or not creds.password:
                raise Denied(f"{where}: the registry asks for a password and the docker config "
                             "has none for it")
            grant = _Grant(creds.basic(), float("inf"))
        elif scheme == "bearer" and params.get("realm"):
            grant = self._token(client_for, where, params, repository, creds)
        else:
            raise Denied(f"{where}: unsupported authentication challenge {scheme!r}")
        self._secrets.add(grant.header.split(" ", 1)[-1])
        self._grants[(host, repository)] = grant
        return grant.header

    def _token(self, client_for: Callable[[str], Any], where: str, params: dict[str, str],
               repository: str, creds: Credentials | None) -> _Grant:
        """A bearer token from the realm, for pulling REPOSITORY."""
        realm = params["realm"]
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise Denied(f"{where}: the token realm is not an http(s) URL")
        if parts.scheme == "http" and creds is not None and not plain_http_allowed(
                parts.netloc, self.insecure):
            raise Denied(f"{where}: the token service {parts.netloc} is plain HTTP; "
                         "credentials are not sent there")
        scope = f"repository:{repository}:pull"
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        used = "with credentials" if creds is not None else "anonymously"
        client = client_for(parts.netloc)
        deadline = Deadline(TOKEN_WINDOW)
        if creds is not None and creds.identity_token:
            form = dict(query, grant_type="refresh_token", refresh_token=creds.identity_token,
                        client_id="fusebundle")
            request = client.build_request("POST", realm, data=form,
                                           timeout=_timeout(deadline))
        else:
            auth_header = {"Authorization": creds.basic()} if creds and creds.password else {}
            request = client.build_request("GET", realm, params=query, headers=auth_header,
                                           timeout=_timeout(deadline))
        body, response = _token_exchange(client, request, deadline,
                                         f"{where}: the token service {parts.netloc}")
        if response.status_code in (401, 403):
            raise Denied(f"{where}: the token service {parts.netloc} refused a pull token "
                         f"(HTTP {response.status_code}, asked {used}"
                         + (f", credentials from {creds.origin})" if creds else ")"))
        if response.status_code != 200:
            raise RegistryError(f"{where}: the token service {parts.netloc} answered HTTP "
                                f"{response.status_code}")
        token, lifetime = token_answer(body, f"{where}: the token service "
                                             f"{parts.netloc}'s answer")
        if not token:
            raise RegistryError(f"{where}: the token service {parts.netloc} sent no token")
        self._secrets.add(token)
        # Renew a little early: a token that expires between check and use costs a 401 round.
        return _Grant(f"Bearer {token}", time.monotonic() + max(lifetime - 10, 1))


def token_answer(body: bytes, what: str) -> tuple[str, int]:
    """The token and its lifetime in seconds from a token service's answer ("" if it has none).

    Typed as distribution's token client decodes it: token and access_token are strings,
    expires_in a Go int (an integer of 64 bits; 0 or absent means the spec's default).
    """
    try:
        doc = jsondoc.parse(body, what)
    except jsondoc.TooDeep as e:
        raise RegistryError(str(e)) from None
    except UserError:
        return "", 0  # not JSON at all: "sent no token", as before
    if not isinstance(doc, dict):
        return "", 0
    fields = jsondoc.Fields(doc, what)
    try:
        token = fields.string("token") or fields.string("access_token")
        lifetime = fields.integer("expires_in", -jsondoc.INT64_MAX - 1, jsondoc.INT64_MAX)
    except UserError as e:
        raise RegistryError(str(e)) from None
    return token, lifetime or _TOKEN_LIFETIME


def _timeout(deadline: Deadline) -> Any:
    """httpx timeouts that end no later than DEADLINE."""
    httpx = httpx_module()

    return httpx.Timeout(deadline.left())


def _token_exchange(client: Any, request: Any, deadline: Deadline,
                    where: str) -> tuple[bytes, Any]:
    """(body, response) of a token request, within DEADLINE and TOKEN_MAX bytes.

    The body is read only from a 200 answer (b"" otherwise); the response comes back closed.
    """
    httpx = httpx_module()

    data = bytearray()
    try:
        response = client.send(request, stream=True)
        try:
            for chunk in response.iter_bytes() if response.status_code == 200 else ():
                data += chunk
                if len(data) > TOKEN_MAX:
                    raise RegistryError(f"{where}: its answer is bigger than {TOKEN_MAX} "
                                        "bytes (a token is a few KiB)")
                if deadline.passed():  # a drip: each read is quick, the whole is not
                    raise httpx.ReadTimeout("answer too slow")
        finally:
            response.close()
    except httpx.TimeoutException:
        raise RegistryError(f"{where}: no complete answer within {deadline.shown()}") from None
    return bytes(data), response


def scrub(text: str, secrets: Iterable[str]) -> str:
    """TEXT with every secret replaced and URL query strings cut (signed redirects carry keys)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(https?://[^\s?'\"]*)\?[^\s'\"]*", r"\1?…", text)
