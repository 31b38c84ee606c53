"""The content of a `metadata: yaml` file: the merged config as the reference marshals it.

The reference (moby at linuxkit cfa5d273b7, build.go `metadata`) writes
json.MarshalIndent(m, "", "    ") of its Moby struct.  The dicts below follow the field order
and `omitempty` tags of Moby, KernelConfig, TrustConfig, File, Image and Runtime (config.go),
and the values are what gopkg.in/yaml.v2 decoded into those fields:

- a nil slice without omitempty is `null` (no init images: "init": null), and merging the
  config files with append() leaves a section that was only ever empty nil as well;
- omitempty never drops a struct value, so "kernel" and "trust" are always written;
- a pointer field (*[]string, *bool, *interface{}, ...) is written whenever the key was given,
  even with an empty or zero value; a plain string is written only when non-empty;
- one deliberate difference: the runtime-spec structs have no yaml tags, so the reference's
  yaml.v2 silently dropped camelCase keys inside `resources`, `uidMappings` and `gidMappings`
  (hostID, kernelTCP, hugepageLimits, ...). We keep them, as config.json does.
"""

from __future__ import annotations

from typing import Any

from fusebundle.config.load import Config, Container, FileSpec, Volume
from fusebundle.config.runtime import (
    go_json,
    id_mappings,
    linux_resources,
    mount_struct,
    runtime_struct,
)

# Image's fields in declaration order, by how encoding/json treats an empty value.
_ALWAYS = ("name", "image")
_PLAIN_STRINGS = frozenset({"cwd", "net", "pid", "ipc", "uts", "userns", "hostname"})
# Today's keys (capabilities.add, binds.add, devices, annotations) sit where today's
# ImageConfig declares them; a config without them marshals as 2017's did.
_IMAGE_FIELDS = (
    "name", "image", "capabilities", "capabilities.add", "ambient", "mounts", "binds",
    "binds.add", "devices", "tmpfs", "command", "env", "cwd", "net", "pid", "ipc", "uts",
    "userns", "hostname", "readonly", "maskedPaths", "readonlyPaths", "uid", "gid",
    "additionalGids", "noNewPrivileges", "oomScoreAdj", "rootfsPropagation", "cgroupsPath",
    "resources", "sysctl", "rlimits", "uidMappings", "gidMappings", "annotations", "runtime",
)


def _image_field(key: str, value: Any) -> Any:
    if key == "mounts":
        return [mount_struct(m) for m in value]
    if key == "resources":
        return linux_resources(value)
    if key in ("uidMappings", "gidMappings"):
        return id_mappings(value)
    if key in ("sysctl", "annotations"):
        return {k: value[k] for k in sorted(value)}  # Go sorts map keys
    if key == "devices":  # moby.Device: path, type, major, minor always; mode omitempty
        return [{"path": d.get("path", ""), "type": d.get("type", ""),
                 "major": d.get("major", 0), "minor": d.get("minor", 0),
                 **({"mode": d["mode"]} if d.get("mode") else {})} for d in value]
    if key == "runtime":
        return runtime_struct(value)
    return list(value) if isinstance(value, list) else value


def _image(e: Container) -> dict[str, Any]:
    spec = e.spec
    out: dict[str, Any] = {}
    for key in _IMAGE_FIELDS:
        if key in _ALWAYS:
            out[key] = spec.get(key, "")
        elif key in _PLAIN_STRINGS:
            if spec.get(key):
                out[key] = spec[key]
        elif key in spec:  # a pointer: set when given, whatever the value
            out[key] = _image_field(key, spec[key])
    return out


def _images(entries: list[Container]) -> list[dict[str, Any]] | None:
    return [_image(e) for e in entries] or None


def _file(f: FileSpec) -> dict[str, Any]:
    spec = f.spec
    out: dict[str, Any] = {"path": f.raw_path or f.spec["path"],
                           "directory": bool(spec.get("directory", False))}
    if spec.get("symlink"):
        out["symlink"] = spec["symlink"]
    if "contents" in spec:  # *string: written even when empty
        out["contents"] = spec["contents"]
    for key in ("source", "metadata"):
        if spec.get(key):
            out[key] = spec[key]
    out["optional"] = bool(spec.get("optional", False))
    if spec.get("mode"):
        out["mode"] = spec["mode"]
    for key in ("uid", "gid"):  # interface{}: written when given, 0 and "" included
        if key in spec and spec[key] is not None:
            out[key] = spec[key]
    return out


def moby_dict(cfg: Config) -> dict[str, Any]:
    """The Moby struct as JSON-ready Python values, in field order."""
    k = cfg.kernel
    kernel: dict[str, Any] = {"image": k.image}
    if k.cmdline:
        kernel["cmdline"] = k.cmdline
    if k.binary:
        kernel["binary"] = k.binary
    if k.tar is not None:
        kernel["tar"] = k.tar
    if k.ucode is not None:
        kernel["ucode"] = k.ucode
    trust = {key: list(cfg.trust[key]) for key in ("image", "org") if cfg.trust.get(key)}
    out = {
        "kernel": kernel,
        "init": list(cfg.init) or None,
        "onboot": _images(cfg.onboot),
        "onshutdown": _images(cfg.onshutdown),
        "services": _images(cfg.services),
        "trust": trust,
        "files": [_file(f) for f in cfg.files] or None,
    }
    if cfg.volumes:  # today's Moby.Volumes, after files
        out["volumes"] = [_volume(v) for v in cfg.volumes]
    return out


def _volume(v: Volume) -> dict[str, Any]:
    out: dict[str, Any] = {"name": v.name}
    if v.image:
        out["image"] = v.image
    if v.readonly:
        out["readonly"] = True
    if v.format:
        out["format"] = v.format
    if v.platforms:
        out["platforms"] = list(v.platforms)
    return out


def moby_json(cfg: Config) -> bytes:
    """json.MarshalIndent(m, "", "    ") of the merged config, byte for byte (no newline)."""
    return go_json(moby_dict(cfg), "    ")
