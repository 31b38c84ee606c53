"""The tree as data: what `pack` writes and `mount` shows, in the reference's entry order.

A view is a list of items: single entries the tool makes itself (prefix directories, config.json,
runtime.json, tmp/, rootfs/, files:) and grafts, which place a filtered image export at a prefix.
Grafts expand lazily from the image's index, so building a view never reads an image's data.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress

from fusebundle.bundle.entry import Entry, directory, regular
from fusebundle.config import Config, Container, FileSpec, Volume, metadata, schema
from fusebundle.config import runtime as oci
from fusebundle.config.schema import LABEL_KEY
from fusebundle.errors import UserError, shown
from fusebundle.images import ImageHandle
from fusebundle.images.flatten import PINNED_MTIME_NS
from fusebundle.sources import ImageInfo
from fusebundle.tar import Extent, IndexEntry, TarIndex
from fusebundle.tar.header import TYPE_F, TYPE_H
from fusebundle.tar.index import Columns, of_type

# Names docker export always adds that make no sense in a bundle (matched at the image root).
EXCLUDE = frozenset({b".dockerenv", b"Dockerfile", b"dev/console", b"dev/pts", b"dev/shm",
                     b"etc/hostname"})
# Column-aligned with spaces, byte for byte as the reference writes it (160 bytes).
HOSTS = (b"127.0.0.1       localhost\n"
         b"::1     localhost ip6-localhost ip6-loopback\n"
         b"fe00::0 ip6-localnet\n"
         b"ff00::0 ip6-mcastprefix\n"
         b"ff02::1 ip6-allnodes\n"
         b"ff02::2 ip6-allrouters\n")
NO_RESOLV = b"\n# no resolv.conf configured\n"
REPLACE = {b"etc/hosts": HOSTS, b"etc/resolv.conf": NO_RESOLV}
INIT_RESOLV_LINK = b"/run/resolvconf/resolv.conf"

# Entries docker writes when it creates the container: their mtimes are the creation time, so
# they are pinned to keep output reproducible (to PINNED_MTIME_NS).
DOCKER_CREATED = frozenset({b".dockerenv", b"dev", b"dev/console", b"dev/pts", b"dev/shm",
                            b"etc", b"etc/hostname", b"etc/hosts", b"etc/mtab",
                            b"etc/resolv.conf", b"proc", b"sys"})

@dataclass
class Graft:
    """An image's filtered export placed under `prefix` (b"" for init, else ending in '/').

    `raw` grafts (a kernel's inner tar) skip docker's filter; `pick` grafts show only the
    named entries of the export, renamed (a kernel's binary and ucode under boot/).
    """

    prefix: bytes
    image: ImageHandle
    resolv_link: bytes | None = None  # init images: resolv.conf becomes this symlink
    raw: bool = False
    pick: Callable[[TarIndex], dict[int, Entry]] | None = None
    # False: the image's own filesystem (the image commands): no pinned mtimes either.
    docker: bool = True


class _Nested:
    """The tar stored inside an image's export, as an image handle of its own."""

    def __init__(self, outer: ImageHandle, name: bytes) -> None:
        self.outer = outer
        self.name = name
        self.info = outer.info

    def index(self) -> TarIndex:
        return self.outer.nested_index(self.name)

    def nested_index(self, name: bytes) -> TarIndex:
        raise UserError(f"image {self.info.ref}: no tar inside {self.name.decode()}")


@dataclass
class KernelImage:
    """The kernel: section: boot/cmdline, boot/kernel and the kernel tar's contents at the root.

    As in the reference, entries come in the order the image's export holds the kernel file
    and the kernel tar; everything else in the image is left out.  `ucode` (today's LinuxKit)
    adds boot/ucode.cpio from that file of the image.
    """

    image: ImageHandle
    cmdline: bytes
    binary: bytes = b"kernel"
    tar: bytes = b"kernel.tar"  # empty: no kernel tar
    ucode: bytes = b""  # empty: no microcode archive

    def _boot_files(self, idx: TarIndex) -> dict[int, Entry]:
        """Index position -> the boot/ entry it becomes (kernel, ucode); errors if missing."""
        wanted = {self.binary: b"boot/kernel"}
        if self.ucode:
            wanted[self.ucode] = b"boot/ucode.cpio"
        g = Graft(prefix=b"", image=self.image)
        out: dict[int, Entry] = {}
        for name, path in wanted.items():
            i = idx.find(name)
            if i is None:
                what = "ucode" if path == b"boot/ucode.cpio" else "kernel"
                raise UserError(f"kernel image {self.image.info.ref}: no {name.decode()} file "
                                f"at its root (the {what})")
            e = filter_entry(g, idx, idx.entry(i))
            if e is None or e.type != "f":
                raise UserError(f"kernel image {self.image.info.ref}: {name.decode()} is not "
                                "a regular file")
            # ucode is today's key: its entry has today's mtime; the kernel keeps 2017's 0
            mtime = PINNED_MTIME_NS if path == b"boot/ucode.cpio" else 0
            out[i] = Entry(path=path, type="f", mode=e.mode, mtime_ns=mtime, size=e.size,
                           body=e.body)
        return out

    def entries(self) -> Iterator[Entry]:
        """The kernel's entries, in the reference's order."""
        idx = self.image.index()
        boot = self._boot_files(idx)
        found_tar = boot_made = False
        g = Graft(prefix=b"", image=self.image, raw=True)
        for i, e in enumerate(idx):
            f = boot.get(i)
            if f is not None:
                if not boot_made:
                    yield directory(b"boot")
                    boot_made = True
                if f.path == b"boot/kernel":
                    yield regular(b"boot/cmdline", self.cmdline)
                yield f
            elif self.tar and e.name == self.tar and idx.find(e.name) == i:
                found_tar = True
                inner = self.image.nested_index(self.tar)
                for ie in inner:
                    yield _kept(g, inner, ie)
        if self.tar and not found_tar:
            ref = self.image.info.ref
            raise UserError(f"kernel image {ref}: no {self.tar.decode()} file at its root")

    def parts(self) -> list[Entry | Graft]:
        """The same tree for the mount, as items that load lazily: boot/ and boot/cmdline,
        a graft picking the kernel (and ucode) out of the export, the kernel tar's graft."""
        out: list[Entry | Graft] = [directory(b"boot"), regular(b"boot/cmdline", self.cmdline),
                                    Graft(prefix=b"boot/", image=self.image,
                                          pick=self._boot_files)]
        if self.tar:
            out.append(Graft(prefix=b"", image=_Nested(self.image, self.tar), raw=True))
        return out


@dataclass
class Bundle:
    """Where one container's bundle is, and which graft holds its image."""

    path: str  # e.g. containers/onboot/000-NAME
    root: str  # the directory holding the image: its own lower/ or rootfs/, or a shared one
    graft: Graft
    readonly: bool


@dataclass
class View:
    """The whole tree in output order."""

    items: list[Entry | Graft | KernelImage] = field(default_factory=list)
    bundles: list[Bundle] = field(default_factory=list)

    def entries(self) -> Iterator[Entry]:
        """Every entry in pack order (prefix dirs repeat, as in the reference)."""
        return flat(self.pieces())

    def pieces(self) -> Iterator[Entry | Members]:
        """The same walk, each graft's entries as one `Members` (for a renderer that writes
        them from the index's columns)."""
        for item in self.items:
            if isinstance(item, Graft):
                yield members(item)
            elif isinstance(item, KernelImage):
                yield from item.entries()
            else:
                yield item

    def file_bytes(self) -> int:
        """Bytes of the regular files among `entries()`: the total pack's progress counts."""
        total = 0
        for piece in self.pieces():
            if isinstance(piece, Members):
                total += piece.file_bytes()
            elif piece.type == "f":
                total += piece.size
        return total

    def grafts(self) -> list[Graft]:
        """The image grafts, in order."""
        return [i for i in self.items if isinstance(i, Graft)]

    def prepare(self) -> None:
        """Export and index every image now (pack wants all errors before it writes)."""
        for item in self.items:
            if isinstance(item, Graft):
                item.image.index()
            elif isinstance(item, KernelImage):
                for _ in item.entries():
                    pass


# ------------------------------------------------------------------------------ the filter
def _mtime(g: Graft, name: bytes, e: IndexEntry) -> int:
    return PINNED_MTIME_NS if g.docker and name in DOCKER_CREATED else e.mtime_ns


def _replaced(g: Graft, e: IndexEntry, content: bytes) -> Entry:
    name = g.prefix + e.name
    if e.name == b"etc/resolv.conf" and g.resolv_link is not None:
        return Entry(path=name, type="l", mode=e.mode, uid=e.uid, gid=e.gid,
                     mtime_ns=_mtime(g, e.name, e), linkname=g.resolv_link, xattrs=e.xattrs)
    # An image may ship these as symlinks or links; a bundle gets a plain file either way.
    mode = e.mode if e.type == "f" else 0o644
    return Entry(path=name, type="f", mode=mode, uid=e.uid, gid=e.gid,
                 mtime_ns=_mtime(g, e.name, e), size=len(content), body=content, xattrs=e.xattrs)


def _kept(g: Graft, idx: TarIndex, e: IndexEntry) -> Entry:
    name = g.prefix + e.name
    if e.type == "h":
        if e.linkname in EXCLUDE:
            # The link's target is dropped: keep the link's bytes as a file of its own.
            target = idx.find(e.linkname)
            if target is not None and idx.entry(target).type == "f":
                t = idx.entry(target)
                return Entry(path=name, type="f", mode=e.mode, uid=e.uid, gid=e.gid,
                             mtime_ns=_mtime(g, e.name, e), size=t.size, xattrs=e.xattrs,
                             body=idx.extent_of(t))
        return Entry(path=name, type="h", mode=e.mode, uid=e.uid, gid=e.gid,
                     mtime_ns=_mtime(g, e.name, e), linkname=g.prefix + e.linkname,
                     xattrs=e.xattrs)
    return Entry(path=name, type=e.type, mode=e.mode, uid=e.uid, gid=e.gid,
                 mtime_ns=_mtime(g, e.name, e), size=e.size, linkname=e.linkname,
                 devmajor=e.devmajor, devminor=e.devminor, xattrs=e.xattrs,
                 body=idx.extent_of(e) if e.type == "f" else None)


def filter_entry(g: Graft, idx: TarIndex, e: IndexEntry) -> Entry | None:
    """What one export entry becomes in the tree, or None when it is dropped."""
    if g.raw:
        return _kept(g, idx, e)
    if e.name in EXCLUDE:
        return None
    content = REPLACE.get(e.name)
    if content is not None:
        return _replaced(g, e, content)
    return _kept(g, idx, e)


def graft_entries(g: Graft) -> Iterator[Entry]:
    """The graft's entries in export order, filtered and prefixed."""
    return members(g).entries()


@dataclass(frozen=True)
class Members:
    """A graft's entries in bulk: member i of `index` becomes `graft.prefix` + its name with
    the index's fields, mtime and data, unless its name is in `special`, whose entries the
    filter changes or drops: `entry(i)` gives any member's entry (None: dropped)."""

    graft: Graft
    index: TarIndex
    special: frozenset[bytes]

    def entry(self, i: int) -> Entry | None:
        """What member i becomes in the tree, or None when it is dropped."""
        return filter_entry(self.graft, self.index, self.index.entry(i))

    def entries(self) -> Iterator[Entry]:
        """Every entry, filtered and prefixed, in the index's order."""
        g, idx = self.graft, self.index
        for e in idx:
            out = filter_entry(g, idx, e)
            if out is not None:
                yield out

    def file_bytes(self) -> int:
        """Bytes of the regular files among `entries()` (a progress bar's total), from the
        columns: only the members the filter may change are made entries."""
        cols = self.index.columns()
        total = sum(compress(cols.sizes, cols.types.translate(_IS_FILE)))
        for i in self._changeable(cols):
            was = cols.sizes[i] if cols.types[i] == TYPE_F else 0
            e = self.entry(i)
            total += (e.size if e is not None and e.type == "f" else 0) - was
        return total

    def _changeable(self, cols: Columns) -> set[int]:
        """Members whose entry may differ from their columns: hard links (the filter may give
        one its dropped target's data) and every member under a name in `special`."""
        types, names, ends = cols.types, cols.names, cols.name_ends
        found = set(of_type(types, TYPE_H))
        for name in self.special:
            at = names.find(name)
            while at >= 0:  # a hit inside or across names is no member of that name
                i = bisect_right(ends, at)
                if (ends[i - 1] if i else 0) == at and ends[i] == at + len(name):
                    found.add(i)
                at = names.find(name, at + 1)
        return found


_IS_FILE = bytes(1 if t == TYPE_F else 0 for t in range(256))  # bytes.translate table


# The names whose entries filter_entry changes: dropped or replaced (docker's filter), and
# docker's own, whose mtimes are pinned.
_FILTERED = frozenset({*EXCLUDE, *REPLACE})


def members(g: Graft) -> Members:
    """The graft's members, with the names its filter treats apart."""
    special = (DOCKER_CREATED if g.docker else frozenset()) | \
        (frozenset() if g.raw else _FILTERED)
    return Members(g, g.image.index(), special)


def flat(pieces: Iterable[Entry | Members]) -> Iterator[Entry]:
    """The entries of a walk whose grafts come as `Members`, one by one."""
    for p in pieces:
        if isinstance(p, Members):
            yield from p.entries()
        else:
            yield p


# ------------------------------------------------------------------------------ building
def prefix_dirs(path: str) -> list[Entry]:
    """A directory entry for every component of `path`, as the reference's tarPrefix."""
    out: list[Entry] = []
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts)):
        out.append(directory("/".join(parts[: i + 1]).encode()))
    return out


def image_label(info: ImageInfo, where: str) -> dict | None:
    """The image's validated org.mobyproject.config label, errors naming the container."""
    return schema.image_label(info.config, f"{where}: image {info.ref}: label {LABEL_KEY}")


@dataclass
class _Builder:
    cfg: Config
    resolve: Callable[[str], ImageHandle]
    share_by_id: bool
    resolve_layout: Callable[[str, list[str]], ImageHandle] | None = None
    view: View = field(default_factory=View)
    first_root: dict[str, str] = field(default_factory=dict)  # de-dup key -> root dir
    grafts: dict[str, Graft] = field(default_factory=dict)  # de-dup key -> its graft

    def add(self, item: Entry | Graft | KernelImage) -> None:
        self.view.items.append(item)

    def bundle(self, c: Container, id_map: dict[str, int]) -> None:
        handle = self.resolve(c.image)
        info = handle.info
        spec, runtime = oci.build_oci(c.spec, image_label(info, c.where), info.config, id_map,
                                      c.where, self.cfg.volume_map())
        readonly = bool(spec.get("root", {}).get("readonly"))
        prefix = c.bundle_path
        own_root = f"{prefix}/{'rootfs' if readonly else 'lower'}"
        key = info.id if self.share_by_id else c.image
        shared_root = self.first_root.get(key)
        if shared_root is None:
            self.view.items.extend(prefix_dirs(own_root))
            graft = Graft(prefix=own_root.encode() + b"/", image=handle)
            self.add(graft)
            self.first_root[key] = root = own_root
            self.grafts[key] = graft
        else:
            self.view.items.extend(prefix_dirs(prefix))
            root = shared_root
            graft = self.grafts[key]
        self.view.bundles.append(Bundle(path=prefix, root=root, graft=graft, readonly=readonly))
        self.add(regular(f"{prefix}/config.json".encode(), oci.config_json_bytes(spec)))
        if not readonly:
            tmp = f"{prefix}/tmp"
            self.add(directory(tmp.encode()))
            self.add(directory(f"{prefix}/rootfs".encode()))
            oci.append_mount(runtime, {"destination": "/" + tmp, "type": "tmpfs",
                                       "source": "tmpfs"})
            oci.append_mount(runtime, {"destination": "/" + tmp,
                                       "options": ["remount", "private"]})
            oci.append_mount(runtime, {
                "destination": f"/{prefix}/rootfs", "type": "overlay", "source": "overlay",
                "options": [f"lowerdir=/{root}", f"upperdir=/{tmp}/upper",
                            f"workdir=/{tmp}/work"]})
        else:
            if shared_root is not None:
                self.add(directory(f"{prefix}/rootfs".encode()))
            oci.append_mount(runtime, {"destination": f"/{prefix}/rootfs",
                                       "source": "/" + root, "options": ["bind"]})
        self.add(regular(f"{prefix}/runtime.json".encode(), oci.runtime_json_bytes(runtime)))

    def volume(self, v: Volume) -> None:
        """Today's volume: lower/ (blank, or the image as files or as an OCI layout), tmp/
        and merged/, as LinuxKit lays them out between init and onboot."""
        lower = f"{v.base}/lower"
        self.view.items.extend(prefix_dirs(lower))
        if v.format == "oci":
            if self.resolve_layout is None:
                raise UserError(f"{v.where}: format: oci needs an image source that can "
                                "write an OCI layout")
            self.add(Graft(prefix=lower.encode() + b"/",
                           image=self.resolve_layout(v.image, v.platforms), raw=True))
        elif v.image:
            # LinuxKit extracts a volume's image as it does init's: resolv.conf a symlink
            self.add(Graft(prefix=lower.encode() + b"/", image=self.resolve(v.image),
                           resolv_link=INIT_RESOLV_LINK))
        self.add(directory(f"{v.base}/tmp".encode()))
        self.add(directory(f"{v.base}/merged".encode()))

    def files(self, id_map: dict[str, int]) -> None:
        added: set[str] = set()
        for f in self.cfg.files:
            for item in file_entries(f, id_map, added, self.cfg):
                self.add(item)


def _dir_mode(mode: int) -> int:
    # Parents of a file get search permission wherever the file grants any access.
    for rwx, x in ((0o700, 0o100), (0o070, 0o010), (0o007, 0o001)):
        if mode & rwx:
            mode |= x
    return mode


# Kernel filesystems whose stat sizes say nothing of a file's content (procfs and cgroupfs
# say 0, sysfs a page for every attribute): such a source is read to its end, then sized.
PSEUDO_FS = frozenset({"proc", "sysfs", "debugfs", "tracefs", "securityfs", "cgroup",
                       "cgroup2", "configfs"})
# What such a read may hold in memory: the largest kernel file one would pack,
# /sys/kernel/btf/vmlinux, is 5.2 MiB on a 6.x kernel; /proc/kcore-like files are refused.
MAX_PSEUDO_BYTES = 16 << 20
_READ = 1 << 16


def _fs_type(dev: int) -> str:
    """The type of the mounted filesystem with this device number ('' when unknown)."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields, _, rest = line.partition(" - ")
                if fields.split()[2:3] == [want]:
                    return rest.split(" ", 1)[0]
    except OSError:
        pass
    return ""


def _read_pseudo(src: str, shown: str) -> bytes:
    """A kernel file's bytes to its end, at most MAX_PSEUDO_BYTES, never waiting."""
    try:
        # O_NONBLOCK: /proc/kmsg or trace_pipe would otherwise wait for ever
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UserError(f"{shown}: {e.strerror}") from None
    chunks: list[bytes] = []
    total = 0
    try:
        while chunk := os.read(fd, _READ):
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_PSEUDO_BYTES:
                raise UserError(f"{shown}: more than {MAX_PSEUDO_BYTES >> 20} MiB from a kernel "
                                "file, the most fusebundle reads from one")
    except BlockingIOError:
        raise UserError(f"{shown}: a kernel stream with no end (it would wait for more)") \
            from None
    except OSError as e:
        raise UserError(f"{shown}: cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _source_file(f: FileSpec) -> tuple[str, int, bytes | None] | None:
    """(absolute path, size, bytes when read now) of a `source:` item's file, or None when
    optional and missing; a kernel file is read now, as its stat size cannot be trusted."""
    spec = f.spec
    src = spec["source"]
    if src.startswith("~/"):
        src = os.path.expanduser("~") + src[1:]
    try:
        st = os.stat(src)
    except OSError as e:
        if spec.get("optional"):
            return None
        raise UserError(f"{f.where}: source {shown(spec['source'])}: {e.strerror}") from None
    if not os.path.isfile(src) or not os.access(src, os.R_OK):
        if spec.get("optional"):
            return None
        raise UserError(f"{f.where}: source {shown(spec['source'])}: not a readable file")
    if st.st_size == 0 or _fs_type(st.st_dev) in PSEUDO_FS:
        data = _read_pseudo(src, f"{f.where}: source {shown(spec['source'])}")
        return os.path.abspath(src), len(data), data
    return os.path.abspath(src), st.st_size, None


def file_entries(f: FileSpec, id_map: dict[str, int], added: set[str],
                 cfg: Config) -> list[Entry]:
    """Entries for one files: item: missing parents (once), then the item itself."""
    spec = f.spec
    path = spec["path"]
    directory_kind = bool(spec.get("directory"))
    mode = int(spec["mode"], 8) if "mode" in spec else (0o700 if directory_kind else 0o600)
    uid = oci.id_numeric(spec.get("uid", 0), id_map, f.where, "field 'uid'")
    gid = oci.id_numeric(spec.get("gid", 0), id_map, f.where, "field 'gid'")
    source: tuple[str, int, bytes | None] | None = None
    if "source" in spec:
        source = _source_file(f)
        if source is None:
            return []
    elif "metadata" in spec:
        spec = {**spec, "contents": metadata.moby_json(cfg).decode()}
    out: list[Entry] = []
    parts = path.split("/")[:-1]
    for i in range(len(parts)):
        parent = "/".join(parts[: i + 1])
        if parent not in added:
            out.append(directory(parent.encode(), _dir_mode(mode), uid, gid))
            added.add(parent)
    added.add(path)
    name = path.encode()
    if directory_kind:
        out.append(directory(name, mode, uid, gid))
    elif "symlink" in spec:
        out.append(Entry(path=name, type="l", mode=mode, uid=uid, gid=gid,
                         linkname=spec["symlink"].encode()))
    elif source is not None:
        path_, size, data = source
        body = data if data is not None else Extent.whole(path_, size)
        out.append(Entry(path=name, type="f", mode=mode, uid=uid, gid=gid, size=size,
                         body=body))
    else:
        out.append(regular(name, spec.get("contents", "").encode(), mode, uid, gid))
    return out


def build_view(cfg: Config, resolve: Callable[[str], ImageHandle],
               share_by_id: bool = False,
               resolve_layout: Callable[[str, list[str]], ImageHandle] | None = None) -> View:
    """The tree for a config; `resolve` maps an image reference to its handle, and
    `resolve_layout` (reference, platforms) to a handle on its OCI layout as a tar."""
    b = _Builder(cfg, resolve, share_by_id, resolve_layout)
    id_map = cfg.id_map()
    k = cfg.kernel
    if k.image:
        tar = "kernel.tar" if k.tar is None else ("" if k.tar == "none" else k.tar)
        b.add(KernelImage(image=resolve(k.image), cmdline=k.cmdline.encode(),
                          binary=(k.binary or "kernel").encode(), tar=tar.encode(),
                          ucode=(k.ucode or "").encode()))
    for ref in cfg.init:
        b.add(Graft(prefix=b"", image=resolve(ref), resolv_link=INIT_RESOLV_LINK))
    for v in cfg.volumes:
        b.volume(v)
    for c in cfg.containers():
        b.bundle(c, id_map)
    b.files(id_map)
    return b.view
