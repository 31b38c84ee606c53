"""Validation of one image entry (onboot/onshutdown/services item or image label).

Follows the "image" definition of the reference's JSON schema (moby at linuxkit cfa5d273b7)
and what today's LinuxKit schema adds to it (capabilities.add, binds.add, devices, annotations,
runtime cgroups and namespace, id mappings on mounts): every object rejects unknown keys, and
every value has the schema's type.  Values that the
reference only checks while building the OCI spec (capability names, binds, tmpfs, rlimits,
mounts, ids) are checked here too, so that errors come early and name the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from fusebundle.config import yamlload
from fusebundle.errors import ConfigError

LABEL_KEY = "org.mobyproject.config"

# The reference's allCaps, in its order ("all" expands to this list in this order).
ALL_CAPS: tuple[str, ...] = (
    "CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_AUDIT_WRITE", "CAP_BLOCK_SUSPEND", "CAP_CHOWN",
    "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_KILL", "CAP_LEASE", "CAP_LINUX_IMMUTABLE", "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE", "CAP_MKNOD", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
    "CAP_SETUID", "CAP_SYSLOG", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE", "CAP_SYS_NICE", "CAP_SYS_PACCT", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_WAKE_ALARM",
)

RLIMITS = frozenset({
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
    "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
    "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
})
UNLIMITED = 2**64 - 1

# Mount types whose source name doubles as the type, and their default mount points.
IMPLIED_TYPES = ("mqueue", "devpts", "proc", "sysfs", "cgroup")
DEFAULT_MOUNTPOINTS = {
    "proc": "/proc", "devpts": "/dev/pts", "sysfs": "/sys", "cgroup": "/sys/fs/cgroup",
    "mqueue": "/dev/mqueue",
}

# What Go's strings.TrimSpace removes (Python's str.strip() also removes \x1c-\x1f).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"
_DIGITS = re.compile(r"[0-9]+")

Checker = Callable[[Any, str], Any]


class _Invalid(Exception):
    """A problem at a field path; `problem` None means the field `key` of `path` is unknown."""

    def __init__(self, path: str, problem: str | None, key: str = "") -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem
        self.key = key


# ------------------------------------------------------------------------- scalar checkers
def _kind(v: object) -> str:
    """The YAML name of a value's type, for messages."""
    if v is None:
        return "null"
    if yamlload.is_bool(v):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "mapping"
    if isinstance(v, list):
        return "list"
    return type(v).__name__


def _is_int(v: object) -> bool:
    # YAML true is not an integer (Python's bool and ruamel's anchored ScalarBoolean are ints)
    return isinstance(v, int) and not yamlload.is_bool(v)


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise _Invalid(path, f"expected a string, got {_kind(v)}")
    return str(v)


def _bool(v: Any, path: str) -> bool:
    # ruamel's round-trip loader gives an anchored `true` as ScalarBoolean (an int subclass)
    if not yamlload.is_bool(v):
        raise _Invalid(path, f"expected a boolean, got {_kind(v)}")
    return bool(v)


def _int_range(lo: int, hi: int) -> Checker:
    """An integer checker for a Go integer type (the reference fails to decode others)."""

    def check(v: Any, path: str) -> int:
        if not _is_int(v):
            raise _Invalid(path, f"expected an integer, got {_kind(v)}")
        if not lo <= v <= hi:
            raise _Invalid(path, f"expected an integer from {lo} to {hi}, got {int(v)}")
        return int(v)

    return check


_INT64 = _int_range(-(2**63), 2**63 - 1)
_UINT64 = _int_range(0, 2**64 - 1)
_UINT32 = _int_range(0, 2**32 - 1)
_UINT16 = _int_range(0, 2**16 - 1)


def _id(v: Any, path: str) -> int | str:
    """uid/gid: a number for uint32, or a string (a container name, '' or 'root')."""
    if isinstance(v, str):
        return str(v)
    if not _is_int(v):
        raise _Invalid(path, f"expected an integer or a container name, got {_kind(v)}")
    if not 0 <= v <= 2**32 - 1:
        raise _Invalid(path, f"expected an id from 0 to 4294967295, got {int(v)}")
    return int(v)


def _page_size(v: Any, path: str) -> int | str:
    # the schema says integer, the Go type is a string ("2MB"): accept both
    return _str(v, path) if isinstance(v, str) else _UINT64(v, path)


# ---------------------------------------------------------------------- composite checkers
def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _list(item: Checker) -> Checker:
    def check(v: Any, path: str) -> list:
        if not isinstance(v, list):
            raise _Invalid(path, f"expected a list, got {_kind(v)}")
        return [item(x, f"{path}[{i}]") for i, x in enumerate(v)]

    return check


def _members(v: Any, path: str, what: str) -> Iterator[tuple[str, str, Any]]:
    """(key, path of the member, value) of a mapping whose keys must be strings."""
    if not isinstance(v, dict):
        raise _Invalid(path, f"expected {what}, got {_kind(v)}")
    for key, value in v.items():
        if not isinstance(key, str):
            raise _Invalid(path, f"keys must be strings, got {_kind(key)} {key!r}")
        yield str(key), _join(path, str(key)), value


def _obj(fields: dict[str, Checker]) -> Checker:
    """A mapping with only the given keys (additionalProperties: false)."""

    def check(v: Any, path: str) -> dict:
        out: dict[str, Any] = {}
        for key, sub, value in _members(v, path, "a mapping"):
            if key not in fields:
                raise _Invalid(path, None, key)
            out[key] = fields[key](value, sub)
        return out

    return check


def _str_map(v: Any, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, sub, value in _members(v, path, "a mapping of strings"):
        if not isinstance(value, str):
            raise _Invalid(sub, f"expected a string (quote numbers), got {_kind(value)}")
        out[key] = str(value)  # plain str, not a loader subclass
    return out


def _then(base: Checker, extra: Callable[[Any], object]) -> Checker:
    """Run `base`, then `extra` on each item's value; a ValueError names the item."""

    def check(v: Any, path: str) -> Any:
        value = base(v, path)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, x in items:
            try:
                extra(x)
            except ValueError as e:
                raise _Invalid(path if i is None else f"{path}[{i}]", str(e)) from None
        return value

    return check


_STRINGS = _list(_str)
_IDMAPPINGS = _list(_obj({"hostID": _UINT32, "containerID": _UINT32, "size": _UINT32}))
# today's schema lets a mount carry id mappings (idmapped mounts)
_MOUNT = _obj({"destination": _str, "type": _str, "source": _str, "options": _STRINGS,
               "uidmappings": _IDMAPPINGS, "gidmappings": _IDMAPPINGS})
_THROTTLE = _list(_obj({"major": _INT64, "minor": _INT64, "rate": _UINT64}))
_RESOURCES = _obj({
    "devices": _list(_obj({
        "allow": _bool, "type": _str, "major": _INT64, "minor": _INT64, "access": _str,
    })),
    "memory": _obj({
        "limit": _INT64, "reservation": _INT64, "swap": _INT64, "kernel": _INT64,
        "kernelTCP": _INT64, "swappiness": _UINT64, "disableOOMKiller": _bool,
    }),
    "cpu": _obj({
        "shares": _UINT64, "quota": _INT64, "period": _UINT64, "realtimeRuntime": _INT64,
        "realtimePeriod": _UINT64, "cpus": _str, "mems": _str,
    }),
    "pids": _obj({"limit": _INT64}),
    "blockio": _obj({
        "weight": _UINT16, "leafWeight": _UINT16,
        "weightDevice": _list(_obj({
            "major": _INT64, "minor": _INT64, "weight": _UINT16, "leafWeight": _UINT16,
        })),
        "throttleReadBpsDevice": _THROTTLE, "throttleWriteBpsDevice": _THROTTLE,
        "throttleReadIOPSDevice": _THROTTLE, "throttleWriteIOPSDevice": _THROTTLE,
    }),
    "hugepageLimits": _list(_obj({"pageSize": _page_size, "limit": _UINT64})),
    "network": _obj({
        "classID": _UINT32,
        "priorities": _list(_obj({"name": _str, "priority": _UINT32})),
    }),
})
_RUNTIME = _obj({
    "cgroups": _STRINGS,
    "mounts": _list(_MOUNT),
    "mkdir": _STRINGS,
    "interfaces": _list(_obj({"name": _str, "add": _str, "peer": _str, "createInRoot": _bool})),
    "bindNS": _obj({k: _str for k in ("cgroup", "ipc", "mnt", "net", "pid", "user", "uts")}),
    "namespace": _str,
})


# --------------------------------------------------------- value rules shared with oci.py
def expand_caps(names: list[str]) -> list[str]:
    """A lone `all` or `none` (any case) becomes the full list or nothing, as in the reference."""
    if len(names) == 1:
        word = names[0].lower()
        if word == "none":
            return []
        if word == "all":
            return list(ALL_CAPS)
    return list(names)


def _caps_field(v: Any, path: str) -> list[str]:
    # all/none are words only when they are the only item; otherwise names must be exact
    names = _STRINGS(v, path)
    if len(names) == 1 and names[0].lower() in ("all", "none"):
        return names
    for i, name in enumerate(names):
        if name not in ALL_CAPS:
            hint = " (all/none must be the only item)" if name.lower() in ("all", "none") else ""
            raise _Invalid(f"{path}[{i}]", f"unknown capability {name!r}{hint}")
    return names


BIND_DEFAULTS = ("rw", "rbind", "rprivate")  # 2017's; today's LinuxKit has rshared
BIND_ADD_DEFAULTS = ("rw", "rbind", "rshared")


def parse_bind(text: str, defaults: tuple[str, ...] = BIND_DEFAULTS) -> dict[str, Any]:
    """`src:dst[:opt,...]` as the reference's bind mount (default options rw,rbind,rprivate)."""
    parts = text.split(":")
    if len(parts) < 2:
        raise ValueError(f"expected 'source:destination[:options]', got {text!r} (missing ':')")
    if len(parts) > 3:
        raise ValueError(f"expected 'source:destination[:options]', got {text!r} (too many ':')")
    if not parts[0] or not parts[1]:
        raise ValueError(f"expected 'source:destination[:options]', got {text!r} (empty path)")
    opts = [*parts[2].split(","), "rbind"] if len(parts) == 3 else list(defaults)
    return {"destination": parts[1], "type": "bind", "source": parts[0], "options": opts}


def parse_tmpfs(text: str) -> dict[str, Any]:
    """`dst[:opt,...]` as the reference's tmpfs mount (no options by default)."""
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"expected 'destination[:options]', got {text!r} (too many ':')")
    if not parts[0]:
        raise ValueError(f"expected 'destination[:options]', got {text!r} (empty destination)")
    opts = parts[1].split(",") if len(parts) == 2 else []
    return {"destination": parts[0], "type": "tmpfs", "source": "tmpfs", "options": opts}


def resolve_mount(m: dict[str, Any]) -> dict[str, Any]:
    """Fill a `mounts` item's type, source and destination the way the reference infers them."""
    tp, src, dst = m.get("type", ""), m.get("source", ""), m.get("destination", "")
    if not tp and src in IMPLIED_TYPES:
        tp = src
    if not tp and dst == "/dev":
        tp = "tmpfs"
    if not tp:
        raise ValueError(f"mount for destination {dst!r} is missing 'type'")
    dst = dst or DEFAULT_MOUNTPOINTS.get(tp, "")
    if not dst:
        raise ValueError(f"mount of type {tp!r} is missing 'destination'")
    return {"destination": dst, "type": tp, "source": src or tp,
            "options": list(m.get("options") or [])}


def _go_upper(s: str) -> str:
    # Go's ToUpper maps rune by rune; Python's may expand one char to two (ß -> SS)
    return "".join(u if len(u := c.upper()) == 1 else c for c in s)


def _limit(text: str, which: str) -> int:
    s = text.strip(_GO_SPACE)
    if s.lower() == "unlimited":
        return UNLIMITED
    if not _DIGITS.fullmatch(s) or int(s) > UNLIMITED:
        raise ValueError(f"{which} limit {s!r} is not a number or 'unlimited'")
    return int(s)


def parse_rlimit(text: str) -> dict[str, Any]:
    """`name,soft,hard` as an OCI rlimit {type, hard, soft}; the name may omit RLIMIT_."""
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise ValueError(f"expected 'name,soft,hard', got {text!r}")
    name = _go_upper(parts[0].strip(_GO_SPACE))
    if not name.startswith("RLIMIT_"):
        name = "RLIMIT_" + name
    if name not in RLIMITS:
        raise ValueError(f"unknown limit {parts[0].strip(_GO_SPACE)!r}")
    soft, hard = _limit(parts[1], "soft"), _limit(parts[2], "hard")
    return {"type": name, "hard": hard, "soft": soft}


DEVICE_TYPES = ("c", "b", "u", "p")


def parse_device_mode(text: str) -> int:
    """A device's `mode`: octal, as LinuxKit's strconv.ParseInt(mode, 8, 32)."""
    body = text[1:] if text[:1] in "+-" else text
    if not body or any(c not in "01234567" for c in body):
        raise ValueError(f"mode {text!r} is not an octal number")
    value = int(text, 8)
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"mode {text!r} is out of range")
    return value


def _mode_str(v: Any, path: str) -> str:
    if _is_int(v):  # YAML reads 0666 as a number; the schema (and LinuxKit) want a string
        raise _Invalid(path, f'expected an octal string such as "0666" (quote it), got {v}')
    return _str(v, path)


def _check_device(d: dict) -> None:
    path, tp = d.get("path", ""), d.get("type", "")
    if path == "all":
        # a whole class of devices in the device cgroup: 'a' is every type
        if tp not in (*DEVICE_TYPES, "a"):
            raise ValueError(f"type {tp!r}: expected one of c, b, u, p, a")
        return
    if not path.startswith("/"):
        raise ValueError(f"path {path!r}: expected an absolute device path or 'all'")
    if tp not in DEVICE_TYPES:
        raise ValueError(f"type {tp!r}: expected one of c, b, u, p")
    if "mode" not in d:
        raise ValueError(f"{path}: missing 'mode' (octal, e.g. \"0600\")")
    parse_device_mode(d["mode"])


def _check_name(name: str) -> None:
    if name in ("", ".", "..") or any(c in name for c in "/\0\n"):
        raise ValueError(f"{name!r} is not a usable bundle name (one path component: no '/', "
                         "NUL or newline, not '.' or '..')")


# The grammar of docker's reference package (distribution/reference): what the engine accepts.
_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[_.]|__|-+){_ALNUM})*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_REFERENCE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::[\w][\w.-]{0,127})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?")


def check_reference(ref: str) -> None:
    """ValueError("invalid reference format") unless `ref` is an image reference docker takes."""
    m = _REFERENCE.fullmatch(ref)
    if m is None or len(m.group("name")) > 255:
        raise ValueError(f"{ref!r}: invalid reference format")


def _check_image(image: str) -> None:
    if not image:
        raise ValueError("expected an image reference, got an empty string")
    if not image.startswith("@"):  # templates are reported by the config reader
        check_reference(image)


def _namespace(field: str) -> Checker:
    def check(value: str) -> None:
        # only net treats "none" as "new"; elsewhere the reference would use it as a path
        if field != "net" and value == "none":
            raise ValueError(f"'none' is only a word for net; use 'new' for a new {field} "
                             "namespace or give a path")
        # Anything else that is not a word is a namespace file, which runc wants absolute;
        # a relative "path" is almost always a misspelt word.
        words = ("host", "root", "new", "none") if field == "net" else ("host", "root", "new")
        if value and value not in words and not value.startswith("/"):
            raise ValueError(f"unknown namespace word {value!r}: expected "
                             f"{', '.join(words)} or an absolute path")

    return _then(_str, check)


_IMAGE_FIELDS: dict[str, Checker] = {
    "name": _then(_str, _check_name),
    "image": _then(_str, _check_image),
    "capabilities": _caps_field,
    "capabilities.add": _caps_field,
    "ambient": _caps_field,
    "mounts": _then(_list(_MOUNT), resolve_mount),
    "binds": _then(_STRINGS, parse_bind),
    "binds.add": _then(_STRINGS, parse_bind),
    "devices": _then(_list(_obj({"path": _str, "type": _str, "major": _INT64, "minor": _INT64,
                                 "mode": _mode_str})), _check_device),
    "tmpfs": _then(_STRINGS, parse_tmpfs),
    "command": _STRINGS,
    "env": _STRINGS,
    "cwd": _str,
    "net": _namespace("net"),
    "pid": _namespace("pid"),
    "ipc": _namespace("ipc"),
    "uts": _namespace("uts"),
    "userns": _namespace("userns"),
    "readonly": _bool,
    "maskedPaths": _STRINGS,
    "readonlyPaths": _STRINGS,
    "uid": _id,
    "gid": _id,
    "additionalGids": _list(_id),
    "noNewPrivileges": _bool,
    "hostname": _str,
    "oomScoreAdj": _INT64,
    "rootfsPropagation": _str,
    "cgroupsPath": _str,
    "resources": _RESOURCES,
    "sysctl": _str_map,
    "rlimits": _then(_STRINGS, parse_rlimit),
    "uidMappings": _IDMAPPINGS,
    "gidMappings": _IDMAPPINGS,
    "annotations": _str_map,
    "runtime": _RUNTIME,
}


_IMAGE = _obj(_IMAGE_FIELDS)


# -------------------------------------------------------------------------------- public
def validate_entry(raw: object, where: str, *, label: bool = False) -> dict:
    """Check one image entry; return it as a plain dict (keys in input order). Raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_kind(raw)}")
    for key in ("name", "image"):
        if label and key in raw:
            raise ConfigError(f"{where}: must not set {key!r}")
        if not label and key not in raw:
            raise ConfigError(f"{where}: missing required field {key!r}")
    for key in ("binds", "capabilities"):
        nested = raw.get(key)
        if isinstance(nested, dict) and "add" in nested:
            raise ConfigError(f"{where}: field {key!r}: expected a list, got a mapping with "
                              f"'add' (to add to the label's {key}, write '{key}.add:')")
    try:
        return _IMAGE(raw, "")
    except _Invalid as e:
        if e.problem is None:
            inside = f" in {e.path!r}" if e.path else ""
            raise ConfigError(f"{where}: unknown field {e.key!r}{inside}") from None
        if not e.path:
            raise ConfigError(f"{where}: {e.problem}") from None
        raise ConfigError(f"{where}: field {e.path!r}: {e.problem}") from None


def parse_label(text: str, where: str) -> dict:
    """Parse an org.mobyproject.config label (YAML 1.2, so JSON too) and validate it."""
    if len(text) > yamlload.MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{where}: label is longer than {yamlload.MAX_DOCUMENT_BYTES >> 20} "
                          "MiB, the most a config may hold")
    try:
        doc = yamlload.load(text)
    except (yamlload.YamlError, ValueError, RecursionError) as e:
        # ruamel's messages span several lines: keep the first line of the problem
        problem = getattr(e, "problem", None) or str(e)
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        first = " ".join(str(problem).split())
        raise ConfigError(f"{where}: label is not valid YAML: {first}{at}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: label is not a mapping (got {_kind(doc)})")
    return validate_entry(doc, where, label=True)


def image_label(image_config: dict | None, where: str) -> dict | None:
    """The image's validated label, or None when it has none (an empty label counts as none)."""
    text = ((image_config or {}).get("Labels") or {}).get(LABEL_KEY)
    return parse_label(text, where) if text else None
