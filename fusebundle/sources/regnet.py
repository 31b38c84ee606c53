"""How a registry is reached in company networks: proxies, per-registry TLS, mirrors.

Proxies come from `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (lowercase first, as
curl and Python's urllib read them); loopback is never proxied (as Go and docker).  TLS
material for a registry comes from a certs.d tree as docker and skopeo lay it out
(`HOST[:PORT]/*.crt` extra CAs, `*.cert` + `*.key` client pairs).  Mirrors are endpoints
tried before a registry's own (docker's `registry-mirrors`, LinuxKit's `--mirror`).
"""

from __future__ import annotations

import glob
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from fusebundle.errors import ConfigError
from fusebundle.sources import reference
from fusebundle.sources.regauth import RegistryError, host_without_port

if TYPE_CHECKING:  # ssl is imported when a context is made: not on every command's start
    import ssl

# skopeo / containers/image read the first of these that has a directory for the host, the
# user's own first; docker reads only the last.  --cert-dir replaces them (skopeo's flag).
CERTS_D_TREES = ("~/.config/containers/certs.d", "/etc/containers/certs.d",
                 "/etc/docker/certs.d")


# -- proxies ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proxy:
    """A proxy URL; `shown` is it without credentials, `secrets` what must never be shown."""

    url: str = field(repr=False)
    shown: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def __str__(self) -> str:
        return self.shown


def _env(names: Iterable[str], env: Mapping[str, str]) -> str:
    """The first of NAMES set to a non-empty value, each lowercase form before its uppercase."""
    for name in names:
        for key in (name.lower(), name.upper()):
            value = env.get(key, "").strip()
            if value:
                return value
    return ""


def parse_proxy(value: str, variable: str) -> Proxy:
    """A proxy variable's value as a Proxy; ConfigError (naming no credentials) if malformed."""
    raw = value if "://" in value else "http://" + value  # curl's default scheme
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    host = parts.hostname or ""
    shown = f"{scheme}://{host}" + (f":{port}" if port and port > 0 else "")
    if scheme not in ("http", "https") or not host or port == -1:
        raise ConfigError(f"{variable}: expected http://[USER:PASSWORD@]HOST[:PORT], got "
                          f"{shown if host else 'no host'} (SOCKS proxies are not supported)")
    # The user name is not secret (and a short one would blank out half of every message).
    secrets = tuple(s for s in (parts.password, unquote(parts.password or "")) if s)
    if parts.password:
        import base64

        pair = f"{unquote(parts.username or '')}:{unquote(parts.password)}"
        secrets += (base64.b64encode(pair.encode()).decode(),)
    return Proxy(raw, shown, secrets)


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 and ::1 (with or without a port): never proxied."""
    bare = host_without_port(host).lower()
    if bare == "localhost" or bare.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def _split_entry(entry: str) -> tuple[str, str]:
    """A NO_PROXY entry as (host, port or "")."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest.removeprefix(":")
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def bypasses(no_proxy: str, host: str) -> bool:
    """True if NO_PROXY sends HOST[:PORT] direct: `*`, hosts, domains (a leading dot or not,
    subdomains too), `host:port`, and CIDRs or addresses for IP hosts, as curl reads it."""
    bare = host_without_port(host).lower().rstrip(".")
    port = _split_entry(host)[1] if host.startswith("[") or host.count(":") == 1 else ""
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    for raw in no_proxy.replace(" ", ",").split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, entry_port = _split_entry(entry)
        if entry_port and entry_port != port:
            continue
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.removeprefix("*").lstrip(".").rstrip(".")  # Go also takes "*.corp"
        if name and (bare == name or bare.endswith("." + name)):
            return True
    return False


def proxy_for(scheme: str, host: str, env: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy a request to SCHEME://HOST goes through, or None for a direct connection."""
    env = os.environ if env is None else env
    if is_loopback(host):
        return None
    names = ("https_proxy", "all_proxy") if scheme == "https" else ("http_proxy", "all_proxy")
    value = _env(names, env)
    if not value or bypasses(_env(("no_proxy",), env), host):
        return None
    variable = next(n.upper() for n in names if _env((n,), env))
    return parse_proxy(value, variable)


# -- certs.d ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HostTLS:
    """What a certs.d directory gives one registry: extra CAs and a client certificate."""

    directory: str
    cas: tuple[str, ...] = ()
    client: tuple[str, str] | None = None  # (certificate, key)


def host_tls(host: str, cert_dir: str | None = None) -> HostTLS | None:
    """The certs.d directory for HOST[:PORT] (the first tree that has one), read; None if none.

    A `.cert` without its `.key` (or the reverse) is one line naming both files, as docker.
    """
    trees = [cert_dir] if cert_dir else [os.path.expanduser(t) for t in CERTS_D_TREES]
    for tree in trees:
        directory = os.path.join(tree, host)
        if os.path.isdir(directory):
            return _read_dir(directory)
    return None


def _read_dir(directory: str) -> HostTLS:
    cas = tuple(sorted(glob.glob(os.path.join(glob.escape(directory), "*.crt"))))
    pairs = []
    for cert in sorted(glob.glob(os.path.join(glob.escape(directory), "*.cert"))):
        key = cert[: -len(".cert")] + ".key"
        if not os.path.exists(key):
            raise RegistryError(f"client certificate {cert} has no key {key} (certs.d "
                                "wants both; a CA certificate ends in .crt)")
        pairs.append((cert, key))
    for key in sorted(glob.glob(os.path.join(glob.escape(directory), "*.key"))):
        cert = key[: -len(".key")] + ".cert"
        if not os.path.exists(cert):
            raise RegistryError(f"client key {key} has no certificate {cert}")
    # Python's ssl holds one client certificate per context: the first pair, by name.
    return HostTLS(directory, cas, pairs[0] if pairs else None)


def ssl_context(tls: HostTLS | None, verify: bool) -> ssl.SSLContext:
    """The system CAs plus TLS's, its client certificate; no checks at all if not VERIFY."""
    import ssl

    if verify:
        context = ssl.create_default_context()
    else:  # no CA store to load (tens of ms) for a context that checks nothing
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls is None:
        return context
    for ca in tls.cas:
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"CA certificate {ca}: unusable ({_ssl_reason(e)})") from None
    if tls.client is not None:
        cert, key = tls.client
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise RegistryError(f"client certificate {cert} with key {key}: unusable "
                                f"({_ssl_reason(e)})") from None
    return context


def _ssl_reason(e: BaseException) -> str:
    return getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)


# -- mirrors ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mirror:
    """A mirror endpoint: its host[:port] and the scheme it was given with ("" if none)."""

    host: str
    scheme: str = ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}" if self.scheme else self.host


def parse_mirror_url(value: str, flag: str) -> Mirror:
    """`[http[s]://]HOST[:PORT][/]` as a Mirror; ConfigError otherwise (no path: as docker)."""
    raw = value if "://" in value else "//" + value
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ConfigError(f"{flag} {value}: bad port") from None
    if scheme not in ("", "http", "https") or not parts.hostname or \
            parts.path.strip("/") or parts.query or parts.username:
        raise ConfigError(f"{flag} {value}: expected [http[s]://]HOST[:PORT], no path")
    return Mirror(parts.netloc.lower(), scheme)


def parse_mirrors(registry_mirrors: Iterable[str] = (),
                  mirrors: Iterable[str] = ()) -> dict[str, list[Mirror]]:
    """Mirrors by registry domain ("*" for all), in the order they are tried.

    --registry-mirror URL is for docker.io (dockerd's registry-mirrors); --mirror
    [REGISTRY=]URL is for one registry, or for all without REGISTRY= (LinuxKit's flag).
    """
    table: dict[str, list[Mirror]] = {}
    for value in registry_mirrors:
        table.setdefault(reference.DEFAULT_DOMAIN, []).append(
            parse_mirror_url(value, "--registry-mirror"))
    for value in mirrors:
        domain, sep, url = value.partition("=")
        if not sep:
            domain, url = "*", value
        domain = domain.strip().lower()
        if domain in ("index.docker.io", "registry-1.docker.io"):
            domain = reference.DEFAULT_DOMAIN
        if not domain or not url:
            raise ConfigError(f"--mirror {value}: expected [REGISTRY=]URL")
        table.setdefault(domain, []).append(parse_mirror_url(url, "--mirror"))
    return table


def mirrors_for(table: Mapping[str, list[Mirror]], domain: str) -> list[Mirror]:
    """The mirrors of DOMAIN, its own first, then those for every registry."""
    return list(dict.fromkeys([*table.get(domain, []), *table.get("*", [])]))
