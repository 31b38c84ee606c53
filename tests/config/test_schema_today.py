"""Today's LinuxKit keys on top of 2017's: validation, config.json and runtime.json.

Expected values come from LinuxKit's source at its newest commit (src/cmd/linuxkit/moby/
config.go `ConfigToOCI`, `assignRuntime`, `deviceCgroup`; build/volume.go; runtime-spec's
specs-go field order and tags), written out by hand here, never from our own output:

- a device becomes linux.devices {path, type, major, minor, fileMode} with fileMode the octal
  `mode` as a number (os.FileMode), plus a device cgroup rule {allow: true, type, major, minor,
  access: "rwm"}; `path: all` adds only {allow: true, type, access: "rwm"};
- `binds.add` / `capabilities.add` are appended to the label's list (`mergeStrings`), the yaml's
  `binds` / `capabilities` replace it; a bind from binds.add defaults to rw,rbind,rshared;
- annotations: spec.annotations (after mounts, before linux), a Go map: sorted keys;
- runtime.cgroups first and runtime.namespace last in runtime.json, yaml > label per key;
- a bind whose source names a volume binds /containers/volumes/NAME/merged; a read-only volume
  must be bound ':ro'.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.labels import GETTY_BINDS, GETTY_DEVICES, GETTY_LABEL, SSHD_LABEL

from fusebundle.config.load import load_config
from fusebundle.config.metadata import moby_dict
from fusebundle.config.runtime import build_oci, config_json_bytes, runtime_json_bytes
from fusebundle.config.schema import parse_label, validate_entry
from fusebundle.errors import ConfigError

WHERE = "t.yml: services[0] (t)"
IMAGE = {"Entrypoint": None, "Cmd": ["/bin/sh"], "Env": None, "WorkingDir": "",
         "Labels": None}

def build(yaml: dict | None = None, label: str | None = None, volumes: dict | None = None,
          ) -> tuple[dict, dict]:
    entry = validate_entry({"name": "t", "image": "img", **(yaml or {})}, WHERE)
    lbl = parse_label(label, "label") if label else None
    return build_oci(entry, lbl, IMAGE, {}, WHERE, volumes)


def by_dest(spec: dict) -> dict[str, dict]:
    return {m["destination"]: m for m in spec["mounts"]}


def bad(**fields: object) -> str:
    with pytest.raises(ConfigError) as e:
        validate_entry({"name": "t", "image": "img", **fields}, WHERE)
    return str(e.value).removeprefix(WHERE + ": ")


# ------------------------------------------------------------------------------ devices
def test_getty_label_devices_become_linux_devices_and_cgroup_rules():
    spec, _ = build(label=GETTY_LABEL)
    linux = spec["linux"]
    assert linux["devices"] == [
        {"path": p, "type": "c", "major": ma, "minor": mi, "fileMode": 0o666}
        for p, ma, mi in GETTY_DEVICES]
    assert linux["resources"]["devices"] == [
        {"allow": True, "type": "c", "major": ma, "minor": mi, "access": "rwm"}
        for _, ma, mi in GETTY_DEVICES]
    # specs.Linux order: ..., namespaces, devices, ...
    assert list(linux) == ["resources", "namespaces", "devices"]
    text = config_json_bytes(spec).decode()
    assert '"fileMode": 438' in text  # os.FileMode marshals as a decimal number


def test_path_all_adds_only_a_cgroup_rule():
    spec, _ = build(label=SSHD_LABEL)
    assert "devices" not in spec["linux"]  # a nil []LinuxDevice is omitted
    assert spec["linux"]["resources"] == {"devices": [{"allow": True, "type": "a",
                                                        "access": "rwm"}]}


def test_device_rules_follow_the_resources_rules():
    spec, _ = build({"resources": {"devices": [{"allow": False, "access": "rwm"}]},
                     "devices": [{"path": "all", "type": "b"},
                                 {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                  "mode": "0600"}]})
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "b", "access": "rwm"},
        {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}]
    assert spec["linux"]["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10,
                                         "minor": 229, "fileMode": 0o600}]


def test_yaml_devices_replace_the_labels():
    spec, _ = build({"devices": []}, label=GETTY_LABEL)
    assert "devices" not in spec["linux"] and spec["linux"]["resources"] == {}


@pytest.mark.parametrize("device, words", [
    ({"path": "/dev/x", "type": "c", "major": 1, "minor": 2}, "missing 'mode'"),
    ({"path": "/dev/x", "type": "c", "mode": "0689"}, "not an octal number"),
    ({"path": "/dev/x", "type": "c", "mode": 438}, 'octal string such as "0666" (quote it)'),
    ({"path": "/dev/x", "type": "c", "mode": True}, "expected a string, got boolean"),
    ({"path": "dev/x", "type": "c", "mode": "0600"}, "absolute device path"),
    ({"path": "/dev/x", "type": "z", "mode": "0600"}, "expected one of c, b, u, p"),
    ({"path": "all", "type": "c", "major": "1"}, "expected an integer"),
    ({"path": "all", "type": "c", "perms": "rw"}, "unknown field 'perms' in 'devices[0]'"),
])
def test_bad_devices_are_named(device, words):
    assert words in bad(devices=[device])


# ------------------------------------------------------------------------------ .add keys
def test_binds_add_appends_to_the_labels_binds_with_todays_default():
    spec, _ = build({"binds.add": ["/root/.ssh:/root/.ssh"]}, label=SSHD_LABEL)
    m = by_dest(spec)
    assert m["/root/.ssh"] == {"destination": "/root/.ssh", "type": "bind",
                               "source": "/root/.ssh", "options": ["rw", "rbind", "rshared"]}
    # the label's binds are still there, with 2017's default for the 2017 key
    assert m["/run"] == {"destination": "/run", "type": "bind", "source": "/run",
                         "options": ["rw", "rbind", "rprivate"]}
    assert {b.split(":")[1] for b in GETTY_BINDS} <= set(m)
    # with explicit options: given ones plus rbind, in both eras
    spec, _ = build({"binds.add": ["/a:/b:ro"]})
    assert by_dest(spec)["/b"]["options"] == ["ro", "rbind"]


def test_yaml_binds_replace_the_label_and_its_additions():
    spec, _ = build({"binds": ["/x:/x"], "binds.add": ["/y:/y"]}, label=SSHD_LABEL)
    m = by_dest(spec)
    assert "/x" in m and "/y" not in m and "/run" not in m


def test_capabilities_add_extends_the_label():
    label = json.dumps({"capabilities": ["CAP_CHOWN", "CAP_NET_RAW"]})
    spec, _ = build({"capabilities.add": ["CAP_SYS_ADMIN", "CAP_CHOWN"]}, label=label)
    caps = spec["process"]["capabilities"]
    assert caps["effective"] == ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]
    assert caps["bounding"] == ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]
    # the yaml's capabilities replace the label's and the additions
    spec, _ = build({"capabilities": ["CAP_KILL"], "capabilities.add": ["CAP_SYS_ADMIN"]},
                    label=label)
    assert spec["process"]["capabilities"]["effective"] == ["CAP_KILL"]
    # with no label, the additions are the list
    spec, _ = build({"capabilities.add": ["CAP_KILL"]})
    assert spec["process"]["capabilities"]["effective"] == ["CAP_KILL"]


def test_capabilities_add_to_all_is_an_error():
    with pytest.raises(ConfigError, match="cannot add to 'all'"):
        build({"capabilities.add": ["CAP_KILL"]}, label=SSHD_LABEL)


def test_label_adds_are_read_like_yaml_adds():
    label = json.dumps({"binds": ["/a:/a"], "binds.add": ["/b:/b"],
                        "capabilities.add": ["CAP_KILL"]})
    spec, _ = build(label=label)
    assert set(by_dest(spec)) >= {"/a", "/b"}
    assert by_dest(spec)["/b"]["options"] == ["rw", "rbind", "rshared"]
    assert spec["process"]["capabilities"]["effective"] == ["CAP_KILL"]


# ------------------------------------------------------------------------------ annotations
def test_annotations_sit_between_mounts_and_linux_sorted():
    spec, _ = build({"annotations": {"org.b": "2", "org.a": "1"}})
    assert list(spec) == ["ociVersion", "process", "root", "mounts", "annotations", "linux"]
    assert list(spec["annotations"].items()) == [("org.a", "1"), ("org.b", "2")]
    label = json.dumps({"annotations": {"from": "label"}})
    assert build(label=label)[0]["annotations"] == {"from": "label"}
    assert build({"annotations": {"from": "yaml"}}, label=label)[0]["annotations"] == \
        {"from": "yaml"}
    assert "annotations" not in build({"annotations": {}}, label=label)[0]
    assert "quote numbers" in bad(annotations={"n": 1})


# ------------------------------------------------------------------------------ runtime
def test_runtime_cgroups_and_namespace_in_runtime_json():
    _, rt = build({"runtime": {"cgroups": ["getty"], "mkdir": ["/var/x"],
                               "namespace": "services.linuxkit"}})
    assert list(rt) == ["cgroups", "mkdir", "bindNS", "namespace"]
    assert rt["cgroups"] == ["getty"] and rt["namespace"] == "services.linuxkit"
    assert runtime_json_bytes(rt) == (
        b'{\n    "cgroups": [\n        "getty"\n    ],\n    "mkdir": [\n        "/var/x"\n'
        b'    ],\n    "bindNS": {},\n    "namespace": "services.linuxkit"\n}')


def test_runtime_new_keys_merge_key_by_key():
    label = json.dumps({"runtime": {"cgroups": ["from-label"], "mkdir": ["/label"]}})
    _, rt = build({"runtime": {"mkdir": ["/yaml"]}}, label=label)
    # 2017's keys: the yaml's runtime replaces the label's; today's cgroups: yaml > label
    assert rt["mkdir"] == ["/yaml"] and rt["cgroups"] == ["from-label"]
    _, rt = build({"runtime": {"cgroups": []}}, label=label)
    assert rt["cgroups"] == []  # set to empty: a pointer to an empty list
    _, rt = build()
    assert rt == {"bindNS": {}}  # no new key: 2017's runtime.json


def test_mounts_with_id_mappings():
    idmap = [{"containerID": 0, "hostID": 1000, "size": 1}]
    _, rt = build({"runtime": {"mounts": [{"type": "bind", "source": "/a",
                                           "destination": "/b", "uidmappings": idmap}]}})
    assert rt["mounts"] == [{"destination": "/b", "type": "bind", "source": "/a",
                             "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}]
    spec, _ = build({"mounts": [{"type": "bind", "source": "/a", "destination": "/b",
                                 "uidmappings": idmap}]})
    # ConfigToOCI rebuilds each mount from type, source, destination and options only
    assert by_dest(spec)["/b"] == {"destination": "/b", "type": "bind", "source": "/a"}


# ------------------------------------------------------------------------------ volumes
def _config(tmp_path: Path, text: str):
    p = tmp_path / "c.yml"
    p.write_text(text)
    return load_config([str(p)])


VOLS = """\
volumes:
  - name: blank
  - name: ro-vol
    image: fbpub/busybox:1
    readonly: true
services:
  - name: a
    image: img
    binds:
      - blank:/blank
      - ro-vol:/ro:ro
      - /etc:/etc
"""


def test_binds_name_volumes(tmp_path):
    cfg = _config(tmp_path, VOLS)
    e = cfg.services[0]
    spec, _ = build_oci(e.spec, None, IMAGE, cfg.id_map(), e.where, cfg.volume_map())
    m = by_dest(spec)
    assert m["/blank"] == {"destination": "/blank", "type": "bind",
                           "source": "/containers/volumes/blank/merged",
                           "options": ["rw", "rbind", "rprivate"]}
    assert m["/ro"]["source"] == "/containers/volumes/ro-vol/merged"
    assert m["/etc"]["source"] == "/etc"


def test_a_read_only_volume_must_be_bound_ro(tmp_path):
    cfg = _config(tmp_path, VOLS.replace("ro-vol:/ro:ro", "ro-vol:/ro"))
    e = cfg.services[0]
    with pytest.raises(ConfigError, match="volume 'ro-vol' is read-only"):
        build_oci(e.spec, None, IMAGE, cfg.id_map(), e.where, cfg.volume_map())


def test_unknown_volume_and_bind_mount_of_a_volume(tmp_path):
    cfg = _config(tmp_path, VOLS.replace("blank:/blank", "nosuch:/blank"))
    e = cfg.services[0]
    with pytest.raises(ConfigError, match="'nosuch' is not an absolute path nor a volume"):
        build_oci(e.spec, None, IMAGE, cfg.id_map(), e.where, cfg.volume_map())
    cfg = _config(tmp_path, VOLS.replace("    binds:\n      - blank:/blank\n", """\
    mounts:
      - {type: bind, source: ro-vol, destination: /m, options: [rbind, ro]}
    binds:
"""))
    e = cfg.services[0]
    spec, _ = build_oci(e.spec, None, IMAGE, cfg.id_map(), e.where, cfg.volume_map())
    assert by_dest(spec)["/m"]["source"] == "/containers/volumes/ro-vol/merged"


def test_without_volumes_a_relative_bind_source_is_kept(tmp_path):
    cfg = _config(tmp_path, "services:\n  - name: a\n    image: img\n    binds: [x:/x]\n")
    e = cfg.services[0]
    spec, _ = build_oci(e.spec, None, IMAGE, cfg.id_map(), e.where, cfg.volume_map())
    assert by_dest(spec)["/x"]["source"] == "x"


@pytest.mark.parametrize("text, words", [
    ("volumes:\n  - name: Bad\n", "is not a volume name"),
    ("volumes:\n  - name: a\n  - name: a\n", "duplicate volume name 'a'"),
    ("volumes:\n  - name: a\n    format: tar\n    image: x\n", "expected filesystem or oci"),
    ("volumes:\n  - name: a\n    format: oci\n", "need an 'image'"),
    ("volumes:\n  - name: a\n    image: x\n    platforms: [linux/amd64]\n",
     "only applies to 'format: oci'"),
    ("volumes:\n  - name: a\n    image: x\n    format: oci\n    platforms: [amd64]\n",
     "is not a platform"),
    ("volumes:\n  - name: a\n    size: 1\n", "unknown field 'size'"),
    ("volumes:\n  - name: a\n    image: '@pkg:../pkg/x'\n", "LinuxKit's package tooling"),
])
def test_bad_volumes(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words):
        _config(tmp_path, text)


def test_metadata_writes_todays_keys_in_todays_order(tmp_path):
    cfg = _config(tmp_path, """\
kernel:
  image: k
  ucode: intel-ucode.cpio
services:
  - name: a
    image: img
    annotations: {x: "1"}
    devices: [{path: all, type: b}]
    binds.add: [/a:/a]
    capabilities.add: [CAP_KILL]
volumes:
  - name: v
    image: img
    format: oci
    platforms: [linux/amd64]
""")
    d = moby_dict(cfg)
    assert d["kernel"] == {"image": "k", "ucode": "intel-ucode.cpio"}
    assert list(d["services"][0]) == ["name", "image", "capabilities.add", "binds.add",
                                      "devices", "annotations"]
    assert d["services"][0]["devices"] == [{"path": "all", "type": "b", "major": 0,
                                            "minor": 0}]
    assert d["volumes"] == [{"name": "v", "image": "img", "format": "oci",
                             "platforms": ["linux/amd64"]}]
    assert list(d)[-1] == "volumes"
    assert "volumes" not in moby_dict(_config(tmp_path, "init: [a]\n"))


# ------------------------------------------------------------------------------ messages
def test_yaml_errors_name_the_container(tmp_path):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, "services:\n  - name: sshd\n    image: img\n    binds.ad: [/a:/a]\n")
    assert str(e.value) == (f"{tmp_path}/c.yml: services[0] (sshd): unknown field "
                            "'binds.ad'")


@pytest.mark.parametrize("text", [
    "services:\n  - name: a\n    image: Foo/Bar:1\n",
    "init: ['Foo:bar:baz']\n",
    "kernel:\n  image: 'x@sha256:12'\n",
    "volumes:\n  - name: v\n    image: UPPER\n",
])
def test_invalid_reference_says_only_that(tmp_path, text):
    with pytest.raises(ConfigError) as e:
        _config(tmp_path, text)
    assert str(e.value).endswith(": invalid reference format")
    assert "no such image" not in str(e.value) and "pull" not in str(e.value)


@pytest.mark.parametrize("text", [
    "services:\n  - name: a\n    image: '@pkg:../pkg/sshd'\n",
    "init: ['@pkg:../pkg/init']\n",
    "kernel:\n  image: '@pkg:../kernel'\n",
])
def test_pkg_templates_need_linuxkit(tmp_path, text):
    with pytest.raises(ConfigError, match="needs LinuxKit's package tooling"):
        _config(tmp_path, text)


def test_a_label_without_adds_is_read_as_in_2017():
    label = json.dumps({"capabilities": ["CAP_KILL", "CAP_KILL"]})
    spec, _ = build(label=label)
    assert spec["process"]["capabilities"]["effective"] == ["CAP_KILL", "CAP_KILL"]
    assert spec["process"]["capabilities"]["bounding"] == ["CAP_KILL"]


def test_metadata_json_writes_what_metadata_yaml_writes(tmp_path):
    from fusebundle.bundle.view import file_entries

    def content(kind: str) -> bytes:
        cfg = _config(tmp_path, f"init: [a]\nfiles:\n  - path: etc/m\n    metadata: {kind}\n")
        (entry,) = file_entries(cfg.files[0], {}, {"etc"}, cfg)
        assert isinstance(entry.body, bytes)
        return entry.body

    # the same document (which names the file's own metadata kind)
    assert content("json") == content("yaml").replace(b'"metadata": "yaml"',
                                                      b'"metadata": "json"')
    assert json.loads(content("json"))["init"] == ["a"]
    with pytest.raises(ConfigError, match="expected 'yaml' or 'json'"):
        _config(tmp_path, "files:\n  - path: etc/m\n    metadata: toml\n")


def test_nested_add_is_explained():
    assert bad(binds={"add": ["/a:/a"]}) == ("field 'binds': expected a list, got a mapping "
                                             "with 'add' (to add to the label's binds, "
                                             "write 'binds.add:')")
    assert "write 'capabilities.add:'" in bad(capabilities={"add": ["CAP_KILL"]})
