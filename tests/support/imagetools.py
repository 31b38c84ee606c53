"""Test helpers: deterministic rootfs tars and importing them into a docker engine.

``RootfsBuilder`` collects tar entries in order and writes them byte-for-byte reproducibly
(fixed mtimes, owners, modes, no uname/gname, no atime/ctime).  ``import_image`` turns such a
tar into an image with ``docker import`` semantics (the low-level docker-py API), and
``list_containers`` lists every container of an engine, for leak checks.

Example::

    r = RootfsBuilder()
    r.dir("bin").file("bin/busybox", busybox_bytes(), mode=0o755).symlink("bin/sh", "busybox")
    r.write(tmp_path / "rootfs.tar")
    image_id = import_image(client, tmp_path / "rootfs.tar", "fbtest/bb:1", ['CMD ["/bin/sh"]'])
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

T0 = 1600000000  # 2020-09-13T12:26:40Z: default mtime of every entry
T1 = 1400000000  # 2014-05-13T16:53:20Z: a second, distinct mtime

BUSYBOX = "/bin/busybox"  # Debian's busybox-static (a static binary: runs in any rootfs)

Name = str | bytes | os.PathLike


def busybox_bytes(path: str = BUSYBOX) -> bytes:
    """The static busybox binary installed by scripts/setup (Debian package busybox-static)."""
    with open(path, "rb") as f:
        return f.read()


def _text(name: Name) -> str:
    """str for tarfile; bytes that are not UTF-8 survive as surrogates (written back as bytes)."""
    if isinstance(name, bytes):
        return name.decode("utf-8", "surrogateescape")
    return os.fspath(name)


def _normalize(name: str) -> str:
    """'./a//b/' -> 'a/b', '/a' -> 'a', '.' or '/' -> '.'."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts) or "."


class _RawTarInfo(tarfile.TarInfo):
    """A TarInfo whose name is written exactly as given (tarfile adds '/' to directories)."""

    def get_info(self) -> dict[str, Any]:
        info = super().get_info()
        info["name"] = self.name
        return info


class RootfsBuilder:
    """An ordered list of tar entries, written deterministically.

    Names and link targets may be ``str``, ``bytes`` (any bytes, not only UTF-8) or path-like.
    By default names are normalized (no leading ``/`` or ``./``, no trailing ``/``; tarfile then
    writes directories with a trailing ``/``, as ``docker export`` does).  With
    ``raw_names=True`` every name is written exactly as given, e.g. ``./etc`` or ``etc`` for a
    directory.  Hard-link targets are normalized the same way as names.

    Every adder takes the keyword-only metadata ``uid``, ``gid``, ``mtime``, ``uname``,
    ``gname``, ``xattrs`` (``{name: bytes | str}``, written as ``SCHILY.xattr.*`` PAX records)
    and ``pax`` (extra PAX records ``{keyword: str}``, written as given); adders return ``self``.
    ``fmt`` is ``tarfile.PAX_FORMAT`` (default), ``GNU_FORMAT`` or ``USTAR_FORMAT``; xattrs and
    PAX records need PAX_FORMAT.
    """

    def __init__(self, *, raw_names: bool = False, fmt: int = tarfile.PAX_FORMAT,
                 mtime: int = T0, uid: int = 0, gid: int = 0) -> None:
        self.raw_names = raw_names
        self.fmt = fmt
        self.defaults = {"mtime": mtime, "uid": uid, "gid": gid}
        self.members: list[tuple[tarfile.TarInfo, bytes | None]] = []

    # -- entries ---------------------------------------------------------------------------
    def dir(self, name: Name, mode: int = 0o755, **meta: Any) -> RootfsBuilder:
        return self._add(name, tarfile.DIRTYPE, mode, meta)

    def file(self, name: Name, data: bytes | str = b"", mode: int = 0o644,
             **meta: Any) -> RootfsBuilder:
        if isinstance(data, str):
            data = data.encode()
        return self._add(name, tarfile.REGTYPE, mode, meta, data=data)

    def symlink(self, name: Name, target: Name, mode: int = 0o777,
                **meta: Any) -> RootfsBuilder:
        return self._add(name, tarfile.SYMTYPE, mode, meta, linkname=_text(target))

    def hardlink(self, name: Name, target: Name, **meta: Any) -> RootfsBuilder:
        """A hard link to an earlier entry; mode/owner/mtime default to the target's."""
        tname = self._name(target)
        for ti, _ in self.members:
            if ti.name == tname:
                for key in ("mode", "uid", "gid", "mtime"):
                    meta.setdefault(key, getattr(ti, key))
                break
        mode = meta.pop("mode", 0o644)
        return self._add(name, tarfile.LNKTYPE, mode, meta, linkname=tname)

    def chardev(self, name: Name, major: int, minor: int, mode: int = 0o666,
                **meta: Any) -> RootfsBuilder:
        return self._add(name, tarfile.CHRTYPE, mode, meta, dev=(major, minor))

    def blockdev(self, name: Name, major: int, minor: int, mode: int = 0o660,
                 **meta: Any) -> RootfsBuilder:
        return self._add(name, tarfile.BLKTYPE, mode, meta, dev=(major, minor))

    def fifo(self, name: Name, mode: int = 0o644, **meta: Any) -> RootfsBuilder:
        return self._add(name, tarfile.FIFOTYPE, mode, meta)

    def add(self, ti: tarfile.TarInfo, data: bytes | None = None) -> RootfsBuilder:
        """Append a ready TarInfo as it is (for headers the adders cannot express)."""
        if data is not None:
            ti.size = len(data)
        self.members.append((ti, data))
        return self

    # -- output ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [ti.name for ti, _ in self.members]

    def tobytes(self) -> bytes:
        buf = io.BytesIO()
        self._write(buf)
        return buf.getvalue()

    def write(self, path: str | os.PathLike) -> Path:
        with open(path, "wb") as f:
            self._write(f)
        return Path(path)

    # -- internals -------------------------------------------------------------------------
    def _name(self, name: Name) -> str:
        text = _text(name)
        return text if self.raw_names else _normalize(text)

    def _add(self, name: Name, typ: bytes, mode: int, meta: dict[str, Any], *,
             data: bytes | None = None, linkname: str = "",
             dev: tuple[int, int] | None = None) -> RootfsBuilder:
        unknown = set(meta) - {"uid", "gid", "mtime", "uname", "gname", "xattrs", "pax"}
        if unknown:
            raise TypeError(f"unknown metadata {sorted(unknown)}")
        ti = (_RawTarInfo if self.raw_names else tarfile.TarInfo)(self._name(name))
        ti.type = typ
        ti.mode = mode
        ti.uid = meta.get("uid", self.defaults["uid"])
        ti.gid = meta.get("gid", self.defaults["gid"])
        ti.mtime = meta.get("mtime", self.defaults["mtime"])
        ti.uname = meta.get("uname", "")
        ti.gname = meta.get("gname", "")
        ti.linkname = linkname
        if dev is not None:
            ti.devmajor, ti.devminor = dev
        pax: dict[str, str] = {}
        for key, value in (meta.get("xattrs") or {}).items():
            pax["SCHILY.xattr." + key] = _text(value)
        pax.update(meta.get("pax") or {})
        if pax:
            if self.fmt != tarfile.PAX_FORMAT:
                raise ValueError("xattrs and PAX records need fmt=tarfile.PAX_FORMAT")
            ti.pax_headers = pax
        return self.add(ti, data)

    def _write(self, f: Any) -> None:
        with tarfile.open(fileobj=f, mode="w", format=self.fmt, encoding="utf-8",
                          errors="surrogateescape") as t:
            for ti, data in self.members:
                t.addfile(ti, io.BytesIO(data) if data is not None else None)


def _api(client: Any) -> Any:
    """The low-level APIClient of a DockerClient (or the APIClient itself)."""
    return getattr(client, "api", client)


def split_repo_tag(repo_tag: str) -> tuple[str, str | None]:
    """'reg:5000/a/b:1' -> ('reg:5000/a/b', '1'); 'a/b' -> ('a/b', None)."""
    repo, sep, tag = repo_tag.rpartition(":")
    if not sep or "/" in tag:
        return repo_tag, None
    return repo, tag


def import_image(client: Any, tar_path: str | os.PathLike, repo_tag: str,
                 changes: list[str] | None = None) -> str:
    """``docker import TAR REPO:TAG`` with Dockerfile ``changes`` (e.g. ``'CMD ["/bin/sh"]'``,
    ``'ENV A=b'``, ``'WORKDIR /w'``, ``'LABEL k=v'``); returns the image id (``sha256:...``)."""
    api = _api(client)
    repository, tag = split_repo_tag(repo_tag)
    out = api.import_image(src=os.fspath(tar_path), repository=repository, tag=tag,
                           changes=list(changes or []))
    # The answer is a stream of JSON objects; an error is reported inside it, not as a status.
    for line in str(out).splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
            raise RuntimeError(f"docker import of {tar_path} as {repo_tag} failed: {msg}")
    return api.inspect_image(repo_tag)["Id"]


def list_containers(client: Any) -> list[dict[str, Any]]:
    """Every container of the engine, running or not (``docker ps -a``), as the engine's JSON
    objects (keys ``Id``, ``Names``, ``Image``, ``State``, ...)."""
    return _api(client).containers(all=True)


# -- the demo image (scripts/demo, examples/demo.yml) -----------------------------------------
DEMO_REPO_TAG = "fusebundle-demo/hello:1"
DEMO_CHANGES = [
    'CMD ["/bin/sh"]',
    "ENV PATH=/bin GREETING=hello",
    "WORKDIR /home/demo",
]


def demo_rootfs(busybox_path: str = BUSYBOX) -> RootfsBuilder:
    """A tiny busybox rootfs: applet symlinks, /etc/motd and a hard link to it (/etc/issue)."""
    r = RootfsBuilder()
    r.dir("bin")
    r.file("bin/busybox", busybox_bytes(busybox_path), mode=0o755)
    for applet in ("cat", "echo", "ls", "sh", "sleep"):
        r.symlink("bin/" + applet, "busybox")
    r.dir("etc")
    r.file("etc/motd", "Welcome to the fusebundle demo image.\n")
    r.hardlink("etc/issue", "etc/motd")
    r.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\ndemo:x:1000:1000::/home/demo:/bin/sh\n")
    r.dir("home")
    r.dir("home/demo", mode=0o750, uid=1000, gid=1000)
    r.file("home/demo/hello.txt", "hello from the demo image\n", uid=1000, gid=1000, mtime=T1)
    r.dir("tmp", mode=0o1777)
    return r


# ------------------------------------------------------------------------------ OCI layouts
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _put_blob(layout: Path, data: bytes) -> str:
    import hashlib

    hexdigest = hashlib.sha256(data).hexdigest()
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / hexdigest).write_bytes(data)
    return "sha256:" + hexdigest


def write_oci_layout(layout: str | os.PathLike, ref_name: str, layers: list[bytes],
                     config: dict[str, Any], platform: tuple[str, str] = ("linux", "amd64")
                     ) -> str:
    """Write an OCI image layout holding one image of gzip'd layers; return its manifest digest.

    `layers` are uncompressed layer tars, bottom first; `config` is the image config's
    `config` object (Cmd, Env, ...).  ref.name is `ref_name`, as LinuxKit's cache writes it.
    """
    import gzip
    import hashlib

    root = Path(layout)
    root.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    descs = []
    for tar in layers:
        blob = gzip.compress(tar, compresslevel=6, mtime=0)
        descs.append({"mediaType": OCI_LAYER_GZIP, "digest": _put_blob(root, blob),
                      "size": len(blob)})
    image_config = {
        "architecture": platform[1], "os": platform[0], "config": config,
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": _put_blob(root, config_bytes),
                           "size": len(config_bytes)},
                "layers": descs}
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    digest = _put_blob(root, manifest_bytes)
    index_path = root / "index.json"
    index = (json.loads(index_path.read_text()) if index_path.exists()
             else {"schemaVersion": 2, "manifests": []})
    index["manifests"].append({
        "mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest_bytes),
        "annotations": {"org.opencontainers.image.ref.name": ref_name},
        "platform": {"architecture": platform[1], "os": platform[0]}})
    index_path.write_text(json.dumps(index, indent=2))
    return digest


def demo_layers(busybox_path: str = BUSYBOX) -> list[bytes]:
    """The demo image as three layers: the rootfs, a whiteout and an opaque dir, a new motd."""
    base = demo_rootfs(busybox_path)
    base.file("etc/obsolete.conf", "removed by the second layer\n")
    base.dir("var").dir("var/cache").file("var/cache/stale", "hidden by an opaque dir\n")
    second = RootfsBuilder()
    second.dir("etc").file("etc/.wh.obsolete.conf")
    second.dir("var").dir("var/cache").file("var/cache/.wh..wh..opq")
    second.file("var/cache/fresh", "made by the second layer\n")
    third = RootfsBuilder()
    third.dir("etc").file("etc/motd", "Welcome to the fusebundle demo image (layer 3).\n")
    return [r.tobytes() for r in (base, second, third)]


DEMO_CONFIG = {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin", "GREETING=hello"],
               "WorkingDir": "/home/demo"}


def docker_archive(dest: Path, layer_paths: list[Path], tag: str) -> Path:
    """A docker-save (20.10) archive written by hand around the given layer tars."""
    import hashlib
    import io
    import json
    diff_ids = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in layer_paths]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cfg_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [tag],
                            "Layers": [f"l{n}/layer.tar" for n in range(len(layer_paths))]}])
    out = dest / "hand-save.tar"
    with tarfile.open(out, "w") as t:
        for n, p in enumerate(layer_paths):
            t.add(p, f"l{n}/layer.tar")
        for name, blob in ((cfg_name, config), ("manifest.json", manifest.encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(blob)
            t.addfile(ti, io.BytesIO(blob))
    return out
