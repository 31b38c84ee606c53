"""Tests of fusebundle.config.runtime: the goldens of the reference, then every field alone."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from fusebundle.config.runtime import (
    append_mount,
    build_oci,
    config_json_bytes,
    is_readonly,
    runtime_json_bytes,
)
from fusebundle.config.schema import parse_label, validate_entry
from fusebundle.errors import ConfigError

CONFORMANCE = Path("/work/shared/conformance")
GOLDEN = CONFORMANCE / "golden"

# The label of fbpub/conf:1, exactly as load_images.sh sets it.
CONF_LABEL = (
    '{"readonly":true,"capabilities":["CAP_NET_BIND_SERVICE","CAP_SETUID","CAP_SETGID",'
    '"CAP_DAC_OVERRIDE"],"binds":["/run/confd:/run/confd"],"net":"new","runtime":{"mkdir":'
    '["/run/confd","/var/lib/confd/cache"],"bindNS":{"net":"/run/netns/confd"}}}'
)
# `docker image inspect` .Config of the test images (facts of load_images.sh's `docker import`).
BUSYBOX = {"Entrypoint": None, "Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin:/sbin"],
           "WorkingDir": "/home/user", "Labels": None}
APP = {"Entrypoint": ["/app/bin/server"], "Cmd": ["--port", "8080"],
       "Env": ["APP_HOME=/app", "APP_MODE=production"], "WorkingDir": "/app",
       "Labels": {"org.example.app": "example app"}}
CONF = {"Entrypoint": ["/usr/local/bin/confd"], "Cmd": ["-config", "/etc/confd/confd.toml"],
        "Env": ["CONFD_MODE=prod"], "WorkingDir": "/var/lib/confd",
        "Labels": {"org.mobyproject.config": CONF_LABEL}}
IMAGES = {"fbpub/busybox:1": BUSYBOX, "fbpub/app:1": APP, "index.docker.io/fbpub/app:1": APP,
          "fbpub/conf:1": CONF}
SECTIONS = ("onboot", "onshutdown", "services")

# The reference's default mounts (config.go), not readonly.
PROC = {"destination": "/proc", "type": "proc", "source": "proc",
        "options": ["nosuid", "nodev", "noexec", "relatime"]}
DEV = {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
       "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
PTS = {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
       "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}
SYS = {"destination": "/sys", "type": "sysfs", "source": "sysfs",
       "options": ["nosuid", "noexec", "nodev"]}
CGROUP = {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
          "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
WHERE = "t.yml: services[0] (t)"


# ---------------------------------------------------------------------------- the goldens
def _compare_module():
    spec = importlib.util.spec_from_file_location("fb_compare", CONFORMANCE / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bundles():
    """Per scenario: (scenario, bundle path, validated entry, where) for each bundle."""
    out = []
    if not GOLDEN.is_dir():
        return out
    for scen in sorted(p.name for p in GOLDEN.iterdir()):
        doc = YAML().load((CONFORMANCE / "scenarios" / f"{scen}.yml").read_text())
        entries = []
        for section in SECTIONS:
            for i, raw in enumerate(doc.get(section) or []):
                prefix = "" if section == "services" else f"{i:03d}-"
                where = f"{scen}.yml: {section}[{i}]"
                entry = validate_entry(raw, where)
                path = f"containers/{section}/{prefix}{entry['name']}"
                entries.append((scen, path, entry, where))
        out.append(entries)
    return out


def _rootfs_mounts(runtime: dict, path: str, image: str, readonly: bool, dup: dict) -> None:
    """The mounts the reference's ImageBundle appends: the first user of an image string
    holds the copy (lower/ or rootfs/), later users point at it."""
    root = f"{path}/{'rootfs' if readonly else 'lower'}"
    root = dup.setdefault(image, root)
    if readonly:
        append_mount(runtime, {"source": "/" + root, "destination": f"/{path}/rootfs",
                               "options": ["bind"]})
        return
    tmp = f"{path}/tmp"
    append_mount(runtime, {"source": "tmpfs", "type": "tmpfs", "destination": "/" + tmp})
    append_mount(runtime, {"destination": "/" + tmp, "options": ["remount", "private"]})
    append_mount(runtime, {"source": "overlay", "type": "overlay",
                           "destination": f"/{path}/rootfs",
                           "options": [f"lowerdir=/{root}", f"upperdir=/{tmp}/upper",
                                       f"workdir=/{tmp}/work"]})


def _golden_cases():
    cases = []
    for entries in _bundles():
        id_map = {e["name"]: 100 + i for i, (_, _, e, _) in enumerate(entries)}
        dup: dict[str, str] = {}
        for scen, path, entry, where in entries:
            image_config = IMAGES[entry["image"]]
            text = (image_config["Labels"] or {}).get("org.mobyproject.config")
            label = parse_label(text, f"{where}: label") if text else None
            spec, runtime = build_oci(entry, label, image_config, id_map, where)
            _rootfs_mounts(runtime, path, entry["image"], is_readonly(entry, label), dup)
            cases.append(pytest.param(scen, path, spec, runtime, id=f"{scen}/{path}"))
    return cases


GOLDEN_CASES = _golden_cases()
needs_golden = pytest.mark.skipif(not GOLDEN_CASES, reason="no conformance goldens")


def _ordered(v):
    """Canonical order for the lists R5/R6 compare as multisets, keeping key order."""
    v = copy.deepcopy(v)
    v["mounts"].sort(key=lambda m: json.dumps(m, sort_keys=True))
    for key in ("bounding", "inheritable", "permitted"):
        if key in v["process"]["capabilities"]:
            v["process"]["capabilities"][key].sort()
    return v


@needs_golden
@pytest.mark.parametrize("scen,path,spec,runtime", GOLDEN_CASES)
def test_config_json_matches_golden(scen, path, spec, runtime):
    golden_bytes = (GOLDEN / scen / path / "config.json").read_bytes()
    golden = json.loads(golden_bytes)
    ours = json.loads(config_json_bytes(spec))
    # compare.py's own rules R4-R6 (including "a child mount comes after its parent")
    assert _compare_module().json_diff(golden, ours, path, True) == []
    # and the Go field order of every object: same keys in the same order
    assert json.dumps(_ordered(ours)) == json.dumps(_ordered(golden))


@needs_golden
@pytest.mark.parametrize("scen,path,spec,runtime", GOLDEN_CASES)
def test_runtime_json_matches_golden_bytes(scen, path, spec, runtime):
    # runtime.json is deterministic in the reference: whole file, byte for byte
    assert runtime_json_bytes(runtime) == (GOLDEN / scen / path / "runtime.json").read_bytes()


@needs_golden
@pytest.mark.parametrize("name", ["config.json", "runtime.json"])
def test_encoder_reproduces_golden_bytes(name):
    # re-encoding the golden in its own key order gives back Go's exact bytes
    files = sorted(GOLDEN.glob(f"*/containers/*/*/{name}"))
    assert files
    for f in files:
        data = f.read_bytes()
        assert config_json_bytes(json.loads(data)) == data, f


# ------------------------------------------------------------------------------ helpers
def build(yaml: dict | None = None, label: dict | None = None, image: dict | None = None,
          id_map: dict | None = None) -> tuple[dict, dict]:
    entry = validate_entry({"name": "t", "image": "img", **(yaml or {})}, WHERE)
    lbl = validate_entry(label, "label", label=True) if label is not None else None
    return build_oci(entry, lbl, BUSYBOX if image is None else image, id_map or {}, WHERE)


def mounts_by_dest(spec: dict) -> dict[str, dict]:
    return {m["destination"]: m for m in spec["mounts"]}


# ------------------------------------------------------------------------- whole documents
def test_defaults_whole_document():
    spec, runtime = build()
    assert spec == {
        "ociVersion": "1.0.0",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["/bin/sh"],
                    "env": ["PATH=/usr/bin:/bin:/sbin"], "cwd": "/home/user",
                    "capabilities": {}},
        "root": {"path": "rootfs"},
        "mounts": [DEV, PROC, SYS, PTS, CGROUP],  # by depth, then path
        "linux": {"resources": {}, "namespaces": [{"type": "pid"}, {"type": "mount"}]},
    }
    assert runtime == {"bindNS": {}}
    assert list(spec) == ["ociVersion", "process", "root", "mounts", "linux"]
    assert list(spec["process"]) == ["user", "args", "env", "cwd", "capabilities"]


def test_key_order_with_everything_set():
    spec, _ = build({
        "capabilities": ["CAP_CHOWN"], "rlimits": ["nofile,1,2"], "noNewPrivileges": True,
        "oomScoreAdj": 1, "hostname": "h", "uid": 1, "gid": 2, "additionalGids": [3],
        "uidMappings": [{"hostID": 1, "containerID": 0, "size": 1}],
        "gidMappings": [{"hostID": 1, "containerID": 0, "size": 1}],
        "sysctl": {"a": "1"}, "cgroupsPath": "c", "rootfsPropagation": "shared",
        "maskedPaths": ["/m"], "readonlyPaths": ["/r"], "readonly": True,
    })
    assert list(spec) == ["ociVersion", "process", "root", "hostname", "mounts", "linux"]
    assert list(spec["process"]) == ["user", "args", "env", "cwd", "capabilities", "rlimits",
                                     "noNewPrivileges", "oomScoreAdj"]
    assert list(spec["process"]["user"]) == ["uid", "gid", "additionalGids"]
    assert list(spec["linux"]) == ["uidMappings", "gidMappings", "sysctl", "resources",
                                   "cgroupsPath", "namespaces", "rootfsPropagation",
                                   "maskedPaths", "readonlyPaths"]


# ---------------------------------------------------------------- command, env, cwd (image)
def test_args_env_cwd_from_image():
    spec, _ = build(image=APP)
    assert spec["process"]["args"] == ["/app/bin/server", "--port", "8080"]
    assert spec["process"]["env"] == ["APP_HOME=/app", "APP_MODE=production"]
    assert spec["process"]["cwd"] == "/app"


def test_yaml_over_label_over_image_as_a_whole():
    label = {"command": ["/l"], "env": ["L=1"], "cwd": "/label"}
    spec, _ = build(label=label, image=APP)
    assert spec["process"]["args"] == ["/l"]
    assert spec["process"]["env"] == ["L=1"]
    assert spec["process"]["cwd"] == "/label"
    spec, _ = build({"command": ["/y", "a"], "env": ["Y=1"], "cwd": "/yaml"}, label, APP)
    assert spec["process"]["args"] == ["/y", "a"]
    assert spec["process"]["env"] == ["Y=1"]
    assert spec["process"]["cwd"] == "/yaml"


def test_empty_lists_override_but_empty_cwd_does_not():
    spec, _ = build({"command": [], "env": [], "cwd": ""}, {"cwd": "/label"}, APP)
    assert spec["process"]["args"] == []          # args has no omitempty
    assert "env" not in spec["process"]           # env has omitempty
    assert spec["process"]["cwd"] == "/label"     # assignStringEmpty4: "" means unset


def test_no_entrypoint_or_cmd_gives_null_args_and_root_cwd():
    image = {"Entrypoint": None, "Cmd": None, "Env": None, "WorkingDir": ""}
    spec, _ = build(image=image)
    assert spec["process"]["args"] is None
    assert spec["process"]["cwd"] == "/"
    assert "env" not in spec["process"]
    assert b'"args": null' in config_json_bytes(spec)
    spec, _ = build(image={})  # every key missing
    assert spec["process"]["args"] is None


def test_entrypoint_without_cmd():
    spec, _ = build(image={"Entrypoint": ["/e"], "Cmd": None})
    assert spec["process"]["args"] == ["/e"]


# ------------------------------------------------------------------------------ capabilities
def test_no_capabilities_is_an_empty_object():
    spec, _ = build()
    assert spec["process"]["capabilities"] == {}
    assert b'"capabilities": {}' in config_json_bytes(spec)


def test_capabilities_sets():
    spec, _ = build({"capabilities": ["CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_CHOWN"]})
    caps = spec["process"]["capabilities"]
    assert caps["effective"] == ["CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_CHOWN"]  # as given
    for key in ("bounding", "inheritable", "permitted"):
        assert caps[key] == ["CAP_CHOWN", "CAP_SYS_ADMIN"]  # a set, sorted here
    assert "ambient" not in caps
    assert list(caps) == ["bounding", "effective", "inheritable", "permitted"]


@pytest.mark.parametrize("word", ["all", "ALL", "All"])
def test_capabilities_all(word):
    caps = build({"capabilities": [word]})[0]["process"]["capabilities"]
    assert len(caps["effective"]) == 38
    assert caps["effective"][0] == "CAP_AUDIT_CONTROL"   # allCaps order
    assert caps["effective"][-1] == "CAP_WAKE_ALARM"
    assert caps["effective"].index("CAP_SYSLOG") < caps["effective"].index("CAP_SYS_ADMIN")
    assert caps["bounding"] == sorted(caps["effective"])


@pytest.mark.parametrize("word", ["none", "NONE"])
def test_capabilities_none_overrides_label(word):
    spec, _ = build({"capabilities": [word]}, {"capabilities": ["CAP_CHOWN"]})
    assert spec["process"]["capabilities"] == {}


def test_ambient():
    caps = build({"capabilities": ["CAP_CHOWN"], "ambient": ["CAP_NET_RAW"]})[0]
    caps = caps["process"]["capabilities"]
    assert caps == {"bounding": ["CAP_CHOWN", "CAP_NET_RAW"], "effective": ["CAP_CHOWN"],
                    "inheritable": ["CAP_CHOWN", "CAP_NET_RAW"],
                    "permitted": ["CAP_CHOWN", "CAP_NET_RAW"], "ambient": ["CAP_NET_RAW"]}
    only = build({"ambient": ["CAP_NET_RAW"]})[0]["process"]["capabilities"]
    assert only == {"bounding": ["CAP_NET_RAW"], "inheritable": ["CAP_NET_RAW"],
                    "permitted": ["CAP_NET_RAW"], "ambient": ["CAP_NET_RAW"]}
    assert len(build({"ambient": ["all"]})[0]["process"]["capabilities"]["ambient"]) == 38


def test_capabilities_from_label():
    spec, _ = build(label={"capabilities": ["CAP_KILL"]})
    assert spec["process"]["capabilities"]["effective"] == ["CAP_KILL"]


# ------------------------------------------------------------------------------ mounts
def test_tmpfs():
    spec, _ = build({"tmpfs": ["/tmp:size=10m,mode=1777", "/run"]})
    m = mounts_by_dest(spec)
    assert m["/tmp"] == {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                         "options": ["size=10m", "mode=1777"]}
    assert m["/run"] == {"destination": "/run", "type": "tmpfs", "source": "tmpfs"}


def test_tmpfs_replaces_default_dev():
    m = mounts_by_dest(build({"tmpfs": ["/dev:size=1m"]})[0])
    assert m["/dev"] == {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                         "options": ["size=1m"]}


def test_binds():
    spec, _ = build({"binds": ["/var:/var", "/etc/ssl:/etc/ssl:ro,rshared"]})
    m = mounts_by_dest(spec)
    assert m["/var"] == {"destination": "/var", "type": "bind", "source": "/var",
                         "options": ["rw", "rbind", "rprivate"]}
    assert m["/etc/ssl"] == {"destination": "/etc/ssl", "type": "bind", "source": "/etc/ssl",
                             "options": ["ro", "rshared", "rbind"]}


def test_later_kinds_replace_earlier_at_same_destination():
    # tmpfs, then binds, then mounts go into one table keyed by destination
    spec, _ = build({"tmpfs": ["/x"], "binds": ["/a:/x"],
                     "mounts": [{"type": "tmpfs", "destination": "/x", "options": ["ro"]}]})
    assert mounts_by_dest(spec)["/x"] == {"destination": "/x", "type": "tmpfs",
                                          "source": "tmpfs", "options": ["ro"]}
    assert len(spec["mounts"]) == 6


def test_binds_from_label_replaced_by_yaml():
    spec, _ = build({"binds": ["/b:/b"]}, {"binds": ["/l:/l"]})
    assert "/l" not in mounts_by_dest(spec)
    assert "/b" in mounts_by_dest(spec)


@pytest.mark.parametrize("mount,expected", [
    ({"source": "proc", "options": ["ro"]},
     {"destination": "/proc", "type": "proc", "source": "proc", "options": ["ro"]}),
    ({"type": "mqueue"}, {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"}),
    ({"source": "devpts"}, {"destination": "/dev/pts", "type": "devpts", "source": "devpts"}),
    ({"type": "sysfs"}, {"destination": "/sys", "type": "sysfs", "source": "sysfs"}),
    ({"source": "cgroup"},
     {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}),
    ({"destination": "/dev", "options": ["a"]},
     {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["a"]}),
    ({"type": "bind", "source": "/s", "destination": "/d", "options": []},
     {"destination": "/d", "type": "bind", "source": "/s"}),
    ({"type": "tmpfs", "destination": "/t"},
     {"destination": "/t", "type": "tmpfs", "source": "tmpfs"}),
])
def test_mount_type_inference(mount, expected):
    spec, _ = build({"mounts": [mount]})
    assert mounts_by_dest(spec)[expected["destination"]] == expected


def test_mounts_sorted_by_depth_then_path():
    spec, _ = build({"binds": ["/s:/a/b/c", "/s:/z", "/s:/a/b", "/s:/a//b/../y/"]})
    dests = [m["destination"] for m in spec["mounts"]]
    # depth = '/' count of the cleaned path: /a//b/../y/ cleans to /a/y (depth 2)
    assert dests == ["/dev", "/proc", "/sys", "/z", "/a//b/../y/", "/a/b", "/dev/pts",
                     "/a/b/c", "/sys/fs/cgroup"]


# ------------------------------------------------------------------------------ namespaces
@pytest.mark.parametrize("yaml,expected", [
    ({}, [{"type": "pid"}]),
    ({"net": "new"}, [{"type": "network"}, {"type": "pid"}]),
    ({"net": "none"}, [{"type": "network"}, {"type": "pid"}]),
    ({"net": "host"}, [{"type": "pid"}]),
    ({"net": "root"}, [{"type": "pid"}]),
    ({"net": "/run/netns/wg"}, [{"type": "network", "path": "/run/netns/wg"}, {"type": "pid"}]),
    ({"ipc": "new"}, [{"type": "ipc"}, {"type": "pid"}]),
    ({"uts": "/proc/1/ns/uts"}, [{"type": "uts", "path": "/proc/1/ns/uts"}, {"type": "pid"}]),
    ({"pid": "host"}, []),
    ({"pid": "root"}, []),
    ({"pid": "new"}, [{"type": "pid"}]),
    ({"pid": "/proc/1/ns/pid"}, [{"type": "pid", "path": "/proc/1/ns/pid"}]),
    ({"userns": "new"}, [{"type": "pid"}, {"type": "user"}]),
    ({"net": "new", "ipc": "new", "uts": "new", "pid": "new", "userns": "/u"},
     [{"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "pid"},
      {"type": "user", "path": "/u"}]),
])
def test_namespaces(yaml, expected):
    spec, _ = build(yaml)
    assert spec["linux"]["namespaces"] == [*expected, {"type": "mount"}]


def test_namespace_empty_string_falls_back_to_label():
    spec, _ = build({"net": "", "pid": ""}, {"net": "new", "pid": "host"})
    assert spec["linux"]["namespaces"] == [{"type": "network"}, {"type": "mount"}]
    spec, _ = build({"net": "host"}, {"net": "new"})
    assert spec["linux"]["namespaces"] == [{"type": "pid"}, {"type": "mount"}]


# ------------------------------------------------------------------------------ rlimits
def test_rlimits():
    spec, _ = build({"rlimits": ["nofile,1024,2048", "RLIMIT_CORE,unlimited,UNLIMITED",
                                 " nproc , 10 , 20 ", "rlimit_rttime,0,0"]})
    top = 18446744073709551615
    assert spec["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024},
        {"type": "RLIMIT_CORE", "hard": top, "soft": top},
        {"type": "RLIMIT_NPROC", "hard": 20, "soft": 10},
        {"type": "RLIMIT_RTTIME", "hard": 0, "soft": 0},
    ]
    assert list(spec["process"]["rlimits"][0]) == ["type", "hard", "soft"]
    assert b'"hard": 18446744073709551615' in config_json_bytes(spec)


def test_empty_rlimits_omitted():
    spec, _ = build({"rlimits": []}, {"rlimits": ["nofile,1,1"]})
    assert "rlimits" not in spec["process"]


# ------------------------------------------------------------------------------ ids
def test_ids_by_name_and_number():
    ids = {"logger": 101, "conf-boot": 100}
    spec, _ = build({"uid": "logger", "gid": "conf-boot",
                     "additionalGids": ["logger", 5, "root", ""]}, id_map=ids)
    assert spec["process"]["user"] == {"uid": 101, "gid": 100, "additionalGids": [101, 5, 0, 0]}
    spec, _ = build({"uid": 1000, "gid": "root"})
    assert spec["process"]["user"] == {"uid": 1000, "gid": 0}


def test_ids_from_label_and_empty_additional_gids():
    spec, _ = build({"additionalGids": []}, {"uid": 7, "additionalGids": [1]})
    assert spec["process"]["user"] == {"uid": 7, "gid": 0}


def test_unknown_container_name():
    with pytest.raises(ConfigError) as e:
        build({"uid": "nobody"}, id_map={"logger": 101})
    assert str(e.value) == f"{WHERE}: uid: unknown container name 'nobody'"
    with pytest.raises(ConfigError, match=r"additionalGids\[1\]: unknown container name 'x'"):
        build({"additionalGids": [1, "x"]})
    with pytest.raises(ConfigError, match=r"gid: unknown container name '1000'.*label"):
        build(label={"gid": "1000"})  # a numeric string is a name, as in idNumeric


# ------------------------------------------------------------------------------ process bits
def test_no_new_privileges():
    assert build({"noNewPrivileges": True})[0]["process"]["noNewPrivileges"] is True
    assert "noNewPrivileges" not in build({"noNewPrivileges": False})[0]["process"]
    spec, _ = build({"noNewPrivileges": False}, {"noNewPrivileges": True})
    assert "noNewPrivileges" not in spec["process"]


def test_oom_score_adj_written_when_set_even_zero():
    assert build({"oomScoreAdj": 0})[0]["process"]["oomScoreAdj"] == 0
    assert build({"oomScoreAdj": -500})[0]["process"]["oomScoreAdj"] == -500
    assert build(label={"oomScoreAdj": 3})[0]["process"]["oomScoreAdj"] == 3
    assert "oomScoreAdj" not in build()[0]["process"]


def test_hostname():
    assert build({"hostname": "box"})[0]["hostname"] == "box"
    assert build({"hostname": ""}, {"hostname": "lbl"})[0]["hostname"] == "lbl"
    assert "hostname" not in build()[0]


# ------------------------------------------------------------------------------ linux bits
def test_rootfs_propagation_and_cgroups_path():
    spec, _ = build({"rootfsPropagation": "shared", "cgroupsPath": "/fb/t"})
    assert spec["linux"]["rootfsPropagation"] == "shared"
    assert spec["linux"]["cgroupsPath"] == "/fb/t"
    # pointer fields: an empty yaml value overrides the label and is then omitted
    spec, _ = build({"cgroupsPath": ""}, {"cgroupsPath": "/l", "rootfsPropagation": "slave"})
    assert "cgroupsPath" not in spec["linux"]
    assert spec["linux"]["rootfsPropagation"] == "slave"


def test_resources_use_json_tags_and_pointer_omitempty():
    resources = {
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                    {"type": "b", "major": 0}],
        "memory": {"limit": 1048576, "swappiness": 0, "disableOOMKiller": False},
        "cpu": {"shares": 512, "cpus": "0-1", "mems": ""},
        "pids": {},
        "blockio": {"weight": 10,
                    "weightDevice": [{"major": 8, "minor": 0, "leafWeight": 5}],
                    "throttleReadBpsDevice": [{"major": 8, "rate": 100}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 10}, {"pageSize": 4096}],
        "network": {"classID": 0, "priorities": [{"name": "eth0"}]},
    }
    spec, _ = build({"resources": resources})
    assert spec["linux"]["resources"] == {
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
                    {"allow": False, "type": "b", "major": 0}],
        "memory": {"limit": 1048576, "swappiness": 0, "disableOOMKiller": False},
        "cpu": {"shares": 512, "cpus": "0-1"},
        "pids": {"limit": 0},
        "blockIO": {"weight": 10,
                    "weightDevice": [{"major": 8, "minor": 0, "leafWeight": 5}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 100}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 10}, {"pageSize": "4096", "limit": 0}],
        "network": {"classID": 0, "priorities": [{"name": "eth0", "priority": 0}]},
    }


def test_resources_empty_structs_are_written():
    spec, _ = build({"resources": {"memory": {}, "cpu": {}, "network": {}, "devices": []}})
    assert spec["linux"]["resources"] == {"memory": {}, "cpu": {}, "network": {}}
    assert build(label={"resources": {"pids": {"limit": 5}}})[0]["linux"]["resources"] == {
        "pids": {"limit": 5}}


def test_sysctl_sorted_and_omitted_when_empty():
    spec, _ = build({"sysctl": {"net.ipv4.ip_forward": "1", "kernel.msgmax": "65536"}})
    assert list(spec["linux"]["sysctl"].items()) == [("kernel.msgmax", "65536"),
                                                     ("net.ipv4.ip_forward", "1")]
    assert "sysctl" not in build({"sysctl": {}}, {"sysctl": {"a": "b"}})[0]["linux"]


def test_id_mappings():
    spec, _ = build({"userns": "new",
                     "uidMappings": [{"hostID": 100000, "containerID": 0, "size": 65536}],
                     "gidMappings": [{"containerID": 0, "size": 1}]})
    assert spec["linux"]["uidMappings"] == [{"hostID": 100000, "containerID": 0,
                                             "size": 65536}]
    assert spec["linux"]["gidMappings"] == [{"hostID": 0, "containerID": 0, "size": 1}]
    assert "uidMappings" not in build({"uidMappings": []})[0]["linux"]


def test_masked_and_readonly_paths():
    spec, _ = build({"maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]})
    assert spec["linux"]["maskedPaths"] == ["/proc/kcore"]
    assert spec["linux"]["readonlyPaths"] == ["/proc/sys"]
    spec, _ = build({"maskedPaths": []}, {"maskedPaths": ["/x"], "readonlyPaths": ["/y"]})
    assert "maskedPaths" not in spec["linux"]
    assert spec["linux"]["readonlyPaths"] == ["/y"]


# ------------------------------------------------------------------------------ readonly
@pytest.mark.parametrize("yaml,label,expected", [
    ({}, None, False),
    ({"readonly": True}, None, True),
    ({}, {"readonly": True}, True),
    ({"readonly": False}, {"readonly": True}, False),
    ({"readonly": True}, {"readonly": False}, True),
])
def test_readonly_variants(yaml, label, expected):
    spec, _ = build(yaml, label)
    entry = validate_entry({"name": "t", "image": "i", **yaml}, WHERE)
    assert is_readonly(entry, label) is expected
    m = mounts_by_dest(spec)
    if expected:
        assert spec["root"] == {"path": "rootfs", "readonly": True}
        assert m["/dev"]["options"] == DEV["options"] + ["ro"]
        assert m["/sys"]["options"] == SYS["options"] + ["ro"]
    else:
        assert spec["root"] == {"path": "rootfs"}
        assert m["/dev"] == DEV
        assert m["/sys"] == SYS
    assert m["/proc"] == PROC and m["/dev/pts"] == PTS and m["/sys/fs/cgroup"] == CGROUP


# ------------------------------------------------------------------------------ runtime
def test_runtime_from_label_replaced_whole_by_yaml():
    label = {"runtime": {"mkdir": ["/a"], "bindNS": {"net": "/run/netns/x"}}}
    assert build(label=label)[1] == {"mkdir": ["/a"], "bindNS": {"net": "/run/netns/x"}}
    assert build({"runtime": {"mkdir": ["/b"]}}, label)[1] == {"mkdir": ["/b"], "bindNS": {}}
    assert build({"runtime": {}}, label)[1] == {"bindNS": {}}


def test_runtime_struct_fields():
    runtime = {"bindNS": {"uts": "/u", "cgroup": "", "net": "/n"},
               "interfaces": [{"name": "wg0", "add": "wireguard", "createInRoot": True},
                              {"peer": "veth1", "name": ""}],
               "mounts": [{"type": "tmpfs", "destination": "/run/x"},
                          {"source": "/s", "options": []}],
               "mkdir": []}
    _, rt = build({"runtime": runtime})
    assert rt == {"mounts": [{"destination": "/run/x", "type": "tmpfs"}, {"destination": "",
                                                                          "source": "/s"}],
                  "interfaces": [{"name": "wg0", "add": "wireguard", "createInRoot": True},
                                 {"peer": "veth1", "createInRoot": False}],
                  "bindNS": {"net": "/n", "uts": "/u"}}
    assert list(rt) == ["mounts", "interfaces", "bindNS"]
    assert list(rt["bindNS"]) == ["net", "uts"]


def test_append_mount_puts_mounts_first():
    _, rt = build({"runtime": {"mkdir": ["/m"]}})
    append_mount(rt, {"options": ["bind"], "source": "/s", "destination": "/d"})
    append_mount(rt, {"destination": "/e", "type": "", "options": []})
    assert list(rt) == ["mounts", "mkdir", "bindNS"]
    assert rt["mounts"] == [{"destination": "/d", "source": "/s", "options": ["bind"]},
                            {"destination": "/e"}]
    assert list(rt["mounts"][0]) == ["destination", "source", "options"]


# ------------------------------------------------------------------------------ encoding
def test_runtime_json_layout():
    assert runtime_json_bytes({}) == b'{\n    "bindNS": {}\n}'
    assert runtime_json_bytes({"mkdir": ["/a"]}) == (
        b'{\n    "mkdir": [\n        "/a"\n    ],\n    "bindNS": {}\n}')


def test_go_string_escapes():
    spec, _ = build({"env": ["A=<b>&c", "B=\u2028\u2029", "C=\b\f\x01\n\t\"\\", "D=\u00e9\u4e2d"]})
    text = config_json_bytes(spec).decode("utf-8")
    assert '"A=\\u003cb\\u003e\\u0026c"' in text
    assert '"B=\\u2028\\u2029"' in text
    assert '"C=\\u0008\\u000c\\u0001\\n\\t\\"\\\\"' in text
    assert '"D=\u00e9\u4e2d"' in text       # non-ASCII stays raw UTF-8
    assert json.loads(text)["process"]["env"][0] == "A=<b>&c"


def test_config_json_has_no_trailing_newline():
    data = config_json_bytes(build()[0])
    assert data.startswith(b'{\n    "ociVersion": "1.0.0",\n    "process": {\n        "user"')
    assert data.endswith(b"\n}")
