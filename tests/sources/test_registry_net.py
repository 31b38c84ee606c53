"""Registries as companies run them: a proxy, a private CA, client certificates, mirrors.

Real components: Debian's tinyproxy and docker-registry (distribution 2.8) on 127.0.0.1,
started and stopped by PID here, a CA and certificates made by openssl, and the command
itself as a process.  A proxy is never used for loopback, so the registry is also reached by
a made-up name, an /etc/hosts line this module adds and restores byte for byte.  The fake
registry stands in only for a mirror that serves wrong bytes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _die_with_parent, _stop
from support.fakeregistry import OCI_MANIFEST, FakeRegistry, Image, SilentServer, make_image, sha256
from support.faulttools import env_for, one_line, temps

from fusebundle.errors import ConfigError
from fusebundle.sources import regnet
from fusebundle.sources.base import Platform
from fusebundle.sources.regauth import RegistryError
from fusebundle.sources.registry import Registry

AMD64 = Platform("linux", "amd64")
PROXY_PASSWORD = "pr0xy-Pa55-q7"  # must never be shown, --debug included
LAYER_FILE = b"through the company network\n" * 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (scripts/setup installs it)")


# -- pure logic ---------------------------------------------------------------------------------
def test_no_proxy_forms_as_curl_reads_them() -> None:
    env = {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "example.com,.corp.net,*.x.org,"
           "reg.io:5000,10.0.0.0/8,192.168.1.7,[fd00::1]:443"}

    def proxied(host: str) -> bool:
        return regnet.proxy_for("https", host, env) is not None

    assert not proxied("example.com") and not proxied("a.b.example.com")
    assert proxied("notexample.com")
    assert not proxied("corp.net") and not proxied("r.corp.net")
    assert not proxied("y.x.org")
    assert not proxied("reg.io:5000") and proxied("reg.io:5001") and proxied("reg.io")
    assert not proxied("10.1.2.3:5000") and proxied("11.1.2.3")
    assert not proxied("192.168.1.7") and proxied("192.168.1.8")
    assert not proxied("[fd00::1]:443") and proxied("[fd00::1]:444")
    assert regnet.proxy_for("https", "anything", {**env, "no_proxy": "*"}) is None


def test_which_variable_and_loopback() -> None:
    env = {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1",
           "HTTP_PROXY": "http://plain:1", "ALL_PROXY": "http://all:1"}
    assert str(regnet.proxy_for("https", "r.io", env)) == "http://lower:1"
    assert str(regnet.proxy_for("http", "r.io", env)) == "http://plain:1"
    assert str(regnet.proxy_for("http", "r.io", {"ALL_PROXY": "all:8"})) == "http://all:8"
    for host in ("localhost:5000", "127.0.0.1", "127.9.9.9:80", "[::1]:5000", "x.localhost"):
        assert regnet.proxy_for("https", host, env) is None, host
    assert regnet.proxy_for("https", "r.io", {}) is None


def test_proxy_credentials_are_never_shown() -> None:
    proxy = regnet.parse_proxy(f"http://bob:{PROXY_PASSWORD}@p.corp:3128", "HTTPS_PROXY")
    assert proxy.shown == "http://p.corp:3128" and str(proxy) == proxy.shown
    assert PROXY_PASSWORD not in repr(proxy) and PROXY_PASSWORD in proxy.secrets
    with pytest.raises(ConfigError) as e:
        regnet.parse_proxy(f"socks5://bob:{PROXY_PASSWORD}@p:1080", "ALL_PROXY")
    assert PROXY_PASSWORD not in str(e.value) and "ALL_PROXY" in str(e.value)


def test_mirror_flags() -> None:
    table = regnet.parse_mirrors(["https://hub-cache.corp"],
                                 ["ghcr.io=http://127.0.0.1:5001", "all.corp:443"])
    assert [str(m) for m in regnet.mirrors_for(table, "docker.io")] == [
        "https://hub-cache.corp", "all.corp:443"]
    assert [str(m) for m in regnet.mirrors_for(table, "ghcr.io")] == [
        "http://127.0.0.1:5001", "all.corp:443"]
    for bad in (["=x"], ["ghcr.io="], ["ftp://m"], ["https://m/path"]):
        with pytest.raises(ConfigError):
            regnet.parse_mirrors([], bad)


def test_cert_without_key_names_both(tmp_path: Path) -> None:
    d = tmp_path / "reg.corp:5000"
    d.mkdir()
    (d / "client.cert").write_text("x")
    with pytest.raises(RegistryError) as e:
        regnet.host_tls("reg.corp:5000", str(tmp_path))
    assert str(d / "client.cert") in str(e.value) and str(d / "client.key") in str(e.value)
    assert regnet.host_tls("other:5000", str(tmp_path)) is None


# -- real servers ---------------------------------------------------------------------------
class Distribution:
    """Debian's docker-registry on 127.0.0.1 with the given extra config (TLS, proxy)."""

    def __init__(self, root: Path, http_extra: str = "", extra: str = "") -> None:
        _need("docker-registry")
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: info\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{http_extra}{extra}")
        self.log = root / "registry.log"
        with open(self.log, "wb") as log:
            self.proc: subprocess.Popen | None = subprocess.Popen(
                ["docker-registry", "serve", str(root / "config.yml")], stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while "listening on" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("docker-registry did not start:\n" + self.log.read_text()[-2000:])
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 10)
            self.proc = None


def push(address: str, repo: str, tag: str, image: Image) -> None:
    """IMAGE into a plain-HTTP registry through the distribution API, bytes unchanged."""
    for blob in [image.config, *image.layers]:
        start = urllib.request.Request(f"http://{address}/v2/{repo}/blobs/uploads/",
                                       method="POST")
        with urllib.request.urlopen(start, timeout=10) as r:
            location = r.headers["Location"]
        if location.startswith("/"):
            location = f"http://{address}{location}"
        sep = "&" if "?" in location else "?"
        put = urllib.request.Request(f"{location}{sep}digest={sha256(blob)}", data=blob,
                                     method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
        urllib.request.urlopen(put, timeout=10).close()
    put = urllib.request.Request(f"http://{address}/v2/{repo}/manifests/{tag}",
                                 data=image.manifest, method="PUT",
                                 headers={"Content-Type": OCI_MANIFEST})
    urllib.request.urlopen(put, timeout=10).close()


@pytest.fixture(scope="module")
def image() -> Image:
    return make_image([{"etc/hello": LAYER_FILE}, {"bin/big": os.urandom(300_000)}])


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, image: Image) -> Iterator[Distribution]:
    reg = Distribution(tmp_path_factory.mktemp("origin"))
    try:
        push(reg.address, "fb/app", "1", image)
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def hostname() -> Iterator[str]:
    """A made-up registry name for 127.0.0.1 (an /etc/hosts line, removed exactly after)."""
    hosts = Path("/etc/hosts")
    if not os.access(hosts, os.W_OK):
        pytest.skip("/etc/hosts is not writable (needs root)")
    name = f"fbreg-{secrets.token_hex(4)}.test"
    before = hosts.read_bytes()
    try:
        with open(hosts, "ab") as f:  # in place: /etc/hosts may be a bind mount
            f.write((b"" if before.endswith(b"\n") or not before else b"\n") +
                    f"127.0.0.1 {name}\n".encode())
        yield name
    finally:
        with open(hosts, "r+b") as f:
            f.write(before)
            f.truncate()
        assert hosts.read_bytes() == before


class Tinyproxy:
    """Debian's tinyproxy on 127.0.0.1, its log in `log`."""

    def __init__(self, root: Path, rules: str = "Allow 127.0.0.1\n") -> None:
        _need("tinyproxy")
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "tinyproxy.log"
        conf = root / "tinyproxy.conf"
        conf.write_text(f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\n"
                        f'LogFile "{self.log}"\nLogLevel Info\n{rules}')
        self.proc: subprocess.Popen | None = subprocess.Popen(
            ["tinyproxy", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("tinyproxy did not start")
            time.sleep(0.05)

    def seen(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 10)
            self.proc = None


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    p = Tinyproxy(tmp_path / "proxy")
    yield p
    p.stop()


def fb(tmp_path: Path, host: str, *args: str, env: dict[str, str] | None = None,
       cache: str = "cache") -> subprocess.CompletedProcess[str]:
    """`fusebundle pull --from registry` of HOST/fb/app:1, proxies only as ENV says."""
    cfg = tmp_path / "app.yml"
    cfg.write_text(f"onboot:\n  - name: app\n    image: {host}/fb/app:1\n")
    e = {k: v for k, v in env_for(tmp_path / cache).items()
         if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    e["HOME"] = str(tmp_path / "home")  # no ~/.config/containers/certs.d of the machine's
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fusebundle", "pull", "-q", "--from",
                           "registry", *args, str(cfg)], env=e, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def stored(tmp_path: Path, image: Image, cache: str = "cache") -> bool:
    layers = tmp_path / cache / "layers" / "sha256"
    return all((layers / (d[7:] + ".tar")).exists() for d in image.diff_ids)


def nothing_stored(tmp_path: Path, cache: str = "cache") -> None:
    layers = tmp_path / cache / "layers" / "sha256"
    assert not (layers.is_dir() and any(layers.iterdir()))
    assert temps(tmp_path / cache) == []


# -- proxies ------------------------------------------------------------------------------------
def test_pull_through_the_proxy(tmp_path: Path, origin: Distribution, hostname: str,
                                proxy: Tinyproxy, image: Image) -> None:
    where = f"{hostname}:{origin.port}"
    env = {"HTTPS_PROXY": proxy.url, "http_proxy": proxy.url}
    r = fb(tmp_path, where, "--insecure-registry", where, env=env)
    assert r.returncode == 0, r.stderr
    assert f"origin {where}" in r.stdout
    assert stored(tmp_path, image)
    log = proxy.seen()
    assert f"http://{where}/v2/fb/app/manifests/1" in log, log
    assert f"http://{where}/v2/fb/app/blobs/{sha256(image.layers[1])}" in log


def test_no_proxy_goes_direct(tmp_path: Path, origin: Distribution, hostname: str,
                              proxy: Tinyproxy, image: Image) -> None:
    where = f"{hostname}:{origin.port}"
    env = {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url, "NO_PROXY": "corp.example,.test"}
    r = fb(tmp_path, where, "--insecure-registry", where, env=env)
    assert r.returncode == 0, r.stderr
    assert stored(tmp_path, image)
    assert hostname not in proxy.seen()


def test_proxy_that_refuses_is_one_line(tmp_path: Path, origin: Distribution, hostname: str,
                                        image: Image) -> None:
    refusing = Tinyproxy(tmp_path / "proxy", rules="Allow 10.254.254.254\n")
    try:
        r = fb(tmp_path, f"{hostname}:{origin.port}", env={"HTTPS_PROXY": refusing.url})
    finally:
        refusing.stop()
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert f"through proxy {refusing.url}" in line and "refused" in line, line
    nothing_stored(tmp_path)


def test_closed_proxy_is_one_line(tmp_path: Path, hostname: str, origin: Distribution) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    r = fb(tmp_path, f"{hostname}:{origin.port}", env={"HTTPS_PROXY": closed})
    assert r.returncode == 1, r.stderr
    assert f"through proxy {closed}" in one_line(r.stderr)


def test_proxy_credentials(tmp_path: Path, origin: Distribution, hostname: str,
                           image: Image) -> None:
    guarded = Tinyproxy(tmp_path / "proxy",
                        rules=f"Allow 127.0.0.1\nBasicAuth bob {PROXY_PASSWORD}\n")
    where = f"{hostname}:{origin.port}"
    host_port = guarded.url.removeprefix("http://")
    try:
        r = fb(tmp_path, where, env={"HTTPS_PROXY": guarded.url})
        assert r.returncode == 1
        line = one_line(r.stderr)
        assert f"through proxy {guarded.url}" in line and "407" in line, line
        wrong = f"http://bob:{PROXY_PASSWORD}x@{host_port}"
        r = fb(tmp_path, where, "--debug", "--insecure-registry", where,
               env={"HTTPS_PROXY": wrong, "HTTP_PROXY": wrong})
        assert r.returncode == 1
        line = one_line(r.stderr)
        # tinyproxy answers wrong credentials with a 401 of its own, not a 407.
        assert f"through proxy {guarded.url}" in line, line
        assert PROXY_PASSWORD not in r.stderr + r.stdout
        right = f"http://bob:{PROXY_PASSWORD}@{host_port}"
        r = fb(tmp_path, where, "--debug", "--insecure-registry", where,
               env={"HTTPS_PROXY": right, "HTTP_PROXY": right})
        assert r.returncode == 0, r.stderr
        assert PROXY_PASSWORD not in r.stderr + r.stdout
        assert stored(tmp_path, image)
        assert f"http://{where}/v2/fb/app/manifests/1" in guarded.seen()
    finally:
        guarded.stop()
    assert PROXY_PASSWORD not in "".join(p.read_text(errors="replace")
                                         for p in (tmp_path / "cache").rglob("*")
                                         if p.is_file() and p.suffix != ".tar")


# -- private CA and client certificates --------------------------------------------------------
def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, hostname: str) -> Path:
    """A test CA, a server certificate for HOSTNAME and a client certificate, by openssl."""
    _need("openssl")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=fusebundle test CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))
    for who, ext in (("server", f"subjectAltName=DNS:{hostname},IP:127.0.0.1"),
                     ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                 "-keyout", str(d / f"{who}.key"), "-out", str(d / f"{who}.csr"))
        (d / f"{who}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{who}.csr"), "-CA", str(d / "ca.pem"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
                 "-extfile", str(d / f"{who}.ext"), "-out", str(d / f"{who}.pem"))
    return d


def _tls_registry(root: Path, pki: Path, image: Image, clientcas: bool) -> Distribution:
    """A TLS docker-registry with IMAGE in it (copied from a plain one by its storage)."""
    plain = Distribution(root / "plain")
    try:
        push(plain.address, "fb/app", "1", image)
    finally:
        plain.stop()
    tls = (f"  tls:\n    certificate: {pki / 'server.pem'}\n    key: {pki / 'server.key'}\n"
           + (f"    clientcas:\n      - {pki / 'ca.pem'}\n" if clientcas else ""))
    reg = Distribution(root / "tls", http_extra=tls)
    shutil.copytree(root / "plain" / "data", root / "tls" / "data", dirs_exist_ok=True)
    return reg


def _certs_d(tmp_path: Path, where: str, pki: Path, *files: tuple[str, str]) -> Path:
    tree = tmp_path / "certs.d"
    (tree / where).mkdir(parents=True)
    for source, name in files:
        shutil.copy(pki / source, tree / where / name)
    return tree


def test_private_ca_through_certs_d(tmp_path: Path, pki: Path, hostname: str,
                                    image: Image) -> None:
    reg = _tls_registry(tmp_path / "reg", pki, image, clientcas=False)
    try:
        where = f"{hostname}:{reg.port}"
        r = fb(tmp_path, where)
        assert r.returncode == 1
        line = one_line(r.stderr)
        assert where in line and "certificate verify failed" in line, line
        nothing_stored(tmp_path)
        tree = _certs_d(tmp_path, where, pki, ("ca.pem", "ca.crt"))
        r = fb(tmp_path, where, "--cert-dir", str(tree))
        assert r.returncode == 0, r.stderr
        assert stored(tmp_path, image)
        # Loopback too: a certs.d entry means verified TLS (its certificate names 127.0.0.1).
        loop = _certs_d(tmp_path / "loop", reg.address, pki, ("server.pem", "ca.crt"))
        r = fb(tmp_path, reg.address, "--cert-dir", str(loop), cache="cache2")
        assert r.returncode == 1 and "certificate verify failed" in one_line(r.stderr)
    finally:
        reg.stop()


def test_https_through_connect(tmp_path: Path, pki: Path, hostname: str, proxy: Tinyproxy,
                               image: Image) -> None:
    reg = _tls_registry(tmp_path / "reg", pki, image, clientcas=True)
    try:
        where = f"{hostname}:{reg.port}"
        pair = _certs_d(tmp_path, where, pki, ("ca.pem", "ca.crt"),
                        ("client.pem", "client.cert"), ("client.key", "client.key"))
        r = fb(tmp_path, where, "--cert-dir", str(pair), env={"https_proxy": proxy.url})
        assert r.returncode == 0, r.stderr
        assert stored(tmp_path, image)
        assert f"CONNECT {where}" in proxy.seen()
    finally:
        reg.stop()


def test_client_certificates(tmp_path: Path, pki: Path, hostname: str, image: Image) -> None:
    reg = _tls_registry(tmp_path / "reg", pki, image, clientcas=True)
    try:
        where = f"{hostname}:{reg.port}"
        ca_only = _certs_d(tmp_path / "a", where, pki, ("ca.pem", "ca.crt"))
        r = fb(tmp_path, where, "--cert-dir", str(ca_only))
        assert r.returncode == 1
        line = one_line(r.stderr)
        assert where in line and "TLS failure" in line, line
        nothing_stored(tmp_path)
        no_key = _certs_d(tmp_path / "b", where, pki, ("ca.pem", "ca.crt"),
                          ("client.pem", "client.cert"))
        r = fb(tmp_path, where, "--cert-dir", str(no_key))
        assert r.returncode == 1
        line = one_line(r.stderr)
        assert str(no_key / where / "client.cert") in line
        assert str(no_key / where / "client.key") in line
        pair = _certs_d(tmp_path / "c", where, pki, ("ca.pem", "ca.crt"),
                        ("client.pem", "client.cert"), ("client.key", "client.key"))
        r = fb(tmp_path, where, "--cert-dir", str(pair))
        assert r.returncode == 0, r.stderr
        assert stored(tmp_path, image)
    finally:
        reg.stop()


# -- mirrors ------------------------------------------------------------------------------------
def test_pull_through_mirror_then_origin(tmp_path: Path, origin: Distribution,
                                         image: Image) -> None:
    mirror = Distribution(tmp_path / "mirror",
                          extra=f"proxy:\n  remoteurl: http://{origin.address}\n")
    try:
        flag = f"{origin.address}=http://{mirror.address}"
        r = fb(tmp_path, origin.address, "--mirror", flag)
        assert r.returncode == 0, r.stderr
        assert f"mirror http://{mirror.address}" in r.stdout and "origin" not in r.stdout
        assert stored(tmp_path, image)
        # The pull-through cache fetched and kept what it served.
        blobs = mirror.root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256"
        assert any(p.name == "data" for p in blobs.rglob("data"))
    finally:
        mirror.stop()
    r = fb(tmp_path, origin.address, "--mirror", flag, cache="cache2")
    assert r.returncode == 0, r.stderr
    assert f"origin {origin.address}; after mirror http://{mirror.address}" in r.stdout
    assert stored(tmp_path, image, "cache2")


def test_mirror_with_wrong_bytes_falls_back_to_origin(tmp_path: Path, origin: Distribution,
                                                      image: Image) -> None:
    fake = FakeRegistry().start()
    try:
        fake.put("fb/app", "1", image)
        bad = sha256(image.layers[1])
        fake.misbehave(f"/v2/fb/app/blobs/{bad}", "flip")
        r = fb(tmp_path, origin.address, "--mirror", f"http://{fake.address}")
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()[0]
        assert f"mirror http://{fake.address}" in out
        assert f"layer {bad[:19]} not from mirror http://{fake.address}" in out, out
        assert stored(tmp_path, image)  # diff_ids checked by the store: the origin's bytes
        assert len(fake.requests(lambda s: s.path.endswith(bad))) == 1
    finally:
        fake.stop()


def test_silent_mirror_is_waited_for_once(tmp_path: Path, image: Image,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FUSEBUNDLE_TEST_NET_SCALE", "0.1")  # its 15 s ping bound -> 1.5 s
    silent, origin = SilentServer(), FakeRegistry().start()
    try:
        origin.put("fb/app", "1", image)
        origin.put("fb/app", "2", image)
        reg = Registry(docker_config=str(tmp_path), backoff=0.05,
                       mirrors=regnet.parse_mirrors([], [silent.address]))
        for tag in ("1", "2"):
            got = reg.resolve(f"{origin.address}/fb/app:{tag}", AMD64)
            assert got.manifest_digest == image.digest
            label, failed = reg.answered[f"{origin.address}/fb/app:{tag}"]
            assert label == f"origin {origin.address}"
            assert f"mirror {silent.address}" in failed and "no answer within" in failed
        assert silent.accepted == 2  # HTTPS then HTTP, for the first image only
    finally:
        silent.stop()
        origin.stop()


def test_help_shows_the_flags() -> None:
    for command in ("pack", "pull", "config", "mount"):
        out = subprocess.run([sys.executable, "-m", "fusebundle", command, "--help"],
                             capture_output=True, text=True, check=True,
                             env=env_for(Path("/nonexistent"))).stdout
        for flag in ("--cert-dir", "--registry-mirror", "--mirror", "HTTPS_PROXY"):
            assert flag in out, (command, flag)


def test_bad_mirror_flag_is_one_line(tmp_path: Path) -> None:
    r = fb(tmp_path, "127.0.0.1:1", "--mirror", "reg.io=ftp://m")
    assert r.returncode == 2
    assert "--mirror" in one_line(r.stderr)
