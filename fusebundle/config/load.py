"""The LinuxKit YAML: parse, validate and merge config files into one plan."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from fusebundle.config import yamlload
from fusebundle.config.schema import check_reference, validate_entry
from fusebundle.errors import ConfigError, UserError, shown

TOP_KEYS = ("kernel", "init", "onboot", "onshutdown", "services", "trust", "files", "volumes")
KERNEL_KEYS = ("image", "cmdline", "binary", "tar", "ucode")
VOLUME_FORMATS = ("filesystem", "oci")
VOLUMES_DIR = "containers/volumes"
_VOLUME_NAME = re.compile(r"[a-z0-9_-]+")
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")
PKG_TEMPLATE = "@pkg:"
TRUST_KEYS = ("image", "org")
FILE_STRING_KEYS = ("path", "symlink", "contents", "source", "metadata", "mode")
FILE_BOOL_KEYS = ("directory", "optional")
FILE_ID_KEYS = ("uid", "gid")
FIRST_ID = 100
MAX_DOCUMENT_BYTES = yamlload.MAX_DOCUMENT_BYTES


@dataclass
class Container:
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
    ucode: str | None = None  # today's LinuxKit: a microcode cpio in the kernel image


@dataclass
class Volume:
    """One item of today's top-level volumes: (blank, or an image as files or OCI layout)."""

    name: str
    image: str = ""
    readonly: bool = False
    format: str = ""
    platforms: list[str] = field(default_factory=list)
    where: str = ""

    @property
    def base(self) -> str:
        """Where the volume lives in the tree (lower/, tmp/ and merged/ are below it)."""
        return f"{VOLUMES_DIR}/{self.name}"

    @property
    def merged(self) -> str:
        """The absolute path containers bind: the volume's overlay mount point."""
        return f"/{self.base}/merged"


@dataclass
class Config:
    """Several YAML files merged in order: lists concatenate, kernel fields override."""

    sources: list[str] = field(default_factory=list)
    kernel: Kernel = field(default_factory=Kernel)
    init: list[str] = field(default_factory=list)
    onboot: list[Container] = field(default_factory=list)
    onshutdown: list[Container] = field(default_factory=list)
    services: list[Container] = field(default_factory=list)
    files: list[FileSpec] = field(default_factory=list)
    trust: dict[str, list[str]] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)

    def volume(self, name: str) -> Volume | None:
        """The volume of this name, or None."""
        return next((v for v in self.volumes if v.name == name), None)

    def volume_map(self) -> dict[str, Volume]:
        """Today's volumes by name (empty when the config has none: 2017's rules)."""
        return {v.name: v for v in self.volumes}

    def containers(self) -> list[Container]:
        """All bundles in build order: onboot, onshutdown, services."""
        return [*self.onboot, *self.onshutdown, *self.services]

    def id_map(self) -> dict[str, int]:
        """Ids by container name, from 100 in build order (a later name wins, as in moby)."""
        return {e.name: FIRST_ID + i for i, e in enumerate(self.containers())}


def _one_line(text: str) -> str:
    return " ".join(text.split())


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def read_config_text(path: str) -> str:
    """A config file's text: a regular file of at most MAX_DOCUMENT_BYTES, in UTF-8."""
    name = shown(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait; the type check refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UserError(f"{name}: no such config file") from None
    except OSError as e:
        raise UserError(f"{name}: cannot read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{name}: is a directory, not a config file")
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise UserError(f"{name}: is {kind}, not a config file (save it to a file first)")
        too_big = ConfigError(f"{name}: larger than {MAX_DOCUMENT_BYTES >> 20} MiB, the most "
                              "a config file may hold")
        if st.st_size > MAX_DOCUMENT_BYTES:
            raise too_big
        try:
            data = f.read(MAX_DOCUMENT_BYTES + 1)  # (it may have grown since the stat)
        except OSError as e:
            raise UserError(f"{name}: cannot read: {e.strerror}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise too_big
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None


def read_yaml(path: str) -> Any:
    """Load one YAML document from a file, as plain Python data."""
    name = shown(path)
    text = read_config_text(path)
    try:
        return yamlload.load(text)
    except yamlload.YamlError as e:
        if not e.marked:
            raise ConfigError(f"{name}: invalid YAML: {_one_line(str(e))}") from None
        mark = e.problem_mark
        loc = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{name}: {loc}{_one_line(str(e.problem or e))}") from None


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
        _expect(isinstance(v, str), f"{where}: field {k!r}", "a string", v)
    _check_ref(raw.get("image"), f"{where}: field 'image'")
    # A later file overrides only the fields it sets, as moby's AppendConfig does.
    for k in ("image", "cmdline", "binary"):
        if raw.get(k):
            setattr(kernel, k, raw[k])
    for k in ("tar", "ucode"):
        if k in raw:
            setattr(kernel, k, raw[k])


def _check_ref(image: object, where: str) -> None:
    """An image reference docker takes; a LinuxKit template gets a line of its own."""
    if not isinstance(image, str) or not image:
        return
    if image.startswith(PKG_TEMPLATE):
        raise ConfigError(f"{where}: {image!r} is a LinuxKit package template; it needs "
                          "LinuxKit's package tooling (linuxkit pkg): name the built image")
    try:
        check_reference(image)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def _parse_volume(raw: object, where: str) -> Volume:
    _expect(isinstance(raw, dict), where, "a mapping", raw)
    assert isinstance(raw, dict)
    for k, v in raw.items():
        if k in ("name", "image", "format"):
            _expect(isinstance(v, str), f"{where}: field {k!r}", "a string", v)
        elif k == "readonly":
            _expect(isinstance(v, bool), f"{where}: field {k!r}", "a boolean", v)
        elif k == "platforms":
            for i, p in enumerate(_strings(v, f"{where}: field 'platforms'")):
                if not _PLATFORM.fullmatch(p):
                    raise ConfigError(f"{where}: field 'platforms[{i}]': {p!r} is not a "
                                      "platform such as linux/amd64 or linux/arm/v7")
        else:
            raise ConfigError(f"{where}: unknown field {k!r}")
    name = raw.get("name", "")
    if not _VOLUME_NAME.fullmatch(name):
        raise ConfigError(f"{where}: field 'name': {name!r} is not a volume name (lower-case "
                          "letters, digits, '-' and '_')")
    where = f"{where} ({name})"
    fmt = raw.get("format", "")
    if fmt and fmt not in VOLUME_FORMATS:
        raise ConfigError(f"{where}: field 'format': expected filesystem or oci, got {fmt!r}")
    image = raw.get("image", "")
    _check_ref(image, f"{where}: field 'image'")
    if not image and (fmt or raw.get("platforms")):
        raise ConfigError(f"{where}: 'format' and 'platforms' need an 'image'")
    if raw.get("platforms") and fmt != "oci":
        raise ConfigError(f"{where}: 'platforms' only applies to 'format: oci'")
    return Volume(name=name, image=image, readonly=bool(raw.get("readonly", False)),
                  format=fmt, platforms=list(raw.get("platforms", [])), where=where)


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
    where = f"{where} ({shown(raw['path'])})"
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
    # 'json' is today's LinuxKit (its json.MarshalIndent of the config, which is what 2017's
    # 'yaml' wrote too)
    if raw.get("metadata", "yaml") not in ("yaml", "json"):
        raise ConfigError(f"{where}: field 'metadata': expected 'yaml' or 'json'")
    return FileSpec(spec=spec, where=where, raw_path=raw["path"])


def _parse_entry(raw: object, section: str, index: int, where: str) -> Container:
    name = raw.get("name") if isinstance(raw, dict) else None
    if isinstance(name, str) and name:
        where = f"{where} ({shown(name)})"  # errors name the container, as label errors do
    spec = validate_entry(raw, where)
    _check_ref(spec["image"], f"{where}: field 'image'")
    return Container(section=section, index=index, name=spec["name"], image=spec["image"],
                 spec=spec, where=where)


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
            refs = _strings(value, where)
            for i, ref in enumerate(refs):
                _check_ref(ref, f"{where}[{i}]")
            cfg.init.extend(refs)
        elif key == "volumes":
            _expect(isinstance(value, list), where, "a list", value)
            for v in value:
                vol = _parse_volume(v, f"{where}[{len(cfg.volumes)}]")
                if cfg.volume(vol.name) is not None:
                    raise ConfigError(f"{vol.where}: duplicate volume name {vol.name!r}")
                cfg.volumes.append(vol)
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
            entries: list[Container] = getattr(cfg, key)
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
        _merge_file(cfg, shown(path), read_yaml(path))
    seen: dict[str, str] = {}
    for e in cfg.services:
        if e.name in seen:
            raise ConfigError(f"{e.where}: duplicate service name {e.name!r} "
                              f"(also {seen[e.name]})")
        seen[e.name] = e.where.rsplit(" (", 1)[0]
    _check_ids(cfg)
    return cfg

