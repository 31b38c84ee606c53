"""Tests of the test infrastructure itself: the engine fixture, the tar builder, the scripts."""

from __future__ import annotations

import io
import stat
import subprocess
import tarfile
from pathlib import Path

from ruamel.yaml import YAML
from support.imagetools import (
    DEMO_REPO_TAG,
    T1,
    RootfsBuilder,
    import_image,
    list_containers,
    split_repo_tag,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ["scripts/setup", "scripts/test", "scripts/demo", ".ci/run"]


def test_engine_answers(dockerd):
    assert dockerd.host.startswith("unix://")
    assert len(dockerd.host) - len("unix://") < 108
    assert dockerd.client.ping()
    version = dockerd.client.version()
    assert version["ApiVersion"]
    assert dockerd.driver in (None, dockerd.client.info()["Driver"])


def sample() -> RootfsBuilder:
    r = RootfsBuilder()
    r.dir("etc")
    r.file("etc/motd", "hello\n", xattrs={"user.fb": b"v1"})
    r.hardlink("etc/issue", "etc/motd")
    r.symlink("etc/link", "motd", mtime=T1)
    r.dir("dev")
    r.chardev("dev/null", 1, 3)
    r.blockdev("dev/loop0", 7, 0)
    r.fifo("dev/fifo", mode=0o600)
    r.dir(b"d\xff", uid=1000, gid=1000)  # not UTF-8
    r.file(b"d\xff/f", b"x", pax={"comment": "extra record"})
    r.file("long/" + "n" * 150, "long name\n")
    return r


def test_builder_is_deterministic_and_complete(tmp_path):
    a, b = sample().tobytes(), sample().tobytes()
    assert a == b
    path = sample().write(tmp_path / "r.tar")
    assert path.read_bytes() == a
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as t:
        members = {m.name: m for m in t.getmembers()}
        assert list(members) == sample().names
        assert members["etc"].isdir()
        motd, issue = members["etc/motd"], members["etc/issue"]
        assert motd.pax_headers["SCHILY.xattr.user.fb"] == "v1"
        assert issue.islnk() and issue.linkname == "etc/motd" and issue.mode == motd.mode
        assert members["etc/link"].issym() and members["etc/link"].mtime == T1
        assert members["dev/null"].ischr() and members["dev/null"].devminor == 3
        assert members["dev/loop0"].isblk() and members["dev/loop0"].devmajor == 7
        assert members["dev/fifo"].isfifo() and members["dev/fifo"].mode == 0o600
        odd = "d\xff".encode("latin-1").decode("utf-8", "surrogateescape")
        assert members[odd].uid == 1000
        assert members[odd + "/f"].pax_headers["comment"] == "extra record"
        assert t.extractfile("long/" + "n" * 150).read() == b"long name\n"
        assert all(m.uname == "" and m.mtime in (1600000000, T1) for m in members.values())


def test_builder_names():
    r = RootfsBuilder().dir("./a/").file("/a//b", "x").hardlink("./a/c", "a/b")
    assert r.names == ["a", "a/b", "a/c"]
    raw = RootfsBuilder(raw_names=True).dir("./a").dir("b/").file("./a/f", "x")
    raw.hardlink("./a/g", "./a/f")
    with tarfile.open(fileobj=io.BytesIO(raw.tobytes())) as t:
        assert [(m.name, m.linkname) for m in t.getmembers()] == [
            ("./a", ""), ("b", ""), ("./a/f", ""), ("./a/g", "./a/f")]
    # the header really holds "./a" (tarfile strips a trailing "/" when reading)
    assert raw.tobytes()[:4] == b"./a\0"
    gnu = RootfsBuilder(fmt=tarfile.GNU_FORMAT).file("x" * 200, "gnu")
    with tarfile.open(fileobj=io.BytesIO(gnu.tobytes())) as t:
        assert t.getnames() == ["x" * 200]


def test_split_repo_tag():
    assert split_repo_tag("a/b:1") == ("a/b", "1")
    assert split_repo_tag("reg:5000/a/b") == ("reg:5000/a/b", None)
    assert split_repo_tag("reg:5000/a/b:v2") == ("reg:5000/a/b", "v2")


def test_import_inspect_and_export(dockerd, tmp_path):
    api = dockerd.client.api
    before = {c["Id"] for c in list_containers(dockerd.client)}
    tar = sample().write(tmp_path / "rootfs.tar")
    image_id = import_image(dockerd.client, tar, "fbtest/infra:1", [
        'CMD ["/bin/sh", "-c", "echo hi"]',
        "ENV FOO=bar",
        "WORKDIR /srv",
        "LABEL org.example.k=v",
    ])
    try:
        info = api.inspect_image("fbtest/infra:1")
        assert info["Id"] == image_id and image_id.startswith("sha256:")
        assert info["Config"]["Cmd"] == ["/bin/sh", "-c", "echo hi"]
        assert "FOO=bar" in info["Config"]["Env"]
        assert info["Config"]["WorkingDir"] == "/srv"
        assert info["Config"]["Labels"] == {"org.example.k": "v"}

        # what fusebundle does with it: create (never start) a container and export it
        cid = api.create_container(
            image_id, host_config=api.create_host_config(network_mode="none"))["Id"]
        try:
            out = tmp_path / "export.tar"
            with open(out, "wb") as f:
                for chunk in api.export(cid):
                    f.write(chunk)
        finally:
            api.remove_container(cid, force=True)
        with tarfile.open(out) as t:
            names = set(t.getnames())
            assert {"etc/motd", "etc/issue", "dev/fifo", ".dockerenv"} <= names
            # docker export walks in lexical order: the first name of an inode is the file
            motd = t.getmember("etc/motd")
            assert motd.islnk() and motd.linkname == "etc/issue"
            assert t.extractfile("etc/motd").read() == b"hello\n"
    finally:
        api.remove_image("fbtest/infra:1", force=True)
    assert {c["Id"] for c in list_containers(dockerd.client)} == before


def test_scripts_exist_and_parse():
    for rel in SCRIPTS:
        path = REPO / rel
        assert path.is_file(), rel
        assert path.stat().st_mode & stat.S_IXUSR, f"{rel} is not executable"
        assert path.read_text().startswith("#!/bin/bash\n"), rel
    for rel in [*SCRIPTS, "scripts/lib.sh"]:
        res = subprocess.run(["bash", "-n", str(REPO / rel)], capture_output=True, text=True)
        assert res.returncode == 0, (rel, res.stderr)


def test_ci_run_calls_scripts_test():
    text = (REPO / ".ci/run").read_text()
    assert "set -euo pipefail" in text
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == "exec scripts/test"


def test_demo_config_uses_the_demo_image():
    doc = YAML(typ="safe").load((REPO / "examples/demo.yml").read_text())
    onboot = doc["onboot"]
    assert len(onboot) == 2 and all(b["image"] == DEMO_REPO_TAG for b in onboot)
    assert onboot[0]["command"] == ["/bin/sh", "-c", "echo hello from fusebundle"]
    assert any(s["image"] == DEMO_REPO_TAG and s.get("readonly") for s in doc["services"])
    assert any("contents" in f for f in doc["files"])
