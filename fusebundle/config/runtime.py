"""The OCI config.json and runtime.json of a bundle, as the reference's ConfigInspectToOCI.

Dicts are built in the field order of the Go structs the reference marshals (runtime-spec
specs-go as vendored at linuxkit cfa5d273b7), leaving out what their `omitempty` tags leave
out, and are serialised byte for byte like Go's json.MarshalIndent.  The keys today's LinuxKit
added are written as its ConfigToOCI writes them, and only where a config uses them, so a
2017 config gives 2017's bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fusebundle.config.load import Volume
from fusebundle.config.schema import (
    ALL_CAPS,
    BIND_ADD_DEFAULTS,
    BIND_DEFAULTS,
    expand_caps,
    parse_bind,
    parse_device_mode,
    parse_rlimit,
    parse_tmpfs,
    resolve_mount,
)
from fusebundle.errors import ConfigError

OCI_VERSION = "1.0.0"

# Docker's defaults, as the reference writes them; readonly adds "ro" to /dev and /sys.
_PROC_OPTS = ["nosuid", "nodev", "noexec", "relatime"]
_DEV_OPTS = ["nosuid", "strictatime", "mode=755", "size=65536k"]
_PTS_OPTS = ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]
_SYS_OPTS = ["nosuid", "noexec", "nodev"]
_CGROUP_OPTS = ["nosuid", "noexec", "nodev", "relatime", "ro"]

_BIND_NS_KEYS = ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")


# ------------------------------------------------------------------------------ precedence
def _pick(entry: dict, label: dict | None, key: str, default: Any = None) -> Any:
    """A pointer field: yaml if set (even to an empty value), else the label's, else default."""
    if key in entry:
        return entry[key]
    if label is not None and key in label:
        return label[key]
    return default


def _pick_nonempty(entry: dict, label: dict | None, key: str, default: str) -> str:
    """A plain string field: an empty string counts as unset (assignStringEmpty)."""
    return entry.get(key) or (label or {}).get(key) or default


def _with_added(entry: dict, label: dict | None, key: str) -> list[tuple[Any, str, int]]:
    """A list with today's `KEY.add`: the yaml's KEY replaces; else the label's KEY, then the
    label's and the yaml's KEY.add, each item once.  Items come as (item, the key it came
    from, its position there if it came from the yaml, else -1)."""
    add = key + ".add"
    if key in entry:
        return [(x, key, i) for i, x in enumerate(entry[key])]
    lbl = label or {}
    out: list[tuple[Any, str, int]] = [(x, key, -1) for x in lbl.get(key, [])]  # as 2017
    for src, yaml in ((lbl, False), (entry, True)):
        for i, x in enumerate(src.get(add, [])):
            if all(x != y for y, _, _ in out):  # LinuxKit's mergeStrings means to merge uniquely
                out.append((x, add, i if yaml else -1))
    return out


def is_readonly(entry: dict, label: dict | None) -> bool:
    """Whether the bundle's root is read-only (yaml `readonly` > label's > false)."""
    return bool(_pick(entry, label, "readonly", False))


# ------------------------------------------------------------------------------ structures
def mount_struct(m: dict[str, Any]) -> dict[str, Any]:
    """A specs.Mount: destination always, type/source/options only when non-empty, and
    today's id mappings (an idmapped mount) when given."""
    out: dict[str, Any] = {"destination": m.get("destination", "")}
    for key in ("type", "source", "options"):
        if m.get(key):
            out[key] = list(m[key]) if key == "options" else m[key]
    for key in ("uidMappings", "gidMappings"):
        maps = m.get(key) or m.get(key.lower())
        if maps:
            # today's runtime-spec orders LinuxIDMapping containerID, hostID, size
            out[key] = [{"containerID": x.get("containerID", 0), "hostID": x.get("hostID", 0),
                         "size": x.get("size", 0)} for x in maps]
    return out


def _go_clean(path: str) -> str:
    """Go's filepath.Clean (posixpath.normpath differs: it keeps a leading '//')."""
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and parts and parts[-1] != "..":
            parts.pop()
        elif part != ".." or not rooted:
            parts.append(part)
    body = "/".join(parts)
    return "/" + body if rooted else body or "."


def _depth(path: str) -> int:
    """The reference's mount sort key: the number of '/' in the cleaned destination."""
    return _go_clean(path).count("/")


def _volume_source(src: str, volumes: Mapping[str, Volume], read_only: bool, where: str,
                   field: str) -> str:
    """A bind's source that names one of today's volumes becomes the volume's merged dir."""
    vol = volumes.get(src)
    if vol is None:
        raise ConfigError(f"{where}: field {field!r}: {src!r} is not an absolute path nor a "
                          "volume of this config")
    if vol.readonly and not read_only:
        raise ConfigError(f"{where}: field {field!r}: volume {src!r} is read-only; bind it "
                          "with ':ro'")
    return vol.merged


def _bind(text: str, key: str, from_yaml: bool, volumes: Mapping[str, Volume] | None,
          where: str, field: str) -> dict:
    m = _checked(lambda t: parse_bind(t, BIND_ADD_DEFAULTS if key == "binds.add"
                                      else BIND_DEFAULTS), text, where, field)
    # as in LinuxKit, only the yaml's binds name volumes; a config without volumes keeps
    # 2017's rule that any source is a path
    if from_yaml and volumes and not m["source"].startswith("/"):
        parts = text.split(":")
        ro = len(parts) == 3 and parts[2] == "ro"
        m["source"] = _volume_source(m["source"], volumes, ro, where, field)
    return m


def _mount_volume(m: dict, volumes: Mapping[str, Volume] | None, where: str,
                  field: str) -> dict:
    if not volumes or m.get("type") != "bind" or m.get("source", "").startswith("/"):
        return m
    ro = next((o == "ro" for o in m.get("options") or [] if o in ("ro", "rw")), False)
    return {**m, "source": _volume_source(m.get("source", ""), volumes, ro, where, field)}


def _mounts(entry: dict, label: dict | None, readonly: bool, where: str,
            volumes: Mapping[str, Volume] | None = None) -> list[dict]:
    ro = ["ro"] if readonly else []
    # keyed by destination: a later mount at the same path replaces an earlier one
    table: dict[str, dict] = {
        "/proc": {"destination": "/proc", "type": "proc", "source": "proc",
                  "options": _PROC_OPTS},
        "/dev": {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": _DEV_OPTS + ro},
        "/dev/pts": {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                     "options": _PTS_OPTS},
        "/sys": {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": _SYS_OPTS + ro},
        "/sys/fs/cgroup": {"destination": "/sys/fs/cgroup", "type": "cgroup",
                           "source": "cgroup", "options": _CGROUP_OPTS},
    }
    for i, item in enumerate(_pick(entry, label, "tmpfs", [])):
        m = _checked(parse_tmpfs, item, where, f"tmpfs[{i}]")
        table[m["destination"]] = m
    for item, key, pos in _with_added(entry, label, "binds"):
        m = _bind(item, key, pos >= 0, volumes, where, f"{key}[{pos}]")
        table[m["destination"]] = m
    from_yaml = "mounts" in entry
    for i, item in enumerate(_pick(entry, label, "mounts", [])):
        if from_yaml:
            item = _mount_volume(item, volumes, where, f"mounts[{i}]")
        m = _checked(resolve_mount, item, where, f"mounts[{i}]")
        table[m["destination"]] = m
    # the reference sorts by depth with an unstable sort; ties are broken by path here
    ordered = sorted(table.values(),
                     key=lambda m: (_depth(m["destination"]), m["destination"]))
    return [mount_struct(m) for m in ordered]


def _checked(parse: Any, item: Any, where: str, field: str) -> Any:
    try:
        return parse(item)
    except ValueError as e:
        raise ConfigError(f"{where}: field {field!r}: {e}") from None


def _namespaces(entry: dict, label: dict | None) -> list[dict]:
    out: list[dict] = []

    def add(kind: str, value: str, new_words: tuple[str, ...]) -> None:
        if value in ("host", "root"):
            return
        path = "" if value in new_words else value
        out.append({"type": kind, "path": path} if path else {"type": kind})

    # net, ipc, uts, user default to the host's; pid defaults to a new one
    add("network", _pick_nonempty(entry, label, "net", "root"), ("none", "new"))
    add("ipc", _pick_nonempty(entry, label, "ipc", "root"), ("new",))
    add("uts", _pick_nonempty(entry, label, "uts", "root"), ("new",))
    add("pid", _pick_nonempty(entry, label, "pid", ""), ("new",))
    add("user", _pick_nonempty(entry, label, "userns", "root"), ("new",))
    out.append({"type": "mount"})
    return out


def _capabilities(entry: dict, label: dict | None, where: str) -> dict[str, list[str]]:
    caps = expand_caps([c for c, _, _ in _with_added(entry, label, "capabilities")])
    for name in caps:
        if name not in ALL_CAPS:  # 'all' or 'none' from one side, names from the other
            raise ConfigError(f"{where}: field 'capabilities.add': cannot add to {name!r}; "
                              "list the capabilities instead")
    ambient = expand_caps(_pick(entry, label, "ambient", []))
    # the reference builds these three from a Go map (random order): sorted here
    bounding = sorted(set(caps) | set(ambient))
    sets = {"bounding": bounding, "effective": caps, "inheritable": bounding,
            "permitted": bounding, "ambient": ambient}
    return {k: list(v) for k, v in sets.items() if v}


def id_numeric(value: Any, id_map: dict[str, int], where: str, field: str,
               from_label: bool = False) -> int:
    """idNumeric: a number as is, '' or 'root' is 0, any other string a container's id."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= 2**32 - 1:
            raise ConfigError(f"{where}: {field}: {value} is not a valid id")
        return value
    if isinstance(value, str):
        if value in ("", "root"):
            return 0
        if value in id_map:
            return id_map[value]
        source = " (set by the image's label)" if from_label else ""
        raise ConfigError(f"{where}: {field}: unknown container name {value!r}{source}")
    raise ConfigError(f"{where}: {field}: expected an integer or a container name")


def _user(entry: dict, label: dict | None, id_map: dict[str, int], where: str) -> dict:
    user: dict[str, Any] = {}
    for key in ("uid", "gid"):
        user[key] = id_numeric(_pick(entry, label, key, 0), id_map, where, key,
                                key not in entry)
    gids = _pick(entry, label, "additionalGids", [])
    from_label = "additionalGids" not in entry
    groups = [id_numeric(g, id_map, where, f"additionalGids[{i}]", from_label)
              for i, g in enumerate(gids)]
    if groups:
        user["additionalGids"] = groups
    return user


def _args(entry: dict, label: dict | None, image_config: dict) -> list[str] | None:
    given = _pick(entry, label, "command")
    if given is not None:
        return list(given)
    entrypoint, cmd = image_config.get("Entrypoint"), image_config.get("Cmd")
    if entrypoint is None and not cmd:
        return None  # Go's append(nil, nil...) stays nil: written as "args": null
    return [*(entrypoint or []), *(cmd or [])]


def _process(entry: dict, label: dict | None, image_config: dict, id_map: dict[str, int],
             where: str) -> dict:
    process: dict[str, Any] = {"user": _user(entry, label, id_map, where),
                               "args": _args(entry, label, image_config)}
    env = _pick(entry, label, "env", image_config.get("Env"))
    if env:
        process["env"] = list(env)
    process["cwd"] = _pick_nonempty(entry, label, "cwd", image_config.get("WorkingDir") or "/")
    process["capabilities"] = _capabilities(entry, label, where)
    rlimits = [_checked(parse_rlimit, r, where, f"rlimits[{i}]")
               for i, r in enumerate(_pick(entry, label, "rlimits", []))]
    if rlimits:
        process["rlimits"] = rlimits
    if _pick(entry, label, "noNewPrivileges", False):
        process["noNewPrivileges"] = True
    oom = _pick(entry, label, "oomScoreAdj")
    if oom is not None:
        process["oomScoreAdj"] = oom  # a pointer: 0 is written when it is set
    return process


# ------------------------------------------------------------------------------ resources
def _present(src: dict, keys: tuple[str, ...]) -> dict:
    """Pointer fields with omitempty: those given appear (even 0/false), the others don't."""
    return {k: src[k] for k in keys if k in src}


def _nonempty(src: dict, keys: tuple[str, ...]) -> dict:
    """Plain fields with omitempty: only non-empty values appear."""
    return {k: src[k] for k in keys if src.get(k)}


def _throttle(d: dict) -> dict:
    return {"major": d.get("major", 0), "minor": d.get("minor", 0), "rate": d.get("rate", 0)}


def _weight_device(d: dict) -> dict:
    return {"major": d.get("major", 0), "minor": d.get("minor", 0),
            **_present(d, ("weight", "leafWeight"))}


def _device(d: dict) -> dict:
    out: dict[str, Any] = {"allow": d.get("allow", False), **_nonempty(d, ("type",))}
    out.update(_present(d, ("major", "minor")))
    out.update(_nonempty(d, ("access",)))
    return out


def _blockio(b: dict) -> dict:
    out = _present(b, ("weight", "leafWeight"))
    if b.get("weightDevice"):
        out["weightDevice"] = [_weight_device(d) for d in b["weightDevice"]]
    for key in ("throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice",
                "throttleWriteIOPSDevice"):
        if b.get(key):
            out[key] = [_throttle(d) for d in b[key]]
    return out


def _network(n: dict) -> dict:
    out = _present(n, ("classID",))
    if n.get("priorities"):
        out["priorities"] = [{"name": p.get("name", ""), "priority": p.get("priority", 0)}
                             for p in n["priorities"]]
    return out


def linux_resources(r: dict) -> dict:
    """specs.LinuxResources from the schema's keys (note blockio -> blockIO)."""
    out: dict[str, Any] = {}
    if r.get("devices"):
        out["devices"] = [_device(d) for d in r["devices"]]
    if "memory" in r:
        out["memory"] = _present(r["memory"], ("limit", "reservation", "swap", "kernel",
                                               "kernelTCP", "swappiness", "disableOOMKiller"))
    if "cpu" in r:
        cpu = r["cpu"]
        out["cpu"] = {**_present(cpu, ("shares", "quota", "period", "realtimeRuntime",
                                       "realtimePeriod")), **_nonempty(cpu, ("cpus", "mems"))}
    if "pids" in r:
        out["pids"] = {"limit": r["pids"].get("limit", 0)}
    if "blockio" in r:
        out["blockIO"] = _blockio(r["blockio"])
    if r.get("hugepageLimits"):
        out["hugepageLimits"] = [{"pageSize": str(h.get("pageSize", "")),
                                  "limit": h.get("limit", 0)} for h in r["hugepageLimits"]]
    if "network" in r:
        out["network"] = _network(r["network"])
    return out


def id_mappings(maps: list[dict]) -> list[dict]:
    """specs.LinuxIDMapping list (uidMappings, gidMappings) from the schema's keys."""
    return [{"hostID": m.get("hostID", 0), "containerID": m.get("containerID", 0),
             "size": m.get("size", 0)} for m in maps]


def _devices(entry: dict, label: dict | None, where: str) -> tuple[list[dict], list[dict]]:
    """Today's `devices`: (linux.devices, the device cgroup rules they need), as LinuxKit."""
    devices, rules = [], []
    for i, d in enumerate(_pick(entry, label, "devices", [])):
        tp = d.get("type", "")
        if d.get("path") == "all":
            rules.append({"allow": True, "type": tp, "access": "rwm"})
            continue
        mode = _checked(parse_device_mode, d.get("mode", ""), where, f"devices[{i}]")
        major, minor = d.get("major", 0), d.get("minor", 0)
        devices.append({"path": d.get("path", ""), "type": tp, "major": major, "minor": minor,
                        "fileMode": mode & 0xFFFFFFFF})  # an os.FileMode is a uint32
        rules.append({"allow": True, "type": tp, "major": major, "minor": minor,
                      "access": "rwm"})
    return devices, rules


def _linux(entry: dict, label: dict | None, where: str) -> dict:
    linux: dict[str, Any] = {}
    for key in ("uidMappings", "gidMappings"):
        maps = id_mappings(_pick(entry, label, key, []))
        if maps:
            linux[key] = maps
    sysctl = _pick(entry, label, "sysctl", {})
    if sysctl:
        linux["sysctl"] = {k: sysctl[k] for k in sorted(sysctl)}  # Go sorts map keys
    resources = _pick(entry, label, "resources", {})
    devices, rules = _devices(entry, label, where)
    if rules:
        resources = {**resources, "devices": [*resources.get("devices", []), *rules]}
    linux["resources"] = linux_resources(resources)
    if _pick(entry, label, "cgroupsPath"):
        linux["cgroupsPath"] = _pick(entry, label, "cgroupsPath")
    linux["namespaces"] = _namespaces(entry, label)
    if devices:
        linux["devices"] = devices
    if _pick(entry, label, "rootfsPropagation"):
        linux["rootfsPropagation"] = _pick(entry, label, "rootfsPropagation")
    for key in ("maskedPaths", "readonlyPaths"):
        paths = _pick(entry, label, key, [])
        if paths:
            linux[key] = list(paths)
    return linux


# -------------------------------------------------------------------------------- runtime
def runtime_struct(runtime: dict | None) -> dict:
    """The reference's Runtime struct: mounts, mkdir, interfaces (omitempty), bindNS always."""
    rt = runtime or {}
    out: dict[str, Any] = {}
    if "cgroups" in rt:  # today's key, a pointer: written whenever it is given
        out["cgroups"] = list(rt["cgroups"])
    if rt.get("mounts"):
        out["mounts"] = [mount_struct(m) for m in rt["mounts"]]
    if rt.get("mkdir"):
        out["mkdir"] = list(rt["mkdir"])
    if rt.get("interfaces"):
        out["interfaces"] = [{**_nonempty(i, ("name", "add", "peer")),
                              "createInRoot": bool(i.get("createInRoot", False))}
                             for i in rt["interfaces"]]
    # Go's omitempty never omits a struct: bindNS is always written
    out["bindNS"] = _nonempty(rt.get("bindNS") or {}, _BIND_NS_KEYS)
    if "namespace" in rt:  # today's key, as cgroups
        out["namespace"] = rt["namespace"]
    return out


def _runtime(entry: dict, label: dict | None) -> dict | None:
    """2017's runtime: the yaml's replaces the label's whole; today's cgroups and namespace
    are taken key by key (yaml > label), as today's assignRuntime does."""
    rt = _pick(entry, label, "runtime")
    for key in ("cgroups", "namespace"):
        for src in (entry.get("runtime"), (label or {}).get("runtime")):
            if src and key in src:
                if rt is None or key not in rt:
                    rt = {**(rt or {}), key: src[key]}
                break
    return rt


def append_mount(runtime: dict, mount: dict) -> None:
    """Append a specs.Mount to runtime["mounts"], creating the list (first key) if absent."""
    mounts = runtime.pop("mounts", [])
    mounts.append(mount_struct(mount))
    rest = dict(runtime)
    runtime.clear()
    runtime["mounts"] = mounts
    runtime.update(rest)


# --------------------------------------------------------------------------------- public
def build_oci(entry: dict, label: dict | None, image_config: dict, id_map: dict[str, int],
              where: str, volumes: Mapping[str, Volume] | None = None) -> tuple[dict, dict]:
    """Return (config.json object, runtime object) as the reference writes them.

    `volumes` (today's top-level volumes, by name) resolve binds whose source names one."""
    image_config = image_config or {}
    readonly = is_readonly(entry, label)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": _process(entry, label, image_config, id_map, where),
        "root": {"path": "rootfs", "readonly": True} if readonly else {"path": "rootfs"},
    }
    hostname = _pick_nonempty(entry, label, "hostname", "")
    if hostname:
        spec["hostname"] = hostname
    spec["mounts"] = _mounts(entry, label, readonly, where, volumes)
    annotations = _pick(entry, label, "annotations", {})
    if annotations:
        spec["annotations"] = {k: annotations[k] for k in sorted(annotations)}  # a Go map
    spec["linux"] = _linux(entry, label, where)
    return spec, runtime_struct(_runtime(entry, label))


# Go's encoding/json escapes these besides '"', '\\' and control characters (HTML safety).
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
            "\u2028": "\\u2028", "\u2029": "\\u2029"}
_NEEDS_ESCAPE = re.compile('["\\\\<>&\u2028\u2029\x00-\x1f\ud800-\udfff]')


def _escape(m: re.Match) -> str:
    c = m.group()
    if c in _ESCAPES:
        return _ESCAPES[c]
    if c >= "\ud800":
        return "\ufffd"  # a lone surrogate is invalid UTF-8: Go writes U+FFFD
    return f"\\u{ord(c):04x}"  # Go 1.19 writes \b and \f this way too


def _encode(v: Any, indent: str, depth: int, out: list[str]) -> None:
    if isinstance(v, dict) and v:
        inner = "\n" + indent * (depth + 1)
        out.append("{")
        for i, (k, x) in enumerate(v.items()):
            out.append(("," if i else "") + inner + '"' + _NEEDS_ESCAPE.sub(_escape, k) + '": ')
            _encode(x, indent, depth + 1, out)
        out.append("\n" + indent * depth + "}")
    elif isinstance(v, list) and v:
        inner = "\n" + indent * (depth + 1)
        out.append("[")
        for i, x in enumerate(v):
            out.append(("," if i else "") + inner)
            _encode(x, indent, depth + 1, out)
        out.append("\n" + indent * depth + "]")
    elif isinstance(v, dict):
        out.append("{}")
    elif isinstance(v, list):
        out.append("[]")
    elif isinstance(v, str):
        out.append('"' + _NEEDS_ESCAPE.sub(_escape, v) + '"')
    elif v is None:
        out.append("null")
    elif isinstance(v, bool):
        out.append("true" if v else "false")
    elif isinstance(v, int):
        out.append(str(v))
    else:
        raise TypeError(f"cannot encode {type(v).__name__} as Go JSON")


def go_json(v: Any, indent: str) -> bytes:
    """Bytes of Go's json.MarshalIndent(v, "", indent) for JSON-like Python values."""
    out: list[str] = []
    _encode(v, indent, 0, out)
    return "".join(out).encode("utf-8")


def config_json_bytes(spec: dict) -> bytes:
    """config.json as the reference writes it: MarshalIndent(oci, "", "    ")."""
    return go_json(spec, "    ")


def runtime_json_bytes(runtime: dict) -> bytes:
    """runtime.json: MarshalIndent(runtime, "", "    ") (4 spaces, as image.go and goldens)."""
    return go_json(runtime_struct(runtime), "    ")
