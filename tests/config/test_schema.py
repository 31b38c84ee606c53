"""Tests of fusebundle.config.schema: one image entry and the org.mobyproject.config label."""

from __future__ import annotations

import pytest
from ruamel.yaml import YAML

from fusebundle.config.schema import image_label, parse_label, validate_entry
from fusebundle.errors import ConfigError

W = "system.yml: services[2] (getty)"


def ok(**fields: object) -> dict:
    return validate_entry({"name": "getty", "image": "img:1", **fields}, W)


def err(raw: object, *, label: bool = False) -> str:
    with pytest.raises(ConfigError) as e:
        validate_entry(raw, W, label=label)
    msg = str(e.value)
    assert "\n" not in msg  # one line, always
    assert msg.startswith(W + ": ")
    return msg[len(W) + 2:]


def bad(**fields: object) -> str:
    return err({"name": "getty", "image": "img:1", **fields})


# ------------------------------------------------------------------------------ good input
def test_full_entry_from_ruamel_becomes_plain_data():
    text = """\
name: getty
image: linuxkit/getty:v1
capabilities: [all]
ambient: [CAP_NET_RAW]
mounts:
  - {type: cgroup, options: [rw]}
binds: ["/etc:/etc:ro"]
tmpfs: ["/tmp:size=1m"]
command: [/bin/sh]
env: [A=1]
cwd: /
net: host
pid: new
ipc: /proc/1/ns/ipc
uts: new
userns: ""
readonly: true
maskedPaths: [/proc/kcore]
readonlyPaths: [/proc/sys]
uid: getty
gid: 0
additionalGids: [1, getty]
noNewPrivileges: false
hostname: box
oomScoreAdj: -100
rootfsPropagation: shared
cgroupsPath: /x
resources:
  devices: [{allow: true, type: c, major: 1, minor: 3, access: rwm}]
  memory: {limit: 100, reservation: 1, swap: -1, kernel: 1, kernelTCP: 1, swappiness: 0,
           disableOOMKiller: true}
  cpu: {shares: 1, quota: -1, period: 1, realtimeRuntime: 1, realtimePeriod: 1, cpus: "0",
        mems: "0"}
  pids: {limit: 10}
  blockio:
    weight: 10
    leafWeight: 10
    weightDevice: [{major: 8, minor: 0, weight: 1, leafWeight: 1}]
    throttleReadBpsDevice: [{major: 8, minor: 0, rate: 1}]
    throttleWriteBpsDevice: [{major: 8, minor: 0, rate: 1}]
    throttleReadIOPSDevice: [{major: 8, minor: 0, rate: 1}]
    throttleWriteIOPSDevice: [{major: 8, minor: 0, rate: 1}]
  hugepageLimits: [{pageSize: 2097152, limit: 1}]
  network: {classID: 1, priorities: [{name: eth0, priority: 1}]}
sysctl: {net.ipv4.ip_forward: "1"}
rlimits: ["nofile,1,2"]
uidMappings: [{hostID: 1, containerID: 0, size: 1}]
gidMappings: [{hostID: 1, containerID: 0, size: 1}]
runtime:
  mounts: [{source: /a, destination: /b, type: bind, options: [bind]}]
  mkdir: [/run/x]
  interfaces: [{name: eth1, add: veth, peer: veth1, createInRoot: false}]
  bindNS: {cgroup: /a, ipc: /b, mnt: /c, net: /d, pid: /e, user: /f, uts: /g}
"""
    raw = YAML().load(text)  # round-trip: CommentedMap, CommentedSeq, ScalarInt...
    spec = validate_entry(raw, W)
    assert list(spec) == list(raw)
    assert spec["name"] == "getty"
    assert spec["oomScoreAdj"] == -100
    assert spec["resources"]["memory"]["swap"] == -1

    def plain(v: object) -> None:
        assert type(v) in (dict, list, str, int, bool), type(v)
        if isinstance(v, dict):
            for k, x in v.items():
                assert type(k) is str
                plain(x)
        elif isinstance(v, list):
            for x in v:
                plain(x)

    plain(spec)


def test_keys_keep_input_order():
    spec = validate_entry({"image": "i", "readonly": True, "name": "n", "cwd": "/"}, W)
    assert list(spec) == ["image", "readonly", "name", "cwd"]


@pytest.mark.parametrize("field,value", [
    ("uid", 0), ("uid", 4294967295), ("uid", ""), ("uid", "root"), ("uid", "other-container"),
    ("additionalGids", []), ("additionalGids", [0, "x"]),
    ("capabilities", ["NONE"]), ("capabilities", ["All"]), ("capabilities", []),
    ("capabilities", ["CAP_CHOWN", "CAP_CHOWN"]), ("ambient", ["none"]),
    ("binds", ["/a:/b:"]), ("tmpfs", ["/t"]), ("tmpfs", ["/t:"]),
    ("rlimits", ["RLIMIT_NOFILE,unlimited,Unlimited", "cpu , 0 ,18446744073709551615"]),
    ("net", "none"), ("net", ""), ("pid", "host"), ("ipc", "/run/netns/x"),
    ("sysctl", {}), ("mounts", [{"source": "mqueue"}, {"destination": "/dev"}]),
    ("resources", {"hugepageLimits": [{"pageSize": "2MB"}]}),
    ("runtime", {}), ("oomScoreAdj", -1000),
])
def test_accepted_values(field, value):
    assert ok(**{field: value})[field] == value


# ------------------------------------------------------------------------------ structure
def test_not_a_mapping():
    assert err(["name"]) == "expected a mapping, got list"
    assert err(None) == "expected a mapping, got null"


def test_required_name_and_image():
    assert err({"image": "i"}) == "missing required field 'name'"
    assert err({"name": "n"}) == "missing required field 'image'"
    assert err({"name": 3, "image": "i"}) == "field 'name': expected a string, got integer"
    assert err({"name": "n", "image": ""}).startswith("field 'image': expected an image")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/", "a\nb", "a\0b"])
def test_unsafe_names(name):
    assert err({"name": name, "image": "i"}).startswith("field 'name': ")


def test_unknown_fields():
    assert bad(comand=["x"]) == "unknown field 'comand'"
    assert bad(resources={"memory": {"limt": 1}}) == \
        "unknown field 'limt' in 'resources.memory'"
    assert bad(runtime={"bindNS": {"network": "/x"}}) == \
        "unknown field 'network' in 'runtime.bindNS'"
    assert bad(mounts=[{"dest": "/x"}]) == "unknown field 'dest' in 'mounts[0]'"
    # the reference's Go-name spellings are not the schema's
    assert bad(resources={"blockIO": {}}) == "unknown field 'blockIO' in 'resources'"
    # a key with a dot is one key, not a path
    assert bad(**{"binds.del": ["/a:/b"]}) == "unknown field 'binds.del'"
    assert bad(runtime={"cgroup": ["x"]}) == "unknown field 'cgroup' in 'runtime'"


def test_non_string_keys():
    assert bad(sysctl={1: "x"}).startswith("field 'sysctl': keys must be strings")
    assert err({"name": "n", "image": "i", True: 1}) == "keys must be strings, got boolean True"


# ------------------------------------------------------------------------------ types
@pytest.mark.parametrize("fields,expected", [
    ({"binds": ["/a:/a", 3]}, "field 'binds[1]': expected a string, got integer"),
    ({"binds": "/a:/a"}, "field 'binds': expected a list, got string"),
    ({"capabilities": None}, "field 'capabilities': expected a list, got null"),
    ({"command": [["x"]]}, "field 'command[0]': expected a string, got list"),
    ({"readonly": "yes"}, "field 'readonly': expected a boolean, got string"),
    ({"readonly": 1}, "field 'readonly': expected a boolean, got integer"),
    ({"noNewPrivileges": None}, "field 'noNewPrivileges': expected a boolean, got null"),
    ({"cwd": 1}, "field 'cwd': expected a string, got integer"),
    ({"oomScoreAdj": 1.5}, "field 'oomScoreAdj': expected an integer, got float"),
    ({"oomScoreAdj": True}, "field 'oomScoreAdj': expected an integer, got boolean"),
    ({"resources": {"cpu": {"cpus": 0}}},
     "field 'resources.cpu.cpus': expected a string, got integer"),
    ({"resources": {"memory": {"swappiness": -1}}},
     "field 'resources.memory.swappiness': expected an integer from 0 to "
     "18446744073709551615, got -1"),
    ({"resources": {"blockio": {"weight": 70000}}},
     "field 'resources.blockio.weight': expected an integer from 0 to 65535, got 70000"),
    ({"resources": {"devices": [{"allow": "yes"}]}},
     "field 'resources.devices[0].allow': expected a boolean, got string"),
    ({"uidMappings": [{"hostID": -1}]},
     "field 'uidMappings[0].hostID': expected an integer from 0 to 4294967295, got -1"),
    ({"runtime": {"interfaces": [{"createInRoot": "true"}]}},
     "field 'runtime.interfaces[0].createInRoot': expected a boolean, got string"),
    ({"runtime": {"mounts": [{"options": "ro"}]}},
     "field 'runtime.mounts[0].options': expected a list, got string"),
    ({"sysctl": [["a", "b"]]}, "field 'sysctl': expected a mapping of strings, got list"),
    ({"sysctl": {"vm.swappiness": 10}},
     "field 'sysctl.vm.swappiness': expected a string (quote numbers), got integer"),
])
def test_type_errors(fields, expected):
    assert bad(**fields) == expected


# ------------------------------------------------------------------------------ ids
@pytest.mark.parametrize("field,value,expected", [
    ("uid", True, "field 'uid': expected an integer or a container name, got boolean"),
    ("gid", 1.0, "field 'gid': expected an integer or a container name, got float"),
    ("uid", -1, "field 'uid': expected an id from 0 to 4294967295, got -1"),
    ("gid", 2**32, "field 'gid': expected an id from 0 to 4294967295, got 4294967296"),
    ("additionalGids", [1, -2], "field 'additionalGids[1]': expected an id from 0 to "
                                "4294967295, got -2"),
    ("additionalGids", [None],
     "field 'additionalGids[0]': expected an integer or a container name, got null"),
])
def test_bad_ids(field, value, expected):
    assert bad(**{field: value}) == expected


def test_anchored_true_is_not_an_integer():
    # ruamel's round-trip loader gives an anchored `true` as ScalarBoolean, an int subclass
    raw = YAML().load("name: n\nimage: i\nreadonly: &t true\nuid: *t\n")
    assert validate_entry({**raw, "uid": 0}, W)["readonly"] is True  # still a boolean
    assert err(raw) == "field 'uid': expected an integer or a container name, got boolean"


# ------------------------------------------------------------------------------ values
@pytest.mark.parametrize("fields,expected", [
    ({"capabilities": ["CAP_CHOWN", "CAP_FOO"]},
     "field 'capabilities[1]': unknown capability 'CAP_FOO'"),
    ({"capabilities": ["cap_chown"]}, "field 'capabilities[0]': unknown capability 'cap_chown'"),
    ({"capabilities": ["all", "CAP_CHOWN"]},
     "field 'capabilities[0]': unknown capability 'all' (all/none must be the only item)"),
    ({"ambient": ["SYS_ADMIN"]}, "field 'ambient[0]': unknown capability 'SYS_ADMIN'"),
    ({"binds": ["/a"]}, "field 'binds[0]': expected 'source:destination[:options]', "
                        "got '/a' (missing ':')"),
    ({"binds": ["/a:/b:ro:x"]}, "field 'binds[0]': expected 'source:destination[:options]', "
                                "got '/a:/b:ro:x' (too many ':')"),
    ({"binds": [":/b"]}, "field 'binds[0]': expected 'source:destination[:options]', "
                         "got ':/b' (empty path)"),
    ({"tmpfs": ["/t:a:b"]},
     "field 'tmpfs[0]': expected 'destination[:options]', got '/t:a:b' (too many ':')"),
    ({"tmpfs": [":size=1m"]},
     "field 'tmpfs[0]': expected 'destination[:options]', got ':size=1m' (empty destination)"),
    ({"rlimits": ["nofile,1"]}, "field 'rlimits[0]': expected 'name,soft,hard', got 'nofile,1'"),
    ({"rlimits": ["files,1,2"]}, "field 'rlimits[0]': unknown limit 'files'"),
    ({"rlimits": ["nofile,-1,2"]},
     "field 'rlimits[0]': soft limit '-1' is not a number or 'unlimited'"),
    ({"rlimits": ["nofile,1,2,3"]},
     "field 'rlimits[0]': hard limit '2,3' is not a number or 'unlimited'"),
    ({"rlimits": ["nofile,1,18446744073709551616"]},
     "field 'rlimits[0]': hard limit '18446744073709551616' is not a number or 'unlimited'"),
    ({"mounts": [{"source": "/x", "destination": "/y"}]},
     "field 'mounts[0]': mount for destination '/y' is missing 'type'"),
    ({"mounts": [{"type": "tmpfs"}]},
     "field 'mounts[0]': mount of type 'tmpfs' is missing 'destination'"),
    ({"mounts": [{"type": "bind", "source": "/x"}]},
     "field 'mounts[0]': mount of type 'bind' is missing 'destination'"),
])
def test_value_errors(fields, expected):
    assert bad(**fields) == expected


@pytest.mark.parametrize("field", ["pid", "ipc", "uts", "userns"])
def test_none_is_only_a_word_for_net(field):
    # the reference would write a namespace with path "none" for these
    assert bad(**{field: "none"}).startswith(f"field '{field}': 'none' is only a word for net")


@pytest.mark.parametrize("field", ["net", "ipc", "uts", "pid", "userns"])
def test_relative_namespace_path_is_an_unknown_word(field):
    assert "unknown namespace word 'hots'" in bad(**{field: "hots"})



# ------------------------------------------------------------------------------ labels
def test_label_must_not_set_name_or_image():
    assert err({"name": "x"}, label=True) == "must not set 'name'"
    assert err({"image": "x"}, label=True) == "must not set 'image'"
    assert validate_entry({"readonly": True}, W, label=True) == {"readonly": True}
    assert validate_entry({}, W, label=True) == {}


def test_parse_label_json_and_yaml():
    text = '{"readonly":true,"capabilities":["CAP_SETUID"],"net":"new",' \
           '"runtime":{"mkdir":["/run/x"],"bindNS":{"net":"/run/netns/x"}}}'
    assert parse_label(text, W) == {"readonly": True, "capabilities": ["CAP_SETUID"],
                                    "net": "new", "runtime": {"mkdir": ["/run/x"],
                                                              "bindNS": {"net": "/run/netns/x"}}}
    assert parse_label("binds:\n  - /a:/a\nuid: 5\n", W) == {"binds": ["/a:/a"], "uid": 5}


def test_parse_label_is_yaml_1_2():
    # in YAML 1.1 `yes` is true; in 1.2 it is a string, so this is not a boolean
    with pytest.raises(ConfigError, match="field 'readonly': expected a boolean, got string"):
        parse_label("readonly: yes", W)


@pytest.mark.parametrize("text", ['{"readonly": true', "a: [1\nb: 2", "key: 'x", "\t- x"])
def test_parse_label_invalid_yaml(text):
    with pytest.raises(ConfigError) as e:
        parse_label(text, W)
    assert str(e.value).startswith(f"{W}: label is not valid YAML: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,kind", [('["readonly"]', "list"), ("just text", "string"),
                                       ("  ", "null")])
def test_parse_label_not_a_mapping(text, kind):
    with pytest.raises(ConfigError) as e:
        parse_label(text, W)
    assert str(e.value) == f"{W}: label is not a mapping (got {kind})"


def test_parse_label_rejects_name_and_bad_fields():
    with pytest.raises(ConfigError, match="must not set 'name'"):
        parse_label('{"name": "x"}', W)
    with pytest.raises(ConfigError, match="unknown capability 'CAP_X'"):
        parse_label('{"capabilities": ["CAP_X"]}', W)
    with pytest.raises(ConfigError, match="unknown field 'comand'"):
        parse_label("comand: [x]", W)


def test_image_label():
    assert image_label({"Labels": None}, W) is None
    assert image_label({"Labels": {"org.mobyproject.config": ""}}, W) is None
    assert image_label({}, W) is None
    got = image_label({"Labels": {"org.mobyproject.config": '{"net": "host"}'}}, W)
    assert got == {"net": "host"}
