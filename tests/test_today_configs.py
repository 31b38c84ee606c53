"""Configs in the style of LinuxKit's current examples/, packed and mounted on a real engine.

Stand-in images carry the labels today's packages declare (getty's devices and binds, sshd's
`devices: [{path: all, type: a}]`); the configs use binds.add, volumes (blank, from an image,
read-only, as an OCI layout) shared by two services, and a kernel with ucode.  Each mount is
compared with its pack entry by entry; config.json values are checked against what LinuxKit's
ConfigToOCI writes for them (worked out from its source, see test_schema_today).
"""

from __future__ import annotations

import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest
from support.imagetools import RootfsBuilder, busybox_bytes, import_image
from support.kernels import KERNEL, UCODE
from support.labels import GETTY_BINDS, GETTY_DEVICES, GETTY_LABEL, SSHD_LABEL
from support.mounts import RUNC, _pack, _runc, assert_same_tree


def _rootfs(marker: str) -> RootfsBuilder:
    r = RootfsBuilder()
    r.dir("bin").file("bin/busybox", busybox_bytes(), mode=0o755).symlink("bin/sh", "busybox")
    r.dir("etc").file("etc/resolv.conf", "nameserver 10.0.0.1\n").file("etc/marker", marker)
    return r


@pytest.fixture(scope="module")
def today_images(dockerd, tmp_path_factory) -> None:
    d = tmp_path_factory.mktemp("today")
    for name, label in (("getty", GETTY_LABEL), ("sshd", SSHD_LABEL), ("data", None)):
        tar = _rootfs(name).write(d / f"{name}.tar")
        changes = ['CMD ["/bin/sh"]']
        if label:
            changes.append(f"LABEL org.mobyproject.config='{label}'")
        import_image(dockerd.client, tar, f"fbtoday/{name}:1", changes)


def _members(tar: Path) -> tuple[list[str], dict[str, bytes]]:
    names, data = [], {}
    with tarfile.open(tar) as t:
        for m in t:
            names.append(m.name)
            if m.isfile():
                data[m.name] = t.extractfile(m).read()  # type: ignore[union-attr]
    return names, data


SSHD_YML = """\
kernel:
  image: {kernel}
  cmdline: "console=tty0 console=ttyS0"
  ucode: intel-ucode.cpio
init:
  - fbpub/busybox:1
onboot:
  - name: sysctl
    image: fbpub/busybox:1
    command: ["/bin/true"]
services:
  - name: getty
    image: fbtoday/getty:1
    env:
     - INSECURE=true
  - name: sshd
    image: fbtoday/sshd:1
    binds.add:
      - /root/.ssh:/root/.ssh
files:
  - path: root/.ssh/authorized_keys
    contents: "ssh-ed25519 AAAA test\\n"
    mode: "0600"
  - path: etc/linuxkit-config
    metadata: yaml
"""


def test_sshd_example_packs_and_mounts(fb, mounts, images, today_images, kernel_image,
                                       tmp_path):
    config = tmp_path / "sshd.yml"
    config.write_text(SSHD_YML.format(kernel=kernel_image))
    tar = _pack(fb, config, tmp_path / "pack.tar")
    mnt = mounts.mount(config)
    assert_same_tree(tar, mnt)
    names, data = _members(tar)
    assert names[:4] == ["boot", "boot/ucode.cpio", "boot/cmdline", "boot/kernel"]
    assert data["boot/ucode.cpio"] == UCODE and data["boot/kernel"] == KERNEL
    getty = json.loads((mnt / "containers/services/getty/config.json").read_bytes())
    assert getty["linux"]["devices"] == [
        {"path": p, "type": "c", "major": ma, "minor": mi, "fileMode": 438}
        for p, ma, mi in GETTY_DEVICES]
    assert getty["linux"]["resources"]["devices"] == [
        {"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
        for _, ma, mi in GETTY_DEVICES]
    assert getty["process"]["env"] == ["INSECURE=true"]
    sshd = json.loads((mnt / "containers/services/sshd/config.json").read_bytes())
    dests = {m["destination"]: m for m in sshd["mounts"]}
    assert dests["/root/.ssh"]["options"] == ["rw", "rbind", "rshared"]
    assert {b.split(":")[1] for b in GETTY_BINDS} <= set(dests)
    assert sshd["linux"]["resources"]["devices"] == [{"allow": True, "type": "a",
                                                       "access": "rwm"}]
    meta = json.loads((mnt / "etc/linuxkit-config").read_bytes())
    assert meta["kernel"]["ucode"] == "intel-ucode.cpio"
    assert meta["services"][1]["binds.add"] == ["/root/.ssh:/root/.ssh"]


VOLUMES_YML = """\
onboot:
  - name: fill
    image: fbpub/busybox:1
    binds:
      - blank:/blank
services:
  - name: writer
    image: fbpub/busybox:1
    binds.add:
      - blank:/blank
      - data:/data:ro
  - name: reader
    image: fbpub/app:1
    binds:
      - blank:/shared
      - layout:/layout:ro
volumes:
  - name: blank
  - name: data
    image: fbtoday/data:1
    readonly: true
  - name: layout
    image: fbtoday/data:1
    format: oci
    platforms: [linux/amd64]
"""


def test_volume_shared_by_two_services(fb, mounts, images, today_images, tmp_path):
    config = tmp_path / "volumes.yml"
    config.write_text(VOLUMES_YML)
    tar = _pack(fb, config, tmp_path / "pack.tar")
    mnt = mounts.mount(config)
    got = assert_same_tree(tar, mnt)
    names, data = _members(tar)
    base = "containers/volumes"
    # LinuxKit's order: volumes after init and before onboot; lower/, then tmp/ and merged/
    first_bundle = names.index("containers/onboot")
    vol_names = names[:first_bundle]  # no init: the volumes come first
    assert vol_names[:6] == ["containers", "containers/volumes", f"{base}/blank",
                             f"{base}/blank/lower", f"{base}/blank/tmp",
                             f"{base}/blank/merged"]
    assert f"{base}/data/lower/etc/marker" in vol_names
    assert data[f"{base}/data/lower/etc/marker"] == b"data"
    # an image volume is extracted as init is: resolv.conf becomes the resolvconf symlink
    assert got[f"{base}/data/lower/etc/resolv.conf"][7] == "/run/resolvconf/resolv.conf"
    for svc, dest in (("writer", "/blank"), ("reader", "/shared")):
        spec = json.loads((mnt / f"containers/services/{svc}/config.json").read_bytes())
        m = {x["destination"]: x for x in spec["mounts"]}
        assert m[dest]["source"] == "/containers/volumes/blank/merged"
    spec = json.loads((mnt / "containers/services/writer/config.json").read_bytes())
    m = {x["destination"]: x for x in spec["mounts"]}
    assert m["/data"] == {"destination": "/data", "type": "bind",
                          "source": "/containers/volumes/data/merged",
                          "options": ["ro", "rbind"]}
    # the OCI layout volume: index.json names the image's one manifest, its blobs are there
    index = json.loads((mnt / f"{base}/layout/lower/index.json").read_bytes())
    assert json.loads((mnt / f"{base}/layout/lower/oci-layout").read_bytes()) == \
        {"imageLayoutVersion": "1.0.0"}
    (desc,) = index["manifests"]
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "fbtoday/data:1"
    blobs = mnt / f"{base}/layout/lower/blobs/sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    for d in (manifest["config"], *manifest["layers"]):
        assert (blobs / d["digest"].split(":")[1]).stat().st_size == d["size"]
    config_blob = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    assert config_blob["rootfs"]["diff_ids"] == [d["digest"] for d in manifest["layers"]]


def test_a_volume_bound_rw_when_read_only_is_one_line(fb, images, today_images, tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text(VOLUMES_YML.replace("data:/data:ro", "data:/data"))
    r = fb("pack", config, "-o", tmp_path / "o.tar")
    assert r.returncode == 2 and "volume 'data' is read-only" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.tar").exists()


def test_oci_volume_for_a_platform_the_engine_lacks(fb, images, today_images, tmp_path):
    config = tmp_path / "arm.yml"
    config.write_text(VOLUMES_YML.replace("[linux/amd64]", "[linux/amd64, linux/arm64]"))
    r = fb("pack", config, "-o", tmp_path / "o.tar")
    assert r.returncode == 1 and "not for linux/arm64" in r.stderr
    assert not (tmp_path / "o.tar").exists()


def test_quiet_silences_the_trust_warning(fb, images, tmp_path):
    config = tmp_path / "trust.yml"
    config.write_text("trust:\n  org: [linuxkit]\nonboot:\n  - name: a\n"
                      "    image: fbpub/busybox:1\n")
    loud = fb("pack", config, "-o", tmp_path / "a.tar")
    assert loud.returncode == 0 and "trust" in loud.stderr
    quiet = fb("pack", "-q", config, "-o", tmp_path / "b.tar")
    assert quiet.returncode == 0 and quiet.stderr == ""


KEYS_YML = """\
onboot:
  - name: keys
    image: fbtoday/data:1
    capabilities.add: [CAP_SYS_ADMIN]
    annotations:
      org.example.b: "2"
      org.example.a: "1"
    devices:
      - path: /dev/fuse
        type: c
        major: 10
        minor: 229
        mode: "0600"
    mounts:
      - type: bind
        source: /srv
        destination: /srv
        uidmappings: [{containerID: 0, hostID: 1000, size: 1}]
    runtime:
      cgroups: [keys]
      namespace: services.linuxkit
      mkdir: [/var/keys]
"""


def test_every_new_key_mounts_as_it_packs(fb, mounts, images, today_images, tmp_path):
    config = tmp_path / "keys.yml"
    config.write_text(KEYS_YML)
    tar = _pack(fb, config, tmp_path / "pack.tar")
    mnt = mounts.mount(config)
    assert_same_tree(tar, mnt)
    bundle = mnt / "containers/onboot/000-keys"
    spec = json.loads((bundle / "config.json").read_bytes())
    assert spec["process"]["capabilities"]["effective"] == ["CAP_SYS_ADMIN"]  # no label
    assert list(spec["annotations"].items()) == [("org.example.a", "1"), ("org.example.b", "2")]
    assert spec["linux"]["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10,
                                         "minor": 229, "fileMode": 384}]
    rt = json.loads((bundle / "runtime.json").read_bytes())
    assert list(rt) == ["cgroups", "mounts", "mkdir", "bindNS", "namespace"]
    assert rt["cgroups"] == ["keys"] and rt["namespace"] == "services.linuxkit"
    # the rootfs mounts follow the yaml's runtime mounts (none here), as in 2017
    assert [m["destination"] for m in rt["mounts"]] == [
        "/containers/onboot/000-keys/tmp", "/containers/onboot/000-keys/tmp",
        "/containers/onboot/000-keys/rootfs"]


RUNC_YML = """\
onboot:
  - name: dev
    image: fbpub/busybox:1
    readonly: true
    command: ["/bin/sh", "-c", "echo gone > /dev/fbnull && ls -ln /dev/fbnull"]
    devices:
      - path: /dev/fbnull
        type: c
        major: 1
        minor: 3
        mode: "0640"
"""


@pytest.mark.skipif(not os.access(RUNC, os.X_OK), reason="no runc")
def test_runc_makes_the_device_a_bundle_asks_for(mounts, images, tmp_path):
    config = tmp_path / "dev.yml"
    config.write_text(RUNC_YML)
    mnt = mounts.mount(config)
    state = tmp_path / "runc"
    state.mkdir()
    r = _runc(mnt / "containers/onboot/000-dev", state,
                         f"fbtest-{uuid.uuid4().hex[:8]}")
    if r.returncode != 0 and "cgroup" in r.stderr:
        pytest.skip(f"runc cannot manage cgroups here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    # the node runc made from linux.devices: a char device 1,3 with the mode asked for
    assert r.stdout.startswith("crw-r-----") and "1,   3" in r.stdout
