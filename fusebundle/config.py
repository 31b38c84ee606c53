"""The LinuxKit YAML: parse, validate and merge config files into one plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from fusebundle.errors import ConfigError, UserError
from fusebundle.schema import validate_entry

SECTIONS = ("onboot", "onshutdown", "services")
TOP_KEYS = ("kernel", "init", "onboot", "onshutdown", "services", "trust", "files")
KERNEL_KEYS = ("image", "cmdline", "binary", "tar")
TRUST_KEYS = ("image", "org")
FILE_STRING_KEYS = ("path", "symlink", "contents", "source", "metadata", "mode")
FILE_BOOL_KEYS = ("directory", "optional")
FILE_ID_KEYS = ("uid", "gid")
FIRST_ID = 100


@dataclass
class Entry:
    """One container of onboot, onshutdown or services."""

    section: str
    index: int
    name: str
    image: str
    spec: dict[str, Any]
    where: str

    @property
    def bundle_path(self) -> str:
        """Where the bundle lives in the tree, e.g. containers/onboot/000-NAME."""
        if self.section == "services":
            return f"containers/services/{self.name}"
        return f"containers/{self.section}/{self.index:03d}-{self.name}"


@dataclass
class FileSpec:
    """One item of the files: section."""

    spec: dict[str, Any]
    where: str
    raw_path: str = ""  # the path as written (moby's metadata keeps a leading '/')


@dataclass
class Kernel:
    """The kernel: section; image is empty when there is none."""

    image: str = ""
    cmdline: str = ""
    binary: str = ""
    tar: str | None = None


@dataclass
class Config:
    """Several YAML files merged in order: lists concatenate, kernel fields override."""

    sources: list[str] = field(default_factory=list)
    kernel: Kernel = field(default_factory=Kernel)
    init: list[str] = field(default_factory=list)
    onboot: list[Entry] = field(default_factory=list)
    onshutdown: list[Entry] = field(default_factory=list)
    services: list[Entry] = field(default_factory=list)
    files: list[FileSpec] = field(default_factory=list)
    trust: dict[str, list[str]] = field(default_factory=dict)

    def containers(self) -> list[Entry]:
        """All bundles in build order: onboot, onshutdown, services."""
        return [*self.onboot, *self.onshutdown, *self.services]

    def id_map(self) -> dict[str, int]:
        """Ids by container name, from 100 in build order (a later name wins, as in moby)."""
        return {e.name: FIRST_ID + i for i, e in enumerate(self.containers())}


def _yaml() -> YAML:
    # The pure loader speaks YAML 1.2, where `name: n` or `on` stay strings.
    y = YAML(typ="safe", pure=True)
    y.allow_duplicate_keys = False
    return y


def _one_line(text: str) -> str:
    return " ".join(text.split())


def read_yaml(path: str) -> Any:
    """Load one YAML document from a file, as plain Python data."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark
        loc = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{path}: {loc}{_one_line(str(e.problem or e))}") from None
    except YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(e))}") from None


def _type_name(v: object) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(v), type(v).__name__)


def _expect(cond: bool, where: str, what: str, got: object) -> None:
    if not cond:
        raise ConfigError(f"{where}: expected {what}, got {_type_name(got)}")


def _strings(v: object, where: str) -> list[str]:
    _expect(isinstance(v, list), where, "a list of strings", v)
    assert isinstance(v, list)
    for i, s in enumerate(v):
        _expect(isinstance(s, str), f"{where}[{i}]", "a string", s)
    return list(v)


def _safe_relpath(p: str, where: str) -> str:
    """A path inside the tree: relative after stripping '/', no '..', no empty parts."""
    rel = p.lstrip("/")
    parts = PurePosixPath(rel).parts if rel else ()
    if not rel or "\0" in rel or any(part == ".." for part in parts):
        raise ConfigError(f"{where}: path {p!r} must name a place inside the tree")
    return "/".join(part for part in parts if part != ".")


def _parse_kernel(raw: object, where: str, kernel: Kernel) -> None:
    _expect(isinstance(raw, dict), where, "a mapping", raw)
    assert isinstance(raw, dict)
    for k, v in raw.items():
        if k not in KERNEL_KEYS:
            raise ConfigError(f"{where}: unknown field {k!r}")
        _expect(isinstance(v, str), f"{where}.{k}", "a string", v)
    # A later file overrides only the fields it sets, as moby's AppendConfig does.
    for k in ("image", "cmdline", "binary"):
        if raw.get(k):
            setattr(kernel, k, raw[k])
    if "tar" in raw:
        kernel.tar = raw["tar"]


def _parse_file(raw: object, where: str) -> FileSpec:
    _expect(isinstance(raw, dict), where, "a mapping", raw)
    assert isinstance(raw, dict)
    for k, v in raw.items():
        if k in FILE_STRING_KEYS:
            _expect(isinstance(v, str), f"{where}: field {k!r}", "a string", v)
        elif k in FILE_BOOL_KEYS:
            _expect(isinstance(v, bool), f"{where}: field {k!r}", "a boolean", v)
        elif k in FILE_ID_KEYS:
            ok = isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
            _expect(ok, f"{where}: field {k!r}", "a string or an integer", v)
            if isinstance(v, int) and not isinstance(v, bool) and v < 0:
                raise ConfigError(f"{where}: field {k!r}: must not be negative")
        else:
            raise ConfigError(f"{where}: unknown field {k!r}")
    if "path" not in raw:
        raise ConfigError(f"{where}: missing field 'path'")
    spec = dict(raw)
    spec["path"] = _safe_relpath(raw["path"], f"{where}: field 'path'")
    where = f"{where} ({raw['path']})"
    kinds = [k for k in ("contents", "source", "symlink", "metadata") if k in raw]
    if raw.get("directory"):
        kinds.insert(0, "directory")
    if len(kinds) > 1:
        raise ConfigError(f"{where}: sets both {kinds[0]!r} and {kinds[1]!r}; choose one")
    if not kinds:
        raise ConfigError(f"{where}: needs one of contents, source, symlink, directory, metadata")
    if "mode" in raw:
        try:
            mode = int(raw["mode"], 8)
        except ValueError:
            mode = -1
        if not 0 <= mode <= 0o7777:
            raise ConfigError(f"{where}: field 'mode': {raw['mode']!r} is not an octal mode")
    if raw.get("metadata", "yaml") != "yaml":
        raise ConfigError(f"{where}: field 'metadata': only 'yaml' is supported")
    return FileSpec(spec=spec, where=where, raw_path=raw["path"])


def _parse_entry(raw: object, section: str, index: int, where: str) -> Entry:
    spec = validate_entry(raw, where)
    return Entry(section=section, index=index, name=spec["name"], image=spec["image"],
                 spec=spec, where=f"{where} ({spec['name']})")


def _merge_file(cfg: Config, path: str, doc: Any) -> None:
    if doc is None:
        return  # an empty file adds nothing
    _expect(isinstance(doc, dict), path, "a mapping at the top level", doc)
    for key, value in doc.items():
        if key not in TOP_KEYS:
            raise ConfigError(f"{path}: unknown top-level key {key!r}")
        if value is None:
            continue
        where = f"{path}: {key}"
        if key == "kernel":
            _parse_kernel(value, where, cfg.kernel)
        elif key == "init":
            cfg.init.extend(_strings(value, where))
        elif key == "trust":
            _expect(isinstance(value, dict), where, "a mapping", value)
            for k, v in value.items():
                if k not in TRUST_KEYS:
                    raise ConfigError(f"{where}: unknown field {k!r}")
                cfg.trust.setdefault(k, []).extend(_strings(v, f"{where}.{k}"))
        elif key == "files":
            _expect(isinstance(value, list), where, "a list", value)
            cfg.files.extend(_parse_file(f, f"{where}[{i}]") for i, f in enumerate(value))
        else:
            _expect(isinstance(value, list), where, "a list", value)
            entries: list[Entry] = getattr(cfg, key)
            for item in value:
                # Numbering runs on across files: the bundle index is within the merged section.
                entries.append(_parse_entry(item, key, len(entries), f"{where}[{len(entries)}]"))


def _check_ids(cfg: Config) -> None:
    ids = cfg.id_map()

    def check(v: object, where: str) -> None:
        if isinstance(v, str) and v not in ("", "root") and v not in ids:
            raise ConfigError(f"{where}: unknown container name {v!r}")

    for e in cfg.containers():
        for k in ("uid", "gid"):
            if k in e.spec:
                check(e.spec[k], f"{e.where}: field {k!r}")
        for i, g in enumerate(e.spec.get("additionalGids", [])):
            check(g, f"{e.where}: field 'additionalGids[{i}]'")
    for f in cfg.files:
        for k in ("uid", "gid"):
            if k in f.spec:
                check(f.spec[k], f"{f.where}: field {k!r}")


def load_config(paths: list[str]) -> Config:
    """Read, validate and merge config files in order."""
    cfg = Config(sources=list(paths))
    for path in paths:
        _merge_file(cfg, path, read_yaml(path))
    seen: dict[str, str] = {}
    for e in cfg.services:
        if e.name in seen:
            raise ConfigError(f"{e.where}: duplicate service name {e.name!r} "
                              f"(also {seen[e.name]})")
        seen[e.name] = e.where.rsplit(" (", 1)[0]
    _check_ids(cfg)
    return cfg

