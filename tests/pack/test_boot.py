"""Boot outputs through the CLI: `pack --format cpio` against the tar, kernel+initrd, a real boot.

Images are byte-built OCI layouts (no engine). The cpio is checked three ways: its headers,
read here, against tarfile's members of the tar; GNU cpio's listing against GNU tar's; and
GNU cpio's extraction against GNU tar's, file by file. The boot takes Debian's kernel (its
vmlinuz only, cached outside the repo) into a stand-in kernel image, packs kernel+initrd and
boots it under qemu-system-x86_64 (TCG unless FUSEBUNDLE_TEST_KVM=1).
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.faulttools import cli, one_line, save_archive, temps
from support.imagetools import T1, RootfsBuilder, busybox_bytes, write_oci_layout

ROOT = os.geteuid() == 0
HAVE_CPIO = shutil.which("cpio") is not None
STANDIN_KERNEL = b"MZ" + b"standin-kernel " * 4000
MODULES_VERSION = "6.1.0-fbtest"
CMDLINE = "console=ttyS0 panic=-1"
CONFIG = {"Cmd": ["/bin/sh"]}
# The kernel's cache: a repeated run downloads nothing (overridable, e.g. for CI caches).
KERNEL_CACHE = Path(os.environ.get("FUSEBUNDLE_TEST_KERNEL_CACHE",
                                   Path.home() / ".cache" / "fusebundle-tests" / "debian-kernel"))
BOOT_TIMEOUT = 300  # s: TCG boots Debian's kernel in about 5-15 s on 2 shared cores
MARKER = "FUSEBUNDLE-BOOT-MARKER"


def _ucode_cpio(tmp: Path) -> bytes:
    """An uncompressed newc cpio made by GNU cpio: its file shows up in the booted rootfs."""
    src = tmp / "ucode-src"
    src.mkdir()
    (src / "ucode-marker").write_text("ucode came first\n")
    r = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"ucode-marker\n",
                       cwd=src, capture_output=True, check=True)
    return r.stdout


def kernel_layer(kernel: bytes, ucode: bytes) -> bytes:
    """The shape of a linuxkit/kernel image: kernel, kernel.tar (the modules), a ucode cpio."""
    modules = RootfsBuilder().dir("lib").dir("lib/modules").dir(f"lib/modules/{MODULES_VERSION}")
    base = f"lib/modules/{MODULES_VERSION}"
    modules.file(f"{base}/modules.dep", "fake.ko:\n")
    modules.file(f"{base}/fake.ko", b"\x00KO" * 101, mode=0o600, mtime=T1)
    modules.hardlink(f"{base}/again.ko", f"{base}/fake.ko")
    modules.symlink(f"{base}/build", "/usr/src/linux")
    r = RootfsBuilder()
    r.file("kernel", kernel, mode=0o644)
    r.file("kernel.tar", modules.tobytes())
    r.file("ucode.cpio", ucode, mode=0o640)
    return r.tobytes()


def rich_layer() -> bytes:
    """A busybox rootfs with every entry kind and odd metadata newc has to carry."""
    r = RootfsBuilder()
    r.dir("bin").file("bin/busybox", busybox_bytes(), mode=0o755)
    for applet in ("sh", "cat", "echo"):
        r.symlink(f"bin/{applet}", "busybox")
    r.dir("etc", mtime=T1).file("etc/motd", "motd of the onboot image\n", mtime=T1)
    r.hardlink("etc/issue", "etc/motd")
    r.dir("usr").dir("usr/share", mode=0o700)
    r.hardlink("usr/share/motd-again", "etc/motd")
    r.dir("srv", mode=0o2750, uid=1000, gid=1001, mtime=T1)
    r.file("srv/setuid", b"#!", mode=0o4755, gid=50)
    r.file("srv/three", b"abc", mode=0o600, uid=1000, gid=1001, mtime=T1 + 7)
    r.file("srv/empty", b"")
    r.file("srv/" + "n" * 150, b"a long name\n")
    r.file("srv/ünïcødé", b"u\n")
    r.chardev("srv/null", 1, 3).blockdev("srv/loop0", 7, 0).fifo("srv/fifo", mode=0o620)
    r.chardev("srv/widest", 4095, (1 << 20) - 1)  # the largest device the kernel takes
    r.symlink("srv/abs", "/etc/motd", mtime=T1)
    r.dir("tmp", mode=0o1777)
    return r.tobytes()


def init_layer() -> bytes:
    """An init image: busybox and /init, the script PID 1 runs in the booted initramfs."""
    script = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t devtmpfs dev /dev
echo "{MARKER} pid $$"
echo "containers: $(ls /containers/onboot)"
cat /ucode-marker
for b in /containers/onboot/*; do
  set --
  while IFS= read -r a; do set -- "$@" "$a"; done <<ARGS
$(sed -n '/"args"/,/]/p' "$b/config.json" | sed -n 's/^ *"\\(.*\\)",*$/\\1/p')
ARGS
  echo "running $b: $*"
  chroot "$b/rootfs" "$@"
  echo "onboot exit status $?"
done
echo "{MARKER} done"
poweroff -f
"""
    r = RootfsBuilder()
    r.dir("bin").file("bin/busybox", busybox_bytes(), mode=0o755)
    r.file("init", script, mode=0o755)
    return r.tobytes()


@dataclass
class World:
    root: Path
    layout: Path
    archives: list[Path]
    config: Path
    ucode: bytes


def _world(root: Path, kernel: bytes, onboot_cmd: list[str]) -> World:
    layout = root / "layout"
    ucode = _ucode_cpio(root)
    layers = {"fbboot/kernel:1": kernel_layer(kernel, ucode),
              "fbboot/init:1": init_layer(), "fbboot/rich:1": rich_layer()}
    archives = []
    for i, (ref, layer) in enumerate(layers.items()):
        write_oci_layout(layout, ref, [layer], CONFIG)
        archives.append(root / f"image{i}.tar")
        save_archive(archives[-1], [layer], ref)
    cmd = ", ".join(f'"{a}"' for a in onboot_cmd)
    config = root / "boot.yml"
    config.write_text(f"""kernel:
  image: fbboot/kernel:1
  cmdline: "{CMDLINE}"
  ucode: ucode.cpio
init:
  - fbboot/init:1
onboot:
  - name: hello
    image: fbboot/rich:1
    readonly: true
    command: [{cmd}]
files:
  - path: boot/extra
    contents: "not for the initrd"
""")
    return World(root, layout, archives, config, ucode)


# (no character that config.json escapes: the init script reads the args with sed)
ONBOOT_CMD = ["/bin/sh", "-c", "echo onboot-says-$((6*7)); cat /etc/issue"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return _world(tmp_path_factory.mktemp("boot"), STANDIN_KERNEL, ONBOOT_CMD)


def _pack(w: World, out: Path, *args: str, cache: Path | None = None,
          source: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    src = source or ["--from", f"oci:{w.layout}"]
    return cli("pack", "-q", *src, w.config, "-o", out, *args,
               cache=cache or w.root / "cache")


def _packed(w: World, tmp: Path, fmt: str) -> Path:
    out = tmp / ("tree.tar" if fmt == "tar" else "tree.cpio.gz")
    r = _pack(w, out, "--format", fmt)
    assert r.returncode == 0, r.stderr
    return out


# -- a newc reader of our own, to hold every header against the tar's entry --------------------
@dataclass
class Newc:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    dev: tuple[int, int]
    rdev: tuple[int, int]
    check: int
    name: bytes
    body: bytes


def read_newc(data: bytes) -> tuple[list[Newc], int]:
    """Every entry up to and including the trailer, and where the trailer ended."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b"070701", pos
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        name_at = pos + 110
        name = data[name_at:name_at + f[11] - 1]
        assert data[name_at + f[11] - 1] == 0
        body_at = (name_at + f[11] + 3) & ~3
        body = data[body_at:body_at + f[6]]
        e = Newc(f[0], f[1], f[2], f[3], f[4], f[5], f[6], (f[7], f[8]), (f[9], f[10]),
                 f[12], name, body)
        out.append(e)
        pos = (body_at + f[6] + 3) & ~3
        if name == b"TRAILER!!!":
            return out, pos


def gunzip_exact(blob: bytes) -> bytes:
    """The one gzip member's content; nothing may follow it (no zero padding either)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = d.decompress(blob) + d.flush()
    assert d.eof and d.unused_data == b""
    return data


TAR_TYPES = {tarfile.REGTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
             tarfile.SYMTYPE: stat.S_IFLNK, tarfile.LNKTYPE: stat.S_IFLNK,
             tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
             tarfile.FIFOTYPE: stat.S_IFIFO}


def _raw(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def test_every_newc_header_is_its_tar_entry(world, tmp_path):
    tar, cpio = _packed(world, tmp_path, "tar"), _packed(world, tmp_path, "cpio")
    blob = cpio.read_bytes()
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # no name, no mtime
    data = gunzip_exact(blob)
    entries, end = read_newc(data)
    # the trailer, then zeros to a multiple of 512 (gocpio's padding), then nothing
    assert len(data) % 512 == 0 and len(data) - end < 512 and not data[end:].strip(b"\0")
    trailer = entries.pop()
    assert (trailer.ino, trailer.mode, trailer.nlink, trailer.size) == (
        721 + len(entries), 0, 1, 0)
    with tarfile.open(tar, encoding="utf-8", errors="surrogateescape") as t:
        members = t.getmembers()
        assert [e.name for e in entries] == [_raw(m.name) for m in members]
        kinds = set()
        for i, (e, m) in enumerate(zip(entries, members, strict=True)):
            kinds.add(m.type)
            assert e.ino == 721 + i and e.dev == (3, 1) and e.check == 0
            assert stat.S_IFMT(e.mode) == TAR_TYPES[m.type], m.name
            assert stat.S_IMODE(e.mode) == m.mode, m.name
            assert (e.uid, e.gid, e.mtime) == (m.uid, m.gid, int(m.mtime)), m.name
            assert e.nlink == (2 if m.isdir() else 1)
            assert e.rdev == ((m.devmajor, m.devminor) if m.isdev() else (0, 0)), m.name
            if m.isfile():
                assert e.body == t.extractfile(m).read(), m.name
            elif m.issym():
                assert e.body == _raw(m.linkname)
            elif m.islnk():  # as LinuxKit writes a hard link: a symlink relative to its dir
                here = os.path.dirname(m.name)
                assert os.path.normpath(os.path.join(here, e.body.decode())) == m.linkname
                assert not e.body.startswith(b"/")
            else:
                assert e.size == 0 and e.body == b""
    # every kind of entry was there to be checked, the hard links across directories too
    assert kinds == set(TAR_TYPES)
    bodies = {e.name: e.body for e in entries}
    assert bodies[b"containers/onboot/000-hello/rootfs/usr/share/motd-again"].startswith(
        b"../../etc/")
    assert bodies[b"lib/modules/6.1.0-fbtest/again.ko"] == b"fake.ko"
    assert bodies[b"boot/kernel"] == STANDIN_KERNEL  # the whole tree: boot/ included
    assert bodies[b"boot/extra"] == b"not for the initrd"


@pytest.mark.skipif(not (ROOT and HAVE_CPIO), reason="needs root and GNU cpio")
def test_gnu_cpio_lists_and_extracts_what_gnu_tar_does(world, tmp_path):
    tar, cpio = _packed(world, tmp_path, "tar"), _packed(world, tmp_path, "cpio")
    plain = tmp_path / "tree.cpio"
    plain.write_bytes(gzip.decompress(cpio.read_bytes()))
    tar_names = subprocess.run(["tar", "-tf", tar], capture_output=True, check=True).stdout
    cpio_names = subprocess.run(["cpio", "-t", "--quiet", "-F", plain], capture_output=True,
                                check=True).stdout
    assert cpio_names.splitlines() == [n.rstrip(b"/") for n in tar_names.splitlines()]
    by_tar, by_cpio = tmp_path / "by-tar", tmp_path / "by-cpio"
    by_tar.mkdir()
    by_cpio.mkdir()
    subprocess.run(["tar", "-xpf", tar, "--numeric-owner", "-C", by_tar], check=True)
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames", "-F", plain],
                   cwd=by_cpio, check=True)
    with tarfile.open(tar) as t:
        links = {m.name: m.linkname for m in t if m.islnk()}
    compared = 0
    for top, dirs, files in os.walk(by_tar):
        for n in dirs + files:
            a = os.path.join(top, n)
            rel = os.path.relpath(a, by_tar)
            b = os.path.join(by_cpio, rel)
            sa, sb = os.lstat(a), os.lstat(b)
            if rel in links:  # a hard link, which LinuxKit writes as a relative symlink
                assert stat.S_ISLNK(sb.st_mode)
                target = os.path.normpath(os.path.join(os.path.dirname(rel), os.readlink(b)))
                assert target == links[rel]
                assert Path(b).read_bytes() == Path(a).read_bytes()
                compared += 1
                continue
            assert stat.S_IFMT(sa.st_mode) == stat.S_IFMT(sb.st_mode), rel
            assert sa.st_mode == sb.st_mode, rel
            assert (sa.st_uid, sa.st_gid) == (sb.st_uid, sb.st_gid), rel
            if stat.S_ISREG(sa.st_mode):
                assert sa.st_mtime == sb.st_mtime, rel
                assert Path(a).read_bytes() == Path(b).read_bytes(), rel
            if stat.S_ISLNK(sa.st_mode):
                assert os.readlink(a) == os.readlink(b), rel
            if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
                assert sa.st_rdev == sb.st_rdev, rel
            compared += 1
    extra = {os.path.relpath(os.path.join(top, n), by_cpio)
             for top, dirs, files in os.walk(by_cpio) for n in dirs + files}
    assert compared == len(extra) > 50


def test_cpio_to_a_pipe_equals_the_file(world, tmp_path):
    out = _packed(world, tmp_path, "cpio")
    r = subprocess.run(f"{' '.join(_cli_argv(world))} -o - | cat > {tmp_path / 'piped'}",
                       shell=True, env=_env(world), capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "piped").read_bytes() == out.read_bytes()


def _cli_argv(w: World) -> list[str]:
    import sys

    return [sys.executable, "-m", "fusebundle", "pack", "-q", "--from", f"oci:{w.layout}",
            str(w.config), "--format", "cpio"]


def _env(w: World) -> dict[str, str]:
    from support.faulttools import env_for

    return env_for(w.root / "cache")


def test_the_same_config_gives_the_same_bytes_from_any_source(world, tmp_path):
    first = _packed(world, tmp_path, "cpio").read_bytes()
    again = tmp_path / "again.cpio.gz"
    r = _pack(world, again, "--format", "cpio", cache=tmp_path / "fresh-cache",
              source=[x for a in world.archives for x in ("--from", f"docker-archive:{a}")])
    assert r.returncode == 0, r.stderr
    assert again.read_bytes() == first
    k1, k2 = tmp_path / "one", tmp_path / "two"
    assert _pack(world, k1, "--format", "kernel+initrd").returncode == 0
    assert _pack(world, k2, "--format", "kernel+initrd", cache=tmp_path / "c2").returncode == 0
    for suffix in ("-kernel", "-initrd.img", "-cmdline"):
        assert Path(f"{k1}{suffix}").read_bytes() == Path(f"{k2}{suffix}").read_bytes()


def test_kernel_initrd_splits_boot_out_as_linuxkit_does(world, tmp_path):
    out = tmp_path / "out" / "vm"
    out.parent.mkdir()
    r = _pack(world, out, "--format", "kernel+initrd")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out.parent)) == ["vm-cmdline", "vm-initrd.img", "vm-kernel"]
    assert Path(f"{out}-kernel").read_bytes() == STANDIN_KERNEL
    assert Path(f"{out}-cmdline").read_text() == CMDLINE
    initrd = Path(f"{out}-initrd.img").read_bytes()
    ucode = world.ucode
    assert initrd.startswith(ucode)  # uncompressed, ahead of the gzip member
    data = gunzip_exact(initrd[len(ucode):])
    names = [e.name for e in read_newc(data)[0]]
    whole = [e.name for e in read_newc(gunzip_exact(_packed(world, tmp_path, "cpio")
                                                    .read_bytes()))[0]]
    # the cpio of the tree less boot/'s files (boot/ itself stays), inodes renumbered
    assert names == [n for n in whole if not n.startswith(b"boot/")]
    assert b"boot" in names and b"init" in names and names[-1] == b"TRAILER!!!"


# -- bad input: one line, nothing left --------------------------------------------------------
def _bad_world(root: Path, layer: bytes) -> tuple[Path, Path]:
    layout = root / "layout"
    write_oci_layout(layout, "fbboot/bad:1", [layer], CONFIG)
    config = root / "bad.yml"
    config.write_text("onboot:\n  - name: bad\n    image: fbboot/bad:1\n")
    return layout, config


BAD = {
    # 4080 bytes in the image, past PATH_MAX under its bundle's prefix in the tree
    "long name": (lambda: RootfsBuilder().dir("d").file("d/" + "x/" * 2038 + "f", b"x"),
                  "bytes; the kernel's initramfs takes at most 4095 (PATH_MAX with its NUL)"),
    "wide device": (lambda: RootfsBuilder().chardev("dev-wide", 4096, 0),
                    "device 4096:0; the kernel's initramfs takes majors up to 4095"),
    "wide minor": (lambda: RootfsBuilder().blockdev("dev-wide", 1, 1 << 20),
                   "device 1:1048576"),
}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("fmt", ["cpio", "kernel+initrd"])
def test_an_entry_the_kernel_cannot_take_is_one_line(bad, fmt, tmp_path):
    make, why = BAD[bad]
    layout, config = _bad_world(tmp_path, make().tobytes())
    if fmt == "kernel+initrd":
        write_oci_layout(layout, "fbboot/kernel:1", [kernel_layer(STANDIN_KERNEL, b"")], CONFIG)
        config.write_text("kernel:\n  image: fbboot/kernel:1\n" + config.read_text())
    outdir = tmp_path / "out"
    outdir.mkdir()
    cache = tmp_path / "cache"
    r = cli("pack", "-q", "--from", f"oci:{layout}", config, "-o", outdir / "x", "--format", fmt,
            cache=cache, timeout=60)
    line = one_line(r.stderr)
    assert r.returncode == 1 and why in line and "containers/onboot/000-bad/lower/" in line, line
    assert len(line) < 400
    assert os.listdir(outdir) == []
    assert temps(cache) == []
    assert cli("cache", "ls", cache=cache).returncode == 0  # the store is still listable


def test_kernel_initrd_needs_a_kernel_section(world, tmp_path):
    config = tmp_path / "nokernel.yml"
    config.write_text("onboot:\n  - name: hello\n    image: fbboot/rich:1\n")
    r = cli("pack", "--from", f"oci:{world.layout}", config, "-o", tmp_path / "vm",
            "--format", "kernel+initrd", cache=tmp_path / "cache")
    assert r.returncode == 1
    assert "kernel+initrd needs a kernel: section" in one_line(r.stderr)
    assert os.listdir(tmp_path) == ["nokernel.yml"]  # not even the store was filled


def test_kernel_initrd_to_stdout_is_refused(world, tmp_path):
    r = cli("pack", "--from", f"oci:{world.layout}", world.config, "-o", "-",
            "--format", "kernel+initrd", cache=tmp_path / "cache")
    assert r.returncode == 1 and r.stdout == ""
    assert "kernel+initrd writes three files" in one_line(r.stderr)
    assert not (tmp_path / "cache").exists()


# -- the real boot ---------------------------------------------------------------------------
def debian_vmlinuz() -> bytes:
    """Debian's amd64 kernel image, from the linux-image-amd64 package's dependency (cached)."""
    KERNEL_CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(KERNEL_CACHE.glob("linux-image-*-amd64_*.deb"))
    if not debs:
        deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True,
                              text=True, check=False).stdout
        names = [line.split(":", 1)[1].strip() for line in deps.splitlines()
                 if line.strip().startswith("Depends: linux-image-")]
        if not names:
            pytest.skip("apt knows no linux-image-amd64 (apt-get update never reached its "
                        "mirror)")
        r = subprocess.run(["apt-get", "download", names[0]], cwd=KERNEL_CACHE,
                           capture_output=True, text=True, check=False, timeout=600)
        debs = sorted(KERNEL_CACHE.glob("linux-image-*-amd64_*.deb"))
        if r.returncode != 0 or not debs:
            pytest.skip(f"apt-get download {names[0]} failed (no mirror?): "
                        f"{r.stderr.strip().splitlines()[-1:]}")
    deb = debs[-1]
    vmlinuz = KERNEL_CACHE / (deb.name + ".vmlinuz")
    if not vmlinuz.exists():
        unpacked = KERNEL_CACHE / "unpacked.tmp"
        shutil.rmtree(unpacked, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", deb, unpacked], check=True)
        found = sorted((unpacked / "boot").glob("vmlinuz-*"))
        assert found, f"no boot/vmlinuz-* in {deb}"
        shutil.copyfile(found[0], str(vmlinuz) + ".part")
        os.rename(str(vmlinuz) + ".part", vmlinuz)
        shutil.rmtree(unpacked)
    return vmlinuz.read_bytes()


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="no qemu-system-x86_64 (scripts/setup installs qemu-system-x86)")
def test_kernel_initrd_boots_under_qemu(tmp_path):
    w = _world(tmp_path, debian_vmlinuz(), ONBOOT_CMD)
    out = tmp_path / "vm"
    r = _pack(w, out, "--format", "kernel+initrd")
    assert r.returncode == 0, r.stderr
    accel = ["-accel", "kvm", "-cpu", "host"] if os.environ.get("FUSEBUNDLE_TEST_KVM") == "1" \
        else ["-accel", "tcg"]
    cmd = ["qemu-system-x86_64", *accel, "-m", "512", "-nographic", "-no-reboot",
           "-serial", "mon:stdio", "-kernel", f"{out}-kernel", "-initrd", f"{out}-initrd.img",
           "-append", Path(f"{out}-cmdline").read_text()]
    try:
        run = subprocess.run(cmd, capture_output=True, timeout=BOOT_TIMEOUT,
                             stdin=subprocess.DEVNULL, check=False)
        console = run.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:  # subprocess.run killed qemu
        raise AssertionError(f"no poweroff within {BOOT_TIMEOUT} s:\n"
                             f"{(e.stdout or b'').decode(errors='replace')[-3000:]}") from None
    tail = console[-4000:] + "\nqemu's stderr: " + run.stderr.decode(errors="replace")[-1000:]
    assert f"{MARKER} pid 1" in console, tail
    assert "containers: 000-hello" in console, tail
    assert "ucode came first" in console, tail  # the ucode cpio was unpacked too
    # the onboot container's own command, run in its own rootfs: its /etc/issue, not init's
    assert "onboot-says-42" in console and "motd of the onboot image" in console, tail
    assert "onboot exit status 0" in console and f"{MARKER} done" in console, tail
    assert run.returncode == 0, tail


def test_io_helpers_read_their_own_fixtures():
    # The newc reader above, on GNU cpio's bytes: names, sizes and trailer as cpio wrote them.
    data = _ucode_from_memory()
    entries, end = read_newc(data)
    assert [e.name for e in entries] == [b"ucode-marker", b"TRAILER!!!"]
    assert entries[0].body == b"ucode came first\n" and end <= len(data)
    with pytest.raises(AssertionError):
        gunzip_exact(gzip.compress(b"x", mtime=0) + b"\0\0\0\0")


def _ucode_from_memory() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return _ucode_cpio(Path(d))



@pytest.mark.parametrize("how", ["SIGTERM", "kill -9"])
def test_kernel_initrd_stopped_before_its_renames_leaves_nothing(world, tmp_path, how):
    import signal

    from support.faulttools import kill9, spawn, stopped, wait_for

    out = tmp_path / "out" / "vm"
    out.parent.mkdir()
    cache = tmp_path / "cache"
    p = spawn("pack", "-q", "--from", f"oci:{world.layout}", world.config, "-o", out,
              "--format", "kernel+initrd", cache=cache, FUSEBUNDLE_TEST_STOP="pack-write")
    wait_for(lambda: stopped(p.pid) or p.poll() is not None, "pack to stop before renaming")
    assert p.poll() is None, p.communicate()
    assert len(temps(out.parent)) == 3  # the three outputs, complete, under temporary names
    if how == "SIGTERM":
        p.send_signal(signal.SIGTERM)
        p.send_signal(signal.SIGCONT)
        _, err = p.communicate(timeout=60)
        assert p.returncode == 143 and one_line(err) == "fusebundle: terminated"
        assert os.listdir(out.parent) == []
    else:
        kill9(p)
        r = _pack(world, out, "--format", "kernel+initrd", cache=cache)  # cleans up after it
        assert r.returncode == 0, r.stderr
        assert sorted(os.listdir(out.parent)) == ["vm-cmdline", "vm-initrd.img", "vm-kernel"]
    assert temps(cache) == []


@pytest.mark.parametrize("fmt", ["cpio", "kernel+initrd"])
def test_an_output_directory_that_is_missing_is_one_line(world, tmp_path, fmt):
    r = _pack(world, tmp_path / "no" / "vm", "--format", fmt, cache=tmp_path / "cache")
    assert r.returncode == 1
    assert "does not exist" in one_line(r.stderr) and not (tmp_path / "no").exists()
