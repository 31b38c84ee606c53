"""The SDK-free image inspect against a real engine, and the SDK's answer as the reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.imagetools import RootfsBuilder, import_image

from fusebundle.sources import engineapi

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image(dockerd, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("engineapi")
    RootfsBuilder().dir("etc").file("etc/motd", "hi\n").write(tmp / "r.tar")
    import_image(dockerd.client, tmp / "r.tar", "fbtest/engineapi:1",
                 ['CMD ["/bin/true"]', 'LABEL org.mobyproject.config="pid: host"',
                  "ENV A=1"])
    return "fbtest/engineapi:1"


def _unix(dockerd) -> str:
    path = engineapi.socket_path(dockerd.host)
    if path is None:
        pytest.skip(f"the test engine is not on a unix socket ({dockerd.host})")
    return path


@pytest.mark.parametrize(("host", "env", "expected"), [
    ("unix:///run/x.sock", {}, "/run/x.sock"),
    (None, {"DOCKER_HOST": "unix:///tmp/d.sock"}, "/tmp/d.sock"),
    (None, {}, "/var/run/docker.sock"),
    ("tcp://127.0.0.1:2375", {}, None),
    ("ssh://me@host", {}, None),
    ("unix:///run/x.sock", {"DOCKER_TLS_VERIFY": "1"}, None),
])
def test_socket_path(host, env, expected, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert engineapi.socket_path(host) == expected


def test_inspect_matches_the_sdk(dockerd, image):
    data = engineapi.inspect_image(_unix(dockerd), image)
    assert data is not None
    sdk = dockerd.client.api.inspect_image(image)
    assert data["Id"] == sdk["Id"]
    assert data["Config"] == sdk["Config"]
    assert data["Config"]["Labels"]["org.mobyproject.config"] == "pid: host"
    # by ID and by short ID as well as by name
    assert engineapi.inspect_image(_unix(dockerd), sdk["Id"])["Id"] == sdk["Id"]
    assert engineapi.inspect_image(_unix(dockerd), sdk["Id"][7:19])["Id"] == sdk["Id"]


def test_missing_image_is_not_found(dockerd):
    with pytest.raises(engineapi.NoSuchImage):
        engineapi.inspect_image(_unix(dockerd), "fbtest/no-such-image:1")
    with pytest.raises(engineapi.NoSuchImage):
        engineapi.inspect_image(_unix(dockerd), "fbtest/no-such@sha256:" + "0" * 64)


def test_no_engine_there_leaves_it_to_the_sdk(tmp_path):
    assert engineapi.inspect_image(str(tmp_path / "none.sock"), "x:1") is None


def test_a_warm_inspect_never_imports_the_sdk(dockerd, image, tmp_path):
    _unix(dockerd)
    code = (
        "import sys\n"
        "from fusebundle.sources.engine import DockerEngine\n"
        f"info = DockerEngine({dockerd.host!r}).inspect({image!r}, False)\n"
        "print(info.id, info.config['Env'], 'docker' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       check=True)
    image_id, _, rest = r.stdout.strip().partition(" ")
    assert image_id == dockerd.client.api.inspect_image(image)["Id"]
    assert "A=1" in rest
    assert rest.endswith("False"), r.stdout
