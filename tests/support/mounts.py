"""What the mount tests share: the conformance scenarios, the test images and their fixtures,
the mount helper, and the comparison of a mount with the pack tar."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fusebundle.cli.mount import _server_pid, find_mount
from fusebundle.fs import ops as fs_ops

from .imagetools import T1, RootfsBuilder, busybox_bytes, import_image, write_oci_layout

REPO = Path(__file__).resolve().parents[2]
CONFORMANCE = Path("/work/shared/conformance")
SCENARIOS = sorted(p.stem for p in (CONFORMANCE / "scenarios").glob("*.yml"))
CONFORMANCE_IMAGES = ("fbpub/busybox:1", "fbpub/app:1", "fbpub/conf:1")
RUNC = "/usr/sbin/runc"
CAP = bytes.fromhex("0100000200200000000000000000000000000000")

HAVE_FUSE = (os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
             and os.geteuid() == 0)

# Two images layered as init (they overlap in etc/ and bin/), with what docker export keeps of
# xattrs, devices, FIFOs, hard links, setuid bits, long and non-UTF-8 names.
SPECIAL_YML = """\
init:
  - fbtest/mnt-special:1
  - fbtest/mnt-layer:1
onboot:
  - name: hello
    image: fbpub/busybox:1
    command: ["/bin/sh", "-c", "echo hello"]
services:
  - name: sp
    image: fbtest/mnt-special:1
    readonly: true
  - name: sp2
    image: fbtest/mnt-special:1
files:
  - path: etc/fb/extra.conf
    contents: "x=1\\n"
  - path: etc/motd
    contents: "files wins\\n"
    mode: "0644"
  - path: containers/services/sp/rootfs/etc/injected
    contents: "injected\\n"
"""


def _special_rootfs() -> RootfsBuilder:
    r = RootfsBuilder()
    r.dir("bin").file("bin/busybox", busybox_bytes(), mode=0o755).symlink("bin/sh", "busybox")
    r.file("bin/ping", b"ping", mode=0o4755, xattrs={"security.capability": CAP})
    r.dir("etc").file("etc/motd", "hi\n", mtime=T1).hardlink("etc/issue", "etc/motd")
    r.dir("dev").chardev("dev/null", 1, 3).blockdev("dev/loop0", 7, 0)
    r.fifo("dev/fifo", mode=0o600)
    r.dir(b"d\xff", uid=1000, gid=1000).file(b"d\xff/f", b"x")
    r.dir("long").file("long/" + "n" * 150, "long name\n")
    r.dir("data").file("data/big.bin", bytes(range(256)) * 8192)  # 2 MiB, many reads
    return r


def _layer_rootfs() -> RootfsBuilder:
    r = RootfsBuilder()
    r.dir("etc", mode=0o750).file("etc/motd", "layer\n", mode=0o600, mtime=T1)
    r.file("etc/layer.conf", "l=1\n")
    r.dir("bin").file("bin/ping", b"replaced", mode=0o755)
    r.file("bin/sh", b"not a link any more", mode=0o755)
    r.dir("opt").dir("opt/a").file("opt/a/b", "b\n")
    return r


# ------------------------------------------------------------------------------ fixtures
def _has_image(client, ref: str) -> bool:
    try:
        client.api.inspect_image(ref)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def images(dockerd, tmp_path_factory) -> None:
    """The conformance images and the two test images, in the test engine."""
    client = dockerd.client
    if not all(_has_image(client, ref) for ref in CONFORMANCE_IMAGES):
        if not (CONFORMANCE / "load_images.sh").exists():
            pytest.skip(f"no conformance images and no {CONFORMANCE}/load_images.sh")
        d = tmp_path_factory.mktemp("rootfs")
        env = {**os.environ, "DOCKER_CLI": os.environ.get("DOCKER_CLI", "/usr/bin/docker"),
               "PYTHON": sys.executable}
        sock = dockerd.host.removeprefix("unix://")
        for cmd in ([sys.executable, str(CONFORMANCE / "make_images.py"), str(d)],
                    ["bash", str(CONFORMANCE / "load_images.sh"), sock, str(d)]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                pytest.skip(f"cannot load the conformance images: {cmd[1]}: "
                            f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    d = tmp_path_factory.mktemp("images")
    for name, builder in (("mnt-special", _special_rootfs), ("mnt-layer", _layer_rootfs)):
        tar = builder().write(d / f"{name}.tar")
        import_image(client, tar, f"fbtest/{name}:1", ['CMD ["/bin/sh"]'])


class Mounts:
    """Mounts a test made: `fb mount` in the background, always unmounted at the end."""

    def __init__(self, fb: Callable[..., subprocess.CompletedProcess], tmp: Path) -> None:
        self.fb = fb
        self.tmp = tmp
        self.points: list[Path] = []

    def point(self) -> Path:
        p = self.tmp / f"mnt{len(self.points)}"
        p.mkdir()
        self.points.append(p)
        return p

    def mount(self, config: str | Path, *args: str, mnt: Path | None = None) -> Path:
        mnt = mnt or self.point()
        r = self.fb("mount", *args, config, mnt)
        assert r.returncode == 0, r.stderr
        assert find_mount(str(mnt)) is not None
        return mnt

    def cleanup(self) -> None:
        for p in self.points:
            if find_mount(str(p)) is None:
                continue
            pid = _server_pid(str(p))
            r = self.fb("umount", p)
            if r.returncode != 0 or find_mount(str(p)) is not None:
                subprocess.run(["fusermount3", "-uz", str(p)], check=False)
                subprocess.run(["umount", "-l", str(p)], check=False,
                               stderr=subprocess.DEVNULL)
            if pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def mounts(fb, tmp_path, images) -> Iterator[Mounts]:
    if not HAVE_FUSE:
        pytest.skip("needs /dev/fuse, fusermount3 and root")
    m = Mounts(fb, tmp_path)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def special_yml(tmp_path) -> Path:
    p = tmp_path / "special.yml"
    p.write_text(SPECIAL_YML)
    return p


def _scenario(name: str) -> Path:
    return CONFORMANCE / "scenarios" / f"{name}.yml"


# ------------------------------------------------------------------------------ listings
def _norm(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


_TYPES = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.DIRTYPE: "d",
          tarfile.SYMTYPE: "l", tarfile.CHRTYPE: "c", tarfile.BLKTYPE: "b",
          tarfile.FIFOTYPE: "p"}


def pack_listing(tar: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """What extracting the pack tar gives: path -> metadata (later entries win), and the
    hard links (path -> the path they link to)."""
    want: dict[str, tuple] = {}
    links: dict[str, str] = {}
    with tarfile.open(tar, encoding="utf-8", errors="surrogateescape") as t:
        for ti in t:
            name = _norm(ti.name)
            if not name:
                continue
            if ti.islnk():
                links[name] = _norm(ti.linkname)
                want.pop(name, None)
                continue
            links.pop(name, None)
            typ = _TYPES[ti.type]
            data = t.extractfile(ti).read() if typ == "f" else None  # type: ignore[union-attr]
            xattrs = {k.removeprefix("SCHILY.xattr."): v.encode("utf-8", "surrogateescape")
                      for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            want[name] = (typ, ti.mode & 0o7777, ti.uid, ti.gid, int(ti.mtime),
                          len(data) if data is not None else 0,
                          hashlib.sha256(data).hexdigest() if data is not None else None,
                          ti.linkname if typ == "l" else "",
                          (ti.devmajor, ti.devminor) if typ in "cb" else None, xattrs)
    return want, links


def _kind(mode: int) -> str:
    for test, k in ((stat.S_ISDIR, "d"), (stat.S_ISREG, "f"), (stat.S_ISLNK, "l"),
                    (stat.S_ISCHR, "c"), (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p")):
        if test(mode):
            return k
    return "?"


def mount_listing(root: Path) -> tuple[dict[str, tuple], dict[str, tuple[int, int]]]:
    """Walk the mount: path -> metadata in pack_listing's terms, and path -> (ino, nlink)."""
    got: dict[str, tuple] = {}
    inodes: dict[str, tuple[int, int]] = {}
    base = os.fsencode(root)
    for d, dirs, files in os.walk(base):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            rel = os.fsdecode(os.path.relpath(p, base))
            k = _kind(st.st_mode)
            data = None
            if k == "f":
                with open(p, "rb") as f:
                    data = f.read()
            xattrs = {a: os.getxattr(p, a, follow_symlinks=False)
                      for a in os.listxattr(p, follow_symlinks=False)}
            got[rel] = (k, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime),
                        st.st_size if k == "f" else 0,
                        hashlib.sha256(data).hexdigest() if data is not None else None,
                        os.fsdecode(os.readlink(p)) if k == "l" else "",
                        (os.major(st.st_rdev), os.minor(st.st_rdev)) if k in "cb" else None,
                        xattrs)
            if k == "f" and len(data or b"") != st.st_size:
                got[rel] = (*got[rel][:5], f"read {len(data or b'')} bytes", *got[rel][6:])
            inodes[rel] = (st.st_ino, st.st_nlink)
    return got, inodes


def assert_same_tree(tar: Path, mnt: Path) -> dict[str, tuple]:
    want, links = pack_listing(tar)
    got, inodes = mount_listing(mnt)
    missing = sorted(set(want) - set(got) - set(links))
    extra = sorted(set(got) - set(want) - set(links))
    assert not missing and not extra, f"missing {missing[:10]}, extra {extra[:10]}"
    diffs = [(n, w, got[n]) for n, w in want.items() if got[n] != w]
    assert not diffs, "\n".join(f"{n}:\n  pack  {w}\n  mount {g}" for n, w, g in diffs[:10])
    names_of: dict[int, int] = {}
    for ino, _ in inodes.values():
        names_of[ino] = names_of.get(ino, 0) + 1
    for link, target in links.items():
        assert inodes[link][0] == inodes[target][0], f"{link} is not the inode of {target}"
        assert got[link] == got[target]
    for name, (ino, nlink) in inodes.items():
        if got[name][0] == "f":
            assert nlink == names_of[ino], f"{name}: st_nlink {nlink}, {names_of[ino]} names"
    return got


def _pack(fb, config: Path, out: Path, *args: str) -> Path:
    r = fb("pack", "-q", *args, config, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


# ------------------------------------------------------------------------------ the tree


def _resident_pages(path: Path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages in all), by mincore on a mapping of it.

    Opening the file is part of the question: the mapping itself reads nothing.
    """
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer(pages)
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
            return sum(b & 1 for b in vec.raw), pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _runc(bundle: Path, state: Path, name: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([RUNC, "--root", str(state), "run", "--bundle", str(bundle),
                               name], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        subprocess.run([RUNC, "--root", str(state), "delete", "-f", name],
                       capture_output=True, check=False)


# The preconditions of a mount of an OCI layout with the patched pyfuse3 (no engine).
NO_OPEN_MOUNT = [
    pytest.mark.skipif(not (os.path.exists("/dev/fuse") and shutil.which("fusermount3")
                            and os.geteuid() == 0), reason="needs /dev/fuse, fusermount3, root"),
    pytest.mark.skipif(not fs_ops.NO_OPEN, reason="needs the patched pyfuse3 (scripts/setup)"),
]


@contextlib.contextmanager
def mounted(layout: Path, tmp_path: Path, *args: str) -> Iterator[Path]:
    """A fresh fusebundle mount of the layout; yields the rootfs of its one container."""
    mnt = tmp_path / f"mnt{len(list(tmp_path.glob('mnt*')))}"
    mnt.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    env["FUSEBUNDLE_CACHE_DIR"] = str(tmp_path / "cache")
    cmd = [sys.executable, "-m", "fusebundle", "mount", "--from", f"oci:{layout / 'oci'}",
           *args, str(layout / "cfg.yml"), str(mnt)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        yield mnt / "containers/onboot/000-app/lower"
    finally:
        subprocess.run([sys.executable, "-m", "fusebundle", "umount", str(mnt)],
                       capture_output=True, env=env, timeout=60)
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)


NO_OPEN_REF = "fbtest/noopen:1"


def app_layout(d: Path, rootfs: RootfsBuilder) -> Path:
    """An OCI layout of one image and a config running it as `app` (what `mounted` mounts)."""
    write_oci_layout(d / "oci", NO_OPEN_REF, [rootfs.tobytes()], {"Cmd": ["/bin/sh"]})
    (d / "cfg.yml").write_text(f"onboot:\n  - name: app\n    image: {NO_OPEN_REF}\n")
    return d
