"""config.json on real images: the precedence chain yaml > label > image, labels as YAML and
JSON, ids by container name, and `fusebundle config`."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from support.imagetools import RootfsBuilder, import_image

YAML_LABEL = ("{readonly: true, capabilities: [CAP_NET_ADMIN, CAP_SYS_TIME], "
              "env: [FROM=label], net: host, pid: host, hostname: from-label, "
              "tmpfs: ['/run:size=1m'], runtime: {mkdir: [/var/lib/x]}}")
JSON_LABEL = '{"cwd": "/label-cwd", "binds": ["/var/log:/var/log:ro"], "uid": 5}'


@pytest.fixture(scope="module")
def labelled(dockerd, tmp_path_factory) -> None:
    tmp = tmp_path_factory.mktemp("labels")
    RootfsBuilder().dir("etc").file("etc/motd", "m").write(tmp / "r.tar")
    common = ['ENTRYPOINT ["/bin/entry"]', 'CMD ["--flag"]', "ENV FROM=image PATH=/bin",
              "WORKDIR /image-cwd"]
    import_image(dockerd.client, tmp / "r.tar", "fbtest/plain:1", common)
    import_image(dockerd.client, tmp / "r.tar", "fbtest/yaml-label:1",
                 [*common, f"LABEL org.mobyproject.config='{YAML_LABEL}'"])
    import_image(dockerd.client, tmp / "r.tar", "fbtest/json-label:1",
                 [*common, f"LABEL org.mobyproject.config='{JSON_LABEL}'"])


def _configs(fb, tmp_path: Path, text: str) -> dict[str, dict]:
    cfg = tmp_path / "system.yml"
    cfg.write_text(text)
    out = tmp_path / "out.tar"
    r = fb("pack", cfg, "-o", out)
    assert r.returncode == 0, r.stderr
    found = {}
    with tarfile.open(out) as t:
        for m in t:
            if m.name.endswith("/config.json"):
                found[m.name.split("/")[-2]] = json.loads(t.extractfile(m).read())
    return found


def test_precedence_chain(fb, labelled, tmp_path) -> None:
    c = _configs(fb, tmp_path, """
onboot:
  - name: plain
    image: fbtest/plain:1
  - name: yaml-label
    image: fbtest/yaml-label:1
  - name: override
    image: fbtest/yaml-label:1
    env: [FROM=yaml]
    readonly: false
    capabilities: [none]
    command: [/bin/other]
  - name: json-label
    image: fbtest/json-label:1
""")
    plain = c["000-plain"]
    assert plain["process"]["args"] == ["/bin/entry", "--flag"]
    assert plain["process"]["env"] == ["FROM=image", "PATH=/bin"]
    assert plain["process"]["cwd"] == "/image-cwd"
    assert plain["process"]["capabilities"] == {}
    assert plain["root"] == {"path": "rootfs"}
    assert [n["type"] for n in plain["linux"]["namespaces"]] == ["pid", "mount"]

    lab = c["001-yaml-label"]
    assert lab["process"]["env"] == ["FROM=label"]  # label replaces the image's env whole
    assert lab["process"]["args"] == ["/bin/entry", "--flag"]  # not in the label: image
    assert lab["root"] == {"path": "rootfs", "readonly": True}
    assert lab["hostname"] == "from-label"
    caps = lab["process"]["capabilities"]
    assert caps["effective"] == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert sorted(caps["bounding"]) == ["CAP_NET_ADMIN", "CAP_SYS_TIME"]
    assert [n["type"] for n in lab["linux"]["namespaces"]] == ["mount"]  # net and pid: host
    run = next(m for m in lab["mounts"] if m["destination"] == "/run")
    assert run == {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                   "options": ["size=1m"]}
    dev = next(m for m in lab["mounts"] if m["destination"] == "/dev")
    assert dev["options"][-1] == "ro"  # readonly adds ro to /dev and /sys

    over = c["002-override"]
    assert over["process"]["env"] == ["FROM=yaml"]
    assert over["process"]["args"] == ["/bin/other"]
    assert over["root"] == {"path": "rootfs"}
    assert over["process"]["capabilities"] == {}
    assert over["hostname"] == "from-label"  # not overridden: still the label's

    js = c["003-json-label"]
    assert js["process"]["cwd"] == "/label-cwd"
    assert js["process"]["user"] == {"uid": 5, "gid": 0}
    log = next(m for m in js["mounts"] if m["destination"] == "/var/log")
    assert log == {"destination": "/var/log", "type": "bind", "source": "/var/log",
                   "options": ["ro", "rbind"]}


def test_ids_by_container_name(fb, labelled, tmp_path) -> None:
    c = _configs(fb, tmp_path, """
onboot:
  - name: first
    image: fbtest/plain:1
    uid: svc
    gid: down
    additionalGids: [first, 7, root]
onshutdown:
  - name: down
    image: fbtest/plain:1
services:
  - name: svc
    image: fbtest/plain:1
""")
    assert c["000-first"]["process"]["user"] == {"uid": 102, "gid": 101,
                                                 "additionalGids": [100, 7, 0]}


def test_label_runtime_reaches_runtime_json(fb, labelled, tmp_path) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n  - name: a\n    image: fbtest/yaml-label:1\n")
    out = tmp_path / "out.tar"
    assert fb("pack", cfg, "-o", out).returncode == 0
    with tarfile.open(out) as t:
        rt = json.loads(t.extractfile("containers/onboot/000-a/runtime.json").read())
    assert rt["mkdir"] == ["/var/lib/x"] and rt["bindNS"] == {}


def test_config_command_explains_values(fb, labelled, tmp_path) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text("onboot:\n  - name: a\n    image: fbtest/yaml-label:1\n    env: [X=1]\n"
                   "  - name: b\n    image: fbtest/plain:1\n")
    r = fb("config", cfg, "--name", "a")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["bundle"] == "containers/onboot/000-a" and doc["id"] == 100
    assert doc["yaml"]["env"] == ["X=1"]
    assert doc["label"]["hostname"] == "from-label"
    assert doc["imageConfig"]["WorkingDir"] == "/image-cwd"
    assert doc["config.json"]["process"]["env"] == ["X=1"]
    r = fb("config", cfg, "--name", "zzz")
    assert r.returncode != 0 and "zzz" in r.stderr


def test_bad_label_is_reported_with_the_image(fb, dockerd, tmp_path) -> None:
    RootfsBuilder().dir("etc").write(tmp_path / "r.tar")
    import_image(dockerd.client, tmp_path / "r.tar", "fbtest/bad-label:1",
                 ["LABEL org.mobyproject.config='{name: sneaky}'"])
    import_image(dockerd.client, tmp_path / "r.tar", "fbtest/broken-label:1",
                 ["LABEL org.mobyproject.config='{readonly: [unclosed'"])
    for image, word in (("fbtest/bad-label:1", "name"), ("fbtest/broken-label:1", "label")):
        cfg = tmp_path / "system.yml"
        cfg.write_text(f"onboot:\n  - name: a\n    image: {image}\n")
        r = fb("pack", cfg, "-o", tmp_path / "out.tar")
        assert r.returncode == 2, r.stderr
        assert image in r.stderr and word in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert not (tmp_path / "out.tar").exists()
