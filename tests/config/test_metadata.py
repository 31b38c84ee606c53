"""Tests of fusebundle.config.metadata: `metadata: yaml` files, byte for byte as the reference.

The expected texts are derived by hand from the Go rules: json.MarshalIndent(m, "", "    ") of
moby's Moby struct (config.go at linuxkit cfa5d273b7) after yaml.v2 decoded the config files.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from fusebundle.bundle.view import file_entries
from fusebundle.config.load import Config, FileSpec, load_config
from fusebundle.config.metadata import moby_json


def _load(tmp_path: Path, *docs: str) -> Config:
    paths = []
    for i, doc in enumerate(docs):
        p = tmp_path / f"c{i}.yml"
        p.write_text(textwrap.dedent(doc))
        paths.append(str(p))
    return load_config(paths)


def _expect(text: str) -> bytes:
    # MarshalIndent writes no final newline
    return textwrap.dedent(text).strip("\n").encode()


ONBOOT_ONLY = """\
    onboot:
      - name: sysctl
        image: linuxkit/sysctl:abc
        readonly: true
        uid: 0
    files:
      - path: /etc/linuxkit-config
        metadata: yaml
      - path: etc/motd
        contents: "hi <you> & me\\n"
        uid: 100
        gid: root
        mode: "0644"
"""


def test_onboot_only(tmp_path: Path) -> None:
    got = moby_json(_load(tmp_path, ONBOOT_ONLY))
    assert got == _expect(r"""
        {
            "kernel": {
                "image": ""
            },
            "init": null,
            "onboot": [
                {
                    "name": "sysctl",
                    "image": "linuxkit/sysctl:abc",
                    "readonly": true,
                    "uid": 0
                }
            ],
            "onshutdown": null,
            "services": null,
            "trust": {},
            "files": [
                {
                    "path": "/etc/linuxkit-config",
                    "directory": false,
                    "metadata": "yaml",
                    "optional": false
                },
                {
                    "path": "etc/motd",
                    "directory": false,
                    "contents": "hi \u003cyou\u003e \u0026 me\n",
                    "optional": false,
                    "mode": "0644",
                    "uid": 100,
                    "gid": "root"
                }
            ]
        }
    """)


FIRST = """\
    kernel:
      image: linuxkit/kernel:4.9
      cmdline: console=tty0
    init:
      - linuxkit/init:1
    services:
      - runtime:
          mkdir: [/var/run]
        sysctl:
          net.b: "2"
          net.a: "1"
        uidMappings:
          - hostID: 1000
            containerID: 0
            size: 1
        resources:
          memory:
            limit: 100
            kernelTCP: 5
          hugepageLimits:
            - pageSize: 2MB
              limit: 1
          blockio: {leafWeight: 3}
        rlimits: ["nofile,100,200"]
        cwd: ""
        net: host
        capabilities: []
        mounts:
          - type: cgroup
            options: []
        additionalGids: [1, getty]
        oomScoreAdj: 0
        cgroupsPath: ""
        noNewPrivileges: false
        name: getty
        image: linuxkit/getty:x
        command: [/bin/sh, -c, "a && b"]
    trust:
      org: [linuxkit]
"""
SECOND = """\
    kernel:
      tar: ""
    onshutdown:
      - name: down
        image: busybox
        runtime: {}
    trust:
      image: [busybox]
    files:
      - path: //x/./y/
        directory: true
        optional: true
        gid: 0
      - path: /meta
        metadata: yaml
"""


def test_merged_configs_in_struct_order(tmp_path: Path) -> None:
    # Fields follow the Go struct, not the YAML; pointers appear when given (even empty or 0),
    # plain strings only when non-empty; camelCase keys of the runtime-spec structs are kept
    # (the reference's yaml.v2 dropped them: it only read lowercased field names).
    got = moby_json(_load(tmp_path, FIRST, SECOND))
    assert got == _expect(r"""
        {
            "kernel": {
                "image": "linuxkit/kernel:4.9",
                "cmdline": "console=tty0",
                "tar": ""
            },
            "init": [
                "linuxkit/init:1"
            ],
            "onboot": null,
            "onshutdown": [
                {
                    "name": "down",
                    "image": "busybox",
                    "runtime": {
                        "bindNS": {}
                    }
                }
            ],
            "services": [
                {
                    "name": "getty",
                    "image": "linuxkit/getty:x",
                    "capabilities": [],
                    "mounts": [
                        {
                            "destination": "",
                            "type": "cgroup"
                        }
                    ],
                    "command": [
                        "/bin/sh",
                        "-c",
                        "a \u0026\u0026 b"
                    ],
                    "net": "host",
                    "additionalGids": [
                        1,
                        "getty"
                    ],
                    "noNewPrivileges": false,
                    "oomScoreAdj": 0,
                    "cgroupsPath": "",
                    "resources": {
                        "memory": {
                            "limit": 100,
                            "kernelTCP": 5
                        },
                        "blockIO": {
                            "leafWeight": 3
                        },
                        "hugepageLimits": [
                            {
                                "pageSize": "2MB",
                                "limit": 1
                            }
                        ]
                    },
                    "sysctl": {
                        "net.a": "1",
                        "net.b": "2"
                    },
                    "rlimits": [
                        "nofile,100,200"
                    ],
                    "uidMappings": [
                        {
                            "hostID": 1000,
                            "containerID": 0,
                            "size": 1
                        }
                    ],
                    "runtime": {
                        "mkdir": [
                            "/var/run"
                        ],
                        "bindNS": {}
                    }
                }
            ],
            "trust": {
                "image": [
                    "busybox"
                ],
                "org": [
                    "linuxkit"
                ]
            },
            "files": [
                {
                    "path": "//x/./y/",
                    "directory": true,
                    "optional": true,
                    "gid": 0
                },
                {
                    "path": "/meta",
                    "directory": false,
                    "metadata": "yaml",
                    "optional": false
                }
            ]
        }
    """)


def test_empty_sections_are_null(tmp_path: Path) -> None:
    # AppendConfig starts from a zero Moby: append(nil, empty...) stays nil, so `init: []` is
    # null and an empty trust list is left out; an empty `contents` is a non-nil *string.
    cfg = _load(tmp_path, """\
        init: []
        onboot: []
        services:
        trust:
          image: []
        files:
          - path: empty
            contents: ""
    """)
    assert moby_json(cfg) == _expect("""
        {
            "kernel": {
                "image": ""
            },
            "init": null,
            "onboot": null,
            "onshutdown": null,
            "services": null,
            "trust": {},
            "files": [
                {
                    "path": "empty",
                    "directory": false,
                    "contents": "",
                    "optional": false
                }
            ]
        }
    """)


def test_no_files_is_null_and_output_is_json() -> None:
    got = moby_json(Config())
    assert json.loads(got) == {"kernel": {"image": ""}, "init": None, "onboot": None,
                               "onshutdown": None, "services": None, "trust": {},
                               "files": None}
    assert not got.endswith(b"\n")


def test_path_without_a_config_where_falls_back_to_the_normalised_path() -> None:
    cfg = Config(files=[FileSpec(spec={"path": "a/b", "metadata": "yaml"}, where="x")])
    assert b'"path": "a/b",' in moby_json(cfg)


def test_file_entries_writes_the_metadata(tmp_path: Path) -> None:
    cfg = _load(tmp_path, ONBOOT_ONLY)
    added: set[str] = set()
    out = file_entries(cfg.files[0], cfg.id_map(), added, cfg)
    assert [(e.path, e.type, e.mode) for e in out] == [(b"etc", "d", 0o700),
                                                       (b"etc/linuxkit-config", "f", 0o600)]
    assert out[1].body == moby_json(cfg)
    assert out[1].size == len(moby_json(cfg))
