"""The registry source: against our fake registry (auth, faults) and Debian's docker-registry.

The fake one (tests/fakeregistry.py) serves real blobs over real HTTP on 127.0.0.x and
misbehaves on demand; the real one (distribution 2.8) is fed by `docker push` from the private
dockerd and by `skopeo copy`, and what the source reads back is compared with the engine's
own view of the image.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LocalRegistry
from support.fakeregistry import DOCKER_LIST, FakeRegistry, Image, make_image, sha256

from fusebundle.errors import UserError
from fusebundle.sources.base import NotFound, Platform, ResolvedImage
from fusebundle.sources.registry import Denied, Registry, RegistryError

AMD64 = Platform("linux", "amd64")
PASSWORD = "pa55-w0rd-Zq8"  # a value that must never show up anywhere


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and text, repr(text)
    return text


def read_all(reg: Registry, image: ResolvedImage, i: int) -> bytes:
    with reg.open_blob(image, image.layers[i]) as f:
        return f.read()


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    reg = FakeRegistry().start()
    yield reg
    reg.stop()


@pytest.fixture
def image() -> Image:
    # ~1.5 MB of incompressible data: several chunks, so a drop can come mid-blob.
    big = os.urandom(1_500_000)
    return make_image([{"etc/base": b"base layer\n"}, {"big.bin": big, "etc/top": b"top\n"}])


@pytest.fixture
def docker_config(tmp_path: Path) -> Path:
    d = tmp_path / "dockercfg"
    d.mkdir()
    return d


def write_config(d: Path, doc: dict) -> None:
    (d / "config.json").write_text(json.dumps(doc))


def registry(config: Path, **kw: object) -> Registry:
    kw.setdefault("backoff", 0.05)
    return Registry(docker_config=str(config), **kw)  # type: ignore[arg-type]


def check_blobs(reg: Registry, resolved: ResolvedImage, want: Image) -> None:
    assert [layer.digest for layer in resolved.layers] == [sha256(b) for b in want.layers]
    for i, blob in enumerate(want.layers):
        data = read_all(reg, resolved, i)
        assert sha256(data) == resolved.layers[i].digest
        assert data == blob


# -- the main path, and auth ------------------------------------------------------------------
def test_anonymous_pull(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    assert got.config_bytes == image.config
    assert got.config_digest == sha256(image.config)
    assert [layer.diff_id for layer in got.layers] == image.diff_ids
    assert got.manifest_digest == image.digest
    assert got.name == f"{fake.address}/fb/app:1"
    assert got.platform == "linux/amd64"
    check_blobs(reg, got, image)
    accept = fake.requests(lambda s: "/manifests/" in s.path)[0].headers["accept"]
    for media_type in ("application/vnd.oci.image.index.v1+json",
                       "application/vnd.oci.image.manifest.v1+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json",
                       "application/vnd.docker.distribution.manifest.v2+json"):
        assert media_type in accept


def test_bearer_token_with_config_credentials(fake: FakeRegistry, image: Image,
                                              docker_config: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.auth, fake.users, fake.anonymous_pull = "bearer", {"alice": PASSWORD}, False
    fake.put("fb/private", "1", image)
    auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    write_config(docker_config, {"auths": {f"http://{fake.address}/v1/": {"auth": auth}}})
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/private:1", AMD64)
    check_blobs(reg, got, image)
    token_asks = fake.requests(lambda s: s.path.startswith("/token"))
    # One token for the repository, reused for the manifest, the config and both layers.
    assert len(token_asks) == 1
    assert "scope=repository%3Afb%2Fprivate%3Apull" in token_asks[0].path
    assert "service=fake-registry" in token_asks[0].path
    assert token_asks[0].headers["authorization"] == f"Basic {auth}"
    token = next(iter(fake.tokens))
    blob_gets = fake.requests(lambda s: "/blobs/" in s.path)
    assert all(s.headers.get("authorization") == f"Bearer {token}" for s in blob_gets)
    for text in (caplog.text, repr(reg), repr(got), repr(reg._auth.credentials(fake.address))):
        assert PASSWORD not in text and auth not in text and token not in text


def test_revoked_token_is_asked_again(fake: FakeRegistry, image: Image,
                                      docker_config: Path) -> None:
    fake.auth = "bearer"
    fake.put("fb/app", "1", image)
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    assert len(fake.requests(lambda s: s.path.startswith("/token"))) == 1
    fake.tokens.clear()  # the registry forgets it (expired early, revoked)
    check_blobs(reg, got, image)
    assert len(fake.requests(lambda s: s.path.startswith("/token"))) == 2


def test_blobs_stream_from_several_threads(fake: FakeRegistry, docker_config: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    image = make_image([{f"f{i}": os.urandom(300_000)} for i in range(6)])
    fake.auth = "bearer"
    fake.put("fb/app", "1", image)
    fake.misbehave(blob_path(image, 2), "drop:100000")
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    with ThreadPoolExecutor(4) as pool:
        blobs = list(pool.map(lambda i: read_all(reg, got, i), range(6)))
    assert blobs == image.layers


def test_bearer_wrong_password_is_one_line_without_it(fake: FakeRegistry, image: Image,
                                                      docker_config: Path) -> None:
    fake.auth, fake.users, fake.anonymous_pull = "bearer", {"alice": "other"}, False
    fake.put("fb/private", "1", image)
    write_config(docker_config, {"auths": {fake.address: {"username": "alice",
                                                          "password": PASSWORD}}})
    with pytest.raises(Denied) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/private:1", AMD64)
    text = one_line(e.value)
    assert fake.address in text and "fb/private" in text and "with credentials" in text
    assert PASSWORD not in text and PASSWORD not in repr(e.value)
    assert e.value.__cause__ is None and e.value.__context__ is None or \
        PASSWORD not in str(e.value.__context__)


def test_anonymous_refused_says_no_credentials(fake: FakeRegistry, image: Image,
                                               docker_config: Path) -> None:
    fake.auth, fake.anonymous_pull = "bearer", False
    fake.put("fb/private", "1", image)
    with pytest.raises(Denied) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/private:1", AMD64)
    assert "anonymously" in one_line(e.value)


def test_forbidden_repository(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/secret", "1", image)
    fake.forbidden.add("fb/secret")
    with pytest.raises(Denied) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/secret:1", AMD64)
    text = one_line(e.value)
    assert "HTTP 403" in text and "fb/secret" in text and fake.address in text


def test_basic_challenge(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.auth, fake.users = "basic", {"bob": PASSWORD}
    fake.put("fb/app", "1", image)
    write_config(docker_config, {"auths": {fake.address: {"username": "bob",
                                                          "password": PASSWORD}}})
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    check_blobs(reg, got, image)
    # Without credentials: one line that says the config has none.
    write_config(docker_config, {})
    with pytest.raises(Denied) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/app:1", AMD64)
    assert "password" in one_line(e.value) and PASSWORD not in str(e.value)


def test_identity_token_uses_the_refresh_grant(fake: FakeRegistry, image: Image,
                                               docker_config: Path) -> None:
    refresh = "refresh-" + PASSWORD
    fake.auth, fake.anonymous_pull, fake.identity_tokens = "bearer", False, {refresh}
    fake.put("fb/app", "1", image)
    write_config(docker_config, {"auths": {fake.address: {"identitytoken": refresh}}})
    reg = registry(docker_config)
    check_blobs(reg, reg.resolve(f"{fake.address}/fb/app:1", AMD64), image)
    posts = fake.requests(lambda s: s.method == "POST")
    assert len(posts) == 1 and posts[0].path == "/token"


def _helper(bin_dir: Path, log: Path, answer: dict | None) -> None:
    """A docker-credential-fbtest that logs its stdin and prints ANSWER (or "not found")."""
    script = bin_dir / "docker-credential-fbtest"
    reply = (f"echo '{json.dumps(answer)}'" if answer is not None
             else "echo 'credentials not found in native keychain'; exit 1")
    script.write_text(f'#!/bin/sh\n[ "$1" = get ] || exit 3\ncat >> {log}\necho >> {log}\n'
                      f"{reply}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_credential_helper(fake: FakeRegistry, image: Image, docker_config: Path,
                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir, log = tmp_path / "bin", tmp_path / "helper.log"
    bin_dir.mkdir()
    _helper(bin_dir, log, {"ServerURL": fake.address, "Username": "carol", "Secret": PASSWORD})
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    fake.auth, fake.users, fake.anonymous_pull = "bearer", {"carol": PASSWORD}, False
    fake.put("fb/app", "1", image)
    write_config(docker_config, {"credsStore": "fbtest"})
    reg = registry(docker_config)
    check_blobs(reg, reg.resolve(f"{fake.address}/fb/app:1", AMD64), image)
    assert log.read_text().split() == [fake.address]  # asked once, with the server's name
    # credHelpers wins over credsStore, per registry; a helper without an answer means none.
    _helper(bin_dir, log, None)
    write_config(docker_config, {"credsStore": "nosuch", "credHelpers": {fake.address: "fbtest"}})
    with pytest.raises(Denied) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/app:1", AMD64)
    assert "anonymously" in one_line(e.value)
    # A helper that is not installed: one line naming it.
    write_config(docker_config, {"credsStore": "nosuch"})
    with pytest.raises(RegistryError) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/app:1", AMD64)
    assert "docker-credential-nosuch" in one_line(e.value)


def test_docker_hub_names() -> None:
    from fusebundle.sources.registry import registry_host

    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("ghcr.io") == "ghcr.io"


def test_docker_hub_credentials_key(docker_config: Path) -> None:
    from fusebundle.sources.regauth import DockerConfig

    write_config(docker_config, {"auths": {"https://index.docker.io/v1/": {
        "auth": base64.b64encode(f"dave:{PASSWORD}".encode()).decode()}}})
    creds = DockerConfig(str(docker_config)).lookup("docker.io")
    assert creds is not None and (creds.username, creds.password) == ("dave", PASSWORD)
    assert PASSWORD not in repr(creds)
    assert DockerConfig(str(docker_config)).lookup("ghcr.io") is None


# -- faults -----------------------------------------------------------------------------------
def blob_path(image: Image, i: int, repo: str = "fb/app") -> str:
    return f"/v2/{repo}/blobs/{sha256(image.layers[i])}"


def test_429_honours_retry_after(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave("/v2/fb/app/manifests/1", "429:1")
    reg = registry(docker_config, backoff=0.01)
    start = time.monotonic()
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    assert time.monotonic() - start >= 0.9  # waited as asked, not the 10 ms backoff
    assert got.manifest_digest == image.digest
    assert len(fake.requests(lambda s: s.path == "/v2/fb/app/manifests/1")) == 2


def test_retry_after_is_capped(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave("/v2/fb/app/manifests/1", "429:3600")
    start = time.monotonic()
    got = registry(docker_config, max_wait=0.2).resolve(f"{fake.address}/fb/app:1", AMD64)
    assert time.monotonic() - start < 5
    assert got.manifest_digest == image.digest


def test_retry_after_forms() -> None:
    import email.utils

    from fusebundle.sources.registry import _retry_after

    assert _retry_after("7", 30) == 7
    assert _retry_after("90", 30) == 30
    assert _retry_after(None, 30) is None and _retry_after("soon", 30) is None
    later = email.utils.formatdate(time.time() + 12, usegmt=True)
    assert 9 <= (_retry_after(later, 30) or 0) <= 12


def test_challenge_parsing() -> None:
    from fusebundle.sources.regauth import parse_challenge

    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/alpine:pull,push"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})


def test_where_plain_http_is_allowed() -> None:
    from fusebundle.sources.regauth import plain_http_allowed

    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.9.8.7", "[::1]:5000"):
        assert plain_http_allowed(host), host
    for host in ("example.com", "example.com:5000", "10.0.0.1:5000", "registry-1.docker.io"):
        assert not plain_http_allowed(host), host
    assert plain_http_allowed("build-host:5000", ["build-host:5000"])
    assert plain_http_allowed("build-host:5000", ["build-host"])
    assert not plain_http_allowed("build-host:5000", ["other:5000"])


def test_5xx_then_success(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave(blob_path(image, 1), "500", "503")
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    assert read_all(reg, got, 1) == image.layers[1]
    assert len(fake.requests(lambda s: s.path == blob_path(image, 1))) == 3


def test_too_many_retries_is_one_line(fake: FakeRegistry, image: Image,
                                      docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave(blob_path(image, 1), *["502"] * 10)
    reg = registry(docker_config, tries=4)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    with pytest.raises(RegistryError) as e:
        read_all(reg, got, 1)
    text = one_line(e.value)
    assert "gave up after 4 tries" in text and "HTTP 502" in text and "fb/app" in text
    assert len(fake.requests(lambda s: s.path == blob_path(image, 1))) == 4


def test_dropped_connection_resumes_with_range(fake: FakeRegistry, image: Image,
                                               docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave(blob_path(image, 1), "drop:300000", "drop:500000")
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    data = read_all(reg, got, 1)
    assert data == image.layers[1]
    ranges = [s.headers.get("range") for s in fake.requests(
        lambda s: s.path == blob_path(image, 1))]
    assert ranges == [None, "bytes=300000-", "bytes=800000-"]


def test_server_ignoring_range_restarts_cleanly(fake: FakeRegistry, image: Image,
                                                docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave(blob_path(image, 1), "drop:400000", "norange")
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    assert read_all(reg, got, 1) == image.layers[1]  # the repeated 400000 bytes are not repeated


def test_drops_without_progress_are_bounded(fake: FakeRegistry, image: Image,
                                            docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave(blob_path(image, 1), "drop:1000", *["drop:0"] * 10)
    reg = registry(docker_config, tries=3)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    with pytest.raises(RegistryError) as e:
        read_all(reg, got, 1)
    assert "connection dropped 3 times, the last at byte 1000" in one_line(e.value)


def test_wrong_bytes(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    # Same length, one byte changed: the stream passes it on; the hash (the store's check) fails.
    fake.misbehave(blob_path(image, 1), "flip")
    assert sha256(read_all(reg, got, 1)) != got.layers[1].digest
    # Too short, cleanly ended: the length check catches it.
    fake.misbehave(blob_path(image, 1), "short:1000")
    with pytest.raises(RegistryError) as e:
        read_all(reg, got, 1)
    assert "1000" in one_line(e.value) and got.layers[1].digest in str(e.value)


def test_redirect_to_other_host_drops_authorization(fake: FakeRegistry, image: Image,
                                                    docker_config: Path) -> None:
    try:
        storage = FakeRegistry(host="127.0.0.2").start()
    except OSError:
        storage = FakeRegistry().start()  # another port is another origin too
    try:
        fake.storage = storage
        fake.auth, fake.users, fake.anonymous_pull = "bearer", {"alice": PASSWORD}, False
        fake.put("fb/app", "1", image)
        write_config(docker_config, {"auths": {fake.address: {"username": "alice",
                                                              "password": PASSWORD}}})
        fake.misbehave(blob_path(image, 1), "redirect")
        reg = registry(docker_config)
        got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
        assert read_all(reg, got, 1) == image.layers[1]
        there = storage.requests()
        assert len(there) == 1 and "authorization" not in there[0].headers
        assert fake.requests(lambda s: s.path == blob_path(image, 1))[0].headers[
            "authorization"].startswith("Bearer ")
    finally:
        storage.stop()


def test_redirect_resumes_at_storage(fake: FakeRegistry, image: Image,
                                     docker_config: Path) -> None:
    storage = FakeRegistry().start()
    try:
        fake.storage = storage
        fake.put("fb/app", "1", image)
        fake.misbehave(blob_path(image, 1), "redirect", "redirect")
        storage.misbehave(f"/v2/storage/blobs/{sha256(image.layers[1])}", "drop:700000")
        reg = registry(docker_config)
        got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
        assert read_all(reg, got, 1) == image.layers[1]
        assert [s.headers.get("range") for s in storage.requests()] == [None, "bytes=700000-"]
    finally:
        storage.stop()


def test_signed_redirect_url_stays_out_of_errors(fake: FakeRegistry, image: Image,
                                                 docker_config: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    storage = FakeRegistry().start()
    try:
        fake.storage = storage
        fake.put("fb/app", "1", image)
        fake.misbehave(blob_path(image, 1), *["redirect"] * 5)
        storage.misbehave(f"/v2/storage/blobs/{sha256(image.layers[1])}", *["500"] * 5)
        reg = registry(docker_config, tries=2)
        got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
        with pytest.raises(RegistryError) as e:
            read_all(reg, got, 1)
        assert "s3cr3t" not in one_line(e.value)
        assert f"{storage.address}/v2/storage/blobs" in caplog.text  # httpx logged the hop...
        assert "s3cr3t" not in caplog.text  # ...without its signature
    finally:
        storage.stop()


# -- manifests --------------------------------------------------------------------------------
def test_index_chooses_platform_and_lists_them(fake: FakeRegistry, docker_config: Path) -> None:
    amd = make_image([{"arch": b"amd64\n"}])
    arm = make_image([{"arch": b"arm64\n"}], arch="arm64", variant="v8")
    index_digest = fake.put_index("fb/multi", "1", [amd, arm], DOCKER_LIST)
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/multi:1", Platform("linux", "arm64"))
    assert got.manifest_digest == arm.digest and got.config_bytes == arm.config
    assert got.platform == "linux/arm64/v8"
    pinned = reg.resolve(f"{fake.address}/fb/multi:1@{index_digest}", AMD64)
    assert pinned.manifest_digest == amd.digest
    with pytest.raises(NotFound) as e:
        reg.resolve(f"{fake.address}/fb/multi:1", Platform("linux", "s390x"))
    text = one_line(e.value)
    assert "linux/s390x" in text and "linux/amd64" in text and "linux/arm64/v8" in text


def test_tag_pinned_by_digest_is_fetched_by_digest(fake: FakeRegistry, docker_config: Path
                                                   ) -> None:
    old = make_image([{"v": b"1\n"}])
    new = make_image([{"v": b"2\n"}])
    fake.put("fb/app", "1", old)
    fake.put("fb/app", "1", new)  # the tag moved on; the YAML still pins the old digest
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1@{old.digest}", AMD64)
    assert got.config_bytes == old.config
    assert fake.requests(lambda s: "/manifests/" in s.path)[-1].path.endswith(old.digest)


def test_missing_image_is_not_found(fake: FakeRegistry, docker_config: Path) -> None:
    with pytest.raises(NotFound) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/none:1", AMD64)
    assert one_line(e.value).startswith("registry: no image")
    assert "fb/none:1" in str(e.value)


def test_bad_manifest_digest(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.bad_digest_header = True
    with pytest.raises(RegistryError) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/app:1", AMD64)
    assert "bad digest" in one_line(e.value)
    # A registry that answers a pinned digest with other bytes.
    fake.bad_digest_header = False
    other = make_image([{"x": b"x"}])
    fake.manifests[("fb/app", image.digest)] = (other.media_type, other.manifest)
    with pytest.raises(RegistryError) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/app@{image.digest}", AMD64)
    assert "bad digest" in one_line(e.value) and image.digest in str(e.value)


def test_corrupt_config_blob(fake: FakeRegistry, image: Image, docker_config: Path) -> None:
    fake.put("fb/app", "1", image)
    fake.blobs[sha256(image.config)] = image.config.replace(b"amd64", b"arm64")
    with pytest.raises(UserError) as e:
        registry(docker_config).resolve(f"{fake.address}/fb/app:1", AMD64)
    assert "corrupt" in one_line(e.value)


def test_unreachable_is_one_line(docker_config: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(RegistryError) as e:
        registry(docker_config, tries=2).resolve(f"127.0.0.1:{port}/fb/app:1", AMD64)
    text = one_line(e.value)
    assert "unreachable" in text and f"127.0.0.1:{port}" in text


def _loopback_name() -> str | None:
    """A host name (not localhost, not an IP) that resolves to loopback, if this machine has one."""
    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        return None
    return name if addr.startswith("127.") and name != "localhost" else None


def test_https_by_default_and_insecure_hosts(fake: FakeRegistry, image: Image,
                                             docker_config: Path) -> None:
    name = _loopback_name()
    if name is None:
        pytest.skip("no host name that resolves to loopback")
    fake.put("fb/app", "1", image)
    where = f"{name}:{fake.server.server_address[1]}"  # type: ignore[union-attr]
    # Not a local name by docker's rules: HTTPS, and a plain HTTP server there fails TLS.
    with pytest.raises(RegistryError) as e:
        registry(docker_config).resolve(f"{where}/fb/app:1", AMD64)
    assert "TLS failure" in one_line(e.value) and where in str(e.value)
    assert not fake.requests()  # nothing was sent in the clear
    got = registry(docker_config, insecure=[where]).resolve(f"{where}/fb/app:1", AMD64)
    assert got.manifest_digest == image.digest


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and this machine's loopback name."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    names = "IP:127.0.0.1" + (f",DNS:{_loopback_name()}" if _loopback_name() else "")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
                    "-subj", "/CN=fusebundle-test", "-addext", f"subjectAltName={names}"],
                   check=True, capture_output=True)
    return str(d / "cert.pem"), str(d / "key.pem")


@pytest.fixture
def tls_fake(self_signed: tuple[str, str]) -> Iterator[FakeRegistry]:
    reg = FakeRegistry(tls=self_signed).start()
    yield reg
    reg.stop()


def test_loopback_https_with_a_self_signed_certificate(tls_fake: FakeRegistry, image: Image,
                                                       docker_config: Path) -> None:
    # As docker: 127.0.0.0/8 is tried on HTTPS first, its certificate not checked.
    tls_fake.put("fb/app", "1", image)
    reg = registry(docker_config)
    got = reg.resolve(f"{tls_fake.address}/fb/app:1", AMD64)
    check_blobs(reg, got, image)
    assert tls_fake.requests()  # the server only speaks TLS: they all came that way


def test_named_host_certificate_is_checked(tls_fake: FakeRegistry, image: Image,
                                           docker_config: Path, self_signed: tuple[str, str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    name = _loopback_name()
    if name is None:
        pytest.skip("no host name that resolves to loopback")
    tls_fake.put("fb/app", "1", image)
    where = f"{name}:{tls_fake.server.server_address[1]}"  # type: ignore[union-attr]
    with pytest.raises(RegistryError) as e:
        registry(docker_config).resolve(f"{where}/fb/app:1", AMD64)
    assert "TLS failure" in one_line(e.value) and "certificate verify failed" in str(e.value)
    assert not tls_fake.requests()
    # --insecure-registry: the certificate is not checked.
    got = registry(docker_config, insecure=[where]).resolve(f"{where}/fb/app:1", AMD64)
    assert got.manifest_digest == image.digest
    # The system's CA store (here: OpenSSL's SSL_CERT_FILE) is what is trusted, not a bundle.
    monkeypatch.setenv("SSL_CERT_FILE", self_signed[0])
    got = registry(docker_config).resolve(f"{where}/fb/app:1", AMD64)
    assert got.manifest_digest == image.digest


# -- Debian's docker-registry, fed by dockerd and skopeo --------------------------------------
@pytest.fixture(scope="module")
def real_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reg = LocalRegistry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg.address
    finally:
        reg.stop()


def _skopeo_out(*args: str) -> bytes:
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    done = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def _skopeo(*args: str) -> None:
    _skopeo_out(*args)


@pytest.fixture(scope="module")
def pushed(dockerd, real_registry: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A two-layer image built by dockerd and pushed to the registry: its engine-side facts."""
    from support import imagetools

    d = tmp_path_factory.mktemp("build")
    base = imagetools.RootfsBuilder().dir("etc").file("etc/base", "base\n").write(d / "base.tar")
    imagetools.import_image(dockerd.client, base, "fbreg-base:1")
    (d / "ctx").mkdir()
    (d / "ctx" / "Dockerfile").write_text("FROM fbreg-base:1\nCOPY top /etc/top\n")
    (d / "ctx" / "top").write_bytes(os.urandom(200_000))
    built, _ = dockerd.client.images.build(path=str(d / "ctx"), tag="fbreg-two:1", rm=True)
    repo = f"{real_registry}/fb/two"
    built.tag(repo, "1")
    for line in dockerd.client.images.push(repo, "1", stream=True, decode=True):
        assert "error" not in line, line
    built.reload()
    digests = [r.split("@", 1)[1] for r in built.attrs.get("RepoDigests", [])
               if r.startswith(repo + "@")]
    return {"ref": f"{repo}:1", "id": built.id, "layers": built.attrs["RootFS"]["Layers"],
            "manifest": digests[0] if digests else "", "engine": dockerd.host}


def _check_blobs_hash(reg: Registry, got: ResolvedImage) -> None:
    for layer in got.layers:
        with reg.open_blob(got, layer) as f:
            data = f.read()
        assert sha256(data) == layer.digest
        assert layer.size in (-1, len(data))
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert sha256(raw) == layer.diff_id


def test_real_registry_docker_push(pushed: dict, tmp_path: Path) -> None:
    reg = Registry(docker_config=str(tmp_path))
    got = reg.resolve(pushed["ref"], Platform.host())
    assert got.config_digest == pushed["id"]
    assert [layer.diff_id for layer in got.layers] == pushed["layers"]
    assert len(got.layers) == 2
    assert got.manifest_digest == pushed["manifest"]
    assert got.layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    _check_blobs_hash(reg, got)
    by_digest = reg.resolve(pushed["ref"].split(":1")[0] + "@" + pushed["manifest"],
                            Platform.host())
    assert by_digest.config_digest == pushed["id"]


def test_real_registry_oci_typed(pushed: dict, real_registry: str, tmp_path: Path) -> None:
    dest = f"{real_registry}/fb/oci:1"
    _skopeo("copy", "--format", "oci", "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{pushed['ref']}", f"docker://{dest}")
    reg = Registry(docker_config=str(tmp_path))
    got = reg.resolve(dest, Platform.host())
    assert got.layers[0].media_type.startswith("application/vnd.oci.image.layer.v1.tar")
    assert [layer.diff_id for layer in got.layers] == pushed["layers"]
    assert json.loads(got.config_bytes)["rootfs"]["diff_ids"] == pushed["layers"]
    # Converting to OCI, skopeo rewrites the config (docker-only fields go): its own view of
    # the image is the oracle here, not the engine's ID.
    assert got.config_bytes == _skopeo_out("inspect", "--config", "--raw",
                                           "--tls-verify=false", f"docker://{dest}")
    assert got.manifest_digest == sha256(_skopeo_out("inspect", "--raw", "--tls-verify=false",
                                                     f"docker://{dest}"))
    _check_blobs_hash(reg, got)


def _oci_layout(d: Path, images: list[Image], tag: str) -> None:
    """An OCI layout holding an index of IMAGES, named TAG."""
    from support.fakeregistry import make_index

    blobs = d / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    index = make_index(images)
    for image in images:
        for data in [image.manifest, *image.blobs().values()]:
            (blobs / hashlib.sha256(data).hexdigest()).write_bytes(data)
    (blobs / hashlib.sha256(index).hexdigest()).write_bytes(index)
    (d / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (d / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256(index),
        "size": len(index), "annotations": {"org.opencontainers.image.ref.name": tag}}]}))


def test_real_registry_multi_platform(real_registry: str, tmp_path: Path) -> None:
    amd = make_image([{"arch": b"amd64\n"}, {"more": os.urandom(5000)}])
    arm = make_image([{"arch": b"arm64\n"}], arch="arm64", variant="v8")
    _oci_layout(tmp_path / "layout", [amd, arm], "multi")
    dest = f"{real_registry}/fb/multi:1"
    _skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'layout'}:multi",
            f"docker://{dest}")
    reg = Registry(docker_config=str(tmp_path))
    got = reg.resolve(dest, Platform("linux", "arm64"))
    assert got.manifest_digest == arm.digest and got.config_digest == sha256(arm.config)
    got = reg.resolve(dest, AMD64)
    assert got.manifest_digest == amd.digest
    assert [layer.diff_id for layer in got.layers] == amd.diff_ids
    _check_blobs_hash(reg, got)
    # Pinned by the index's digest: fetched by digest, then narrowed to the platform.
    index = _skopeo_out("inspect", "--raw", "--tls-verify=false", f"docker://{dest}")
    assert json.loads(index)["mediaType"] == "application/vnd.oci.image.index.v1+json"
    pinned = reg.resolve(f"{real_registry}/fb/multi@{sha256(index)}", Platform("linux", "arm64"))
    assert pinned.manifest_digest == arm.digest
    assert pinned.name == f"{real_registry}/fb/multi@{sha256(index)}"
    with pytest.raises(NotFound) as e:
        reg.resolve(dest, Platform("linux", "riscv64"))
    assert "linux/amd64, linux/arm64/v8" in one_line(e.value)
    with pytest.raises(NotFound) as e:
        reg.resolve(f"{real_registry}/fb/multi:nosuch", AMD64)
    assert one_line(e.value).startswith("registry: no image")


# -- into the layer store (runs once the store is merged beside this source) ------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[Any]:
    store_mod = pytest.importorskip("fusebundle.store")
    s = store_mod.Store(str(tmp_path / "cache"))
    yield s
    s.close()


def _stored(store: Any) -> list[str]:
    root = Path(store.root)
    return sorted(p.name for p in root.rglob("*") if p.is_file() and "locks" not in p.parts)


def test_store_ingest_resumed_blob(fake: FakeRegistry, image: Image, docker_config: Path,
                                   store: Any) -> None:
    fake.put("fb/app", "1", image)
    fake.misbehave(blob_path(image, 1), "drop:250000", "norange", "drop:900000")
    reg = registry(docker_config)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    for layer in got.layers:
        path = store.ingest(layer, lambda x=layer: reg.open_blob(got, x), got.name)
        assert sha256(Path(path).read_bytes()) == layer.diff_id
    # Stored once: a second ingest reads nothing from the registry.
    before = len(fake.requests(lambda s: "/blobs/" in s.path))
    for layer in got.layers:
        store.ingest(layer, lambda x=layer: reg.open_blob(got, x), got.name)
    assert len(fake.requests(lambda s: "/blobs/" in s.path)) == before


@pytest.mark.parametrize("fault", ["flip", "short:1000", "drops"])
def test_store_keeps_nothing_of_a_bad_blob(fake: FakeRegistry, image: Image,
                                           docker_config: Path, store: Any,
                                           fault: str) -> None:
    fake.put("fb/app", "1", image)
    faults = ["drop:1000", *["drop:0"] * 9] if fault == "drops" else [fault]
    fake.misbehave(blob_path(image, 1), *faults)
    reg = registry(docker_config, tries=3)
    got = reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    layer = got.layers[1]
    with pytest.raises(UserError) as e:
        store.ingest(layer, lambda: reg.open_blob(got, layer), got.name)
    assert layer.digest in one_line(e.value)
    assert _stored(store) == []
