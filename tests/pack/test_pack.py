"""fusebundle pack against a real private dockerd: layouts, filter, de-dup, cache, atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support.imagetools import T0, T1, RootfsBuilder, import_image, list_containers

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep
LONG_DIR = "data/" + "/".join([f"segment-{i:02d}-" + "x" * 20 for i in range(8)])
LONG_FILE = LONG_DIR + "/" + "f" * 60  # > 256 bytes once prefixed
MID_FILE = "data/" + "m" * 80  # < 100 bytes in the image, > 100 once prefixed
UTF8_FILE = "data/ünïcødé/名前.txt"
HOSTS_TEXT = (b"127.0.0.1       localhost\n::1     localhost ip6-localhost ip6-loopback\n"
              b"fe00::0 ip6-localnet\nff00::0 ip6-mcastprefix\nff02::1 ip6-allnodes\n"
              b"ff02::2 ip6-allrouters\n")


def special_rootfs() -> RootfsBuilder:
    """A rootfs with every kind of entry the filter and the writer must carry."""
    r = RootfsBuilder()
    r.file("Dockerfile", "FROM scratch\n")
    r.dir("bin")
    r.file("bin/tool", b"\x7fELF-not-really", mode=0o755)
    r.file("bin/su", b"setuid", mode=0o4755)
    r.file("bin/sg", b"setgid", mode=0o2755, gid=50)
    r.file("bin/ping", b"cap", mode=0o755, xattrs={"security.capability": CAP})
    r.dir("data")
    r.file("data/orig", b"shared bytes\n", mode=0o640, uid=1000, gid=1001, mtime=T1)
    r.hardlink("data/zlink", "data/orig")  # after orig in the lexical export
    r.file(MID_FILE, b"mid")
    parts = LONG_DIR.split("/")
    for i in range(2, len(parts) + 1):
        r.dir("/".join(parts[:i]))
    r.file(LONG_FILE, b"long")
    r.dir("data/ünïcødé")
    r.file(UTF8_FILE, "ü\n")
    r.dir("dev")
    r.chardev("dev/null", 1, 3)
    r.blockdev("dev/sda", 8, 0)
    r.dir("etc")
    r.file("etc/hosts", "10.0.0.1 image-own-hosts\n")
    r.dir("home")
    r.dir("home/u", mode=0o750, uid=1000, gid=1000)
    r.file("home/u/.profile", "x=1\n", uid=1000, gid=1000)
    r.dir("run")
    r.fifo("run/fifo", mode=0o620)
    r.symlink("run/abs", "/etc/hosts")
    r.symlink("run/rel", "../data/orig")
    return r


@pytest.fixture(scope="module")
def images(dockerd, tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("images")
    special = special_rootfs().write(tmp / "special.tar")
    dotted = RootfsBuilder(raw_names=True)
    dotted.dir("./").dir("./etc/").file("./etc/motd", "dotted\n").dir("./bin/")
    dotted.file("./bin/x", "x", mode=0o755).hardlink("./bin/y", "./bin/x")
    dotted.write(tmp / "dotted.tar")
    return {
        "special": import_image(dockerd.client, special, "fbtest/special:1",
                                ['ENTRYPOINT ["/bin/tool"]', 'CMD ["--serve"]',
                                 "ENV A=1 B=two", "WORKDIR /data"]),
        "dotted": import_image(dockerd.client, tmp / "dotted.tar", "fbtest/dotted:1",
                               ['CMD ["/bin/x"]']),
    }


def _yaml(tmp_path: Path, text: str, name: str = "system.yml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _read(path: Path) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    members, data = [], {}
    with tarfile.open(path, encoding="utf-8", errors="surrogateescape") as t:
        for m in t:
            members.append(m)
            if m.isreg():
                data[m.name] = t.extractfile(m).read()
    return members, data


def _by_name(members: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in members}


def _pack(fb, cfg: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    r = fb("pack", cfg, "-o", out, *extra)
    assert r.returncode == 0, r.stderr
    return r


SPECIAL_YAML = """
onboot:
  - name: first
    image: fbtest/special:1
  - name: ro
    image: fbtest/dotted:1
    readonly: true
services:
  - name: again
    image: fbtest/special:1
    readonly: true
  - name: dotted-again
    image: fbtest/dotted:1
"""


def test_overlay_layout_filter_and_metadata(fb, images, tmp_path) -> None:
    out = tmp_path / "out.tar"
    _pack(fb, _yaml(tmp_path, SPECIAL_YAML), out)
    members, data = _read(out)
    m = _by_name(members)
    lower = "containers/onboot/000-first/lower/"
    # the bundle skeleton of an overlay bundle, in the reference's order
    names = [x.name for x in members]
    first = [n for n in names if n.startswith("containers/onboot/000-first")]
    assert first[:2] == ["containers/onboot/000-first", lower.rstrip("/")]
    assert first[-4:] == ["containers/onboot/000-first/config.json",
                          "containers/onboot/000-first/tmp", "containers/onboot/000-first/rootfs",
                          "containers/onboot/000-first/runtime.json"]
    # excluded and replaced
    for gone in (".dockerenv", "Dockerfile", "dev/console", "etc/hostname", "dev/pts", "dev/shm"):
        assert lower + gone not in m
    assert data[lower + "etc/hosts"] == HOSTS_TEXT
    assert data[lower + "etc/resolv.conf"] == b"\n# no resolv.conf configured\n"
    # metadata carried from the image
    assert m[lower + "bin/su"].mode == 0o4755
    assert m[lower + "bin/sg"].mode == 0o2755 and m[lower + "bin/sg"].gid == 50
    orig = m[lower + "data/orig"]
    assert (orig.mode, orig.uid, orig.gid, orig.mtime) == (0o640, 1000, 1001, T1)
    assert data[lower + "data/orig"] == b"shared bytes\n"
    assert m[lower + "data/zlink"].islnk()
    assert m[lower + "data/zlink"].linkname == lower + "data/orig"
    assert m[lower + "home/u"].mode == 0o750 and m[lower + "home/u"].uid == 1000
    assert m[lower + "dev/null"].ischr() and m[lower + "dev/null"].devminor == 3
    assert m[lower + "dev/sda"].isblk() and m[lower + "dev/sda"].devmajor == 8
    assert m[lower + "run/fifo"].isfifo() and m[lower + "run/fifo"].mode == 0o620
    assert m[lower + "run/abs"].linkname == "/etc/hosts"  # symlink targets stay as they are
    assert m[lower + "run/rel"].linkname == "../data/orig"
    cap = m[lower + "bin/ping"].pax_headers["SCHILY.xattr.security.capability"]
    assert cap.encode("utf-8", "surrogateescape") == CAP
    assert len((lower + LONG_FILE).encode()) > 256 and data[lower + LONG_FILE] == b"long"
    assert len((lower + MID_FILE).encode()) > 100 and data[lower + MID_FILE] == b"mid"
    assert data[lower + UTF8_FILE] == "ü\n".encode()
    assert m[lower + "bin/tool"].mtime == T0
    # config.json from the image config; runtime.json overlays onto our own lower
    cfg = json.loads(data["containers/onboot/000-first/config.json"])
    assert cfg["process"]["args"] == ["/bin/tool", "--serve"]
    assert cfg["process"]["env"] == ["A=1", "B=two"] and cfg["process"]["cwd"] == "/data"
    assert cfg["root"] == {"path": "rootfs"}
    rt = json.loads(data["containers/onboot/000-first/runtime.json"])
    assert rt["mounts"][-1]["options"][0] == "lowerdir=/containers/onboot/000-first/lower"
    assert rt["bindNS"] == {}


def test_readonly_layout_and_deduplication(fb, images, tmp_path) -> None:
    out = tmp_path / "out.tar"
    _pack(fb, _yaml(tmp_path, SPECIAL_YAML), out)
    members, data = _read(out)
    names = [x.name for x in members]
    ro = "containers/onboot/001-ro"
    # first user readonly: the image lives in its rootfs/, bound onto itself
    assert f"{ro}/rootfs/etc/motd" in names and f"{ro}/lower" not in names
    assert f"{ro}/tmp" not in names
    rt = json.loads(data[f"{ro}/runtime.json"])
    assert rt["mounts"] == [{"destination": f"/{ro}/rootfs", "source": f"/{ro}/rootfs",
                             "options": ["bind"]}]
    assert json.loads(data[f"{ro}/config.json"])["root"] == {"path": "rootfs", "readonly": True}
    # './'-prefixed source: names normalised, hard link prefixed without './'
    assert _by_name(members)[f"{ro}/rootfs/bin/y"].linkname == f"{ro}/rootfs/bin/x"
    # later users of the same string hold no copy
    again = "containers/services/again"
    assert [n for n in names if n.startswith(again)] == [
        again, f"{again}/config.json", f"{again}/rootfs", f"{again}/runtime.json"]
    rt = json.loads(data[f"{again}/runtime.json"])
    assert rt["mounts"] == [{"destination": f"/{again}/rootfs",
                             "source": "/containers/onboot/000-first/lower",
                             "options": ["bind"]}]
    dd = "containers/services/dotted-again"
    assert [n for n in names if n.startswith(dd)] == [
        dd, f"{dd}/config.json", f"{dd}/tmp", f"{dd}/rootfs", f"{dd}/runtime.json"]
    opts = json.loads(data[f"{dd}/runtime.json"])["mounts"][-1]["options"]
    assert opts[0] == f"lowerdir=/{ro}/rootfs"
    # exactly one copy of each image's files
    assert sum(n.endswith("/data/orig") for n in names) == 1
    assert sum(n.endswith("/etc/motd") for n in names) == 1


def test_share_by_id_and_by_string(fb, images, tmp_path, dockerd) -> None:
    dockerd.client.api.tag("fbtest/dotted:1", "fbtest/dotted-alias", "1")
    cfg = _yaml(tmp_path, """
onboot:
  - name: a
    image: fbtest/dotted:1
  - name: b
    image: fbtest/dotted-alias:1
""")
    out = tmp_path / "by-string.tar"
    _pack(fb, cfg, out)
    names = [m.name for m in _read(out)[0]]
    assert sum(n.endswith("/etc/motd") for n in names) == 2
    out = tmp_path / "by-id.tar"
    _pack(fb, cfg, out, "--share-by-id")
    members, data = _read(out)
    assert sum(m.name.endswith("/etc/motd") for m in members) == 1
    opts = json.loads(data["containers/onboot/001-b/runtime.json"])["mounts"][-1]["options"]
    assert opts[0] == "lowerdir=/containers/onboot/000-a/lower"


def test_init_images_merge_at_root_with_resolv_symlink(fb, images, tmp_path) -> None:
    out = tmp_path / "out.tar"
    _pack(fb, _yaml(tmp_path, "init:\n  - fbtest/dotted:1\n  - fbtest/special:1\n"), out)
    members, data = _read(out)
    m = _by_name(members)
    assert "etc/motd" in m and "bin/tool" in m and "containers" not in m
    resolv = [x for x in members if x.name == "etc/resolv.conf"]
    assert len(resolv) == 2 and all(x.issym() for x in resolv)
    assert {x.linkname for x in resolv} == {"/run/resolvconf/resolv.conf"}
    assert m["data/zlink"].linkname == "data/orig"
    assert data["etc/hosts"] == HOSTS_TEXT


def test_files_section(fb, images, tmp_path) -> None:
    src = tmp_path / "src.txt"
    src.write_bytes(b"from a source file\n")
    out = tmp_path / "out.tar"
    cfg = _yaml(tmp_path, f"""
onboot:
  - name: first
    image: fbtest/dotted:1
files:
  - path: etc/app/conf.d/a.conf
    contents: "k=v\\n"
    mode: "0640"
    uid: first
  - path: etc/app/conf.d/b.conf
    source: {src}
  - path: /var/empty
    directory: true
  - path: etc/app/link
    symlink: conf.d/a.conf
  - path: etc/missing
    source: {tmp_path}/nope
    optional: true
""")
    _pack(fb, cfg, out)
    members, data = _read(out)
    m = _by_name(members)
    names = [x.name for x in members]
    tail = names[names.index("containers/onboot/000-first/runtime.json") + 1:]
    assert tail == ["etc", "etc/app", "etc/app/conf.d", "etc/app/conf.d/a.conf",
                    "etc/app/conf.d/b.conf", "var", "var/empty", "etc/app/link"]
    assert data["etc/app/conf.d/a.conf"] == b"k=v\n"
    a = m["etc/app/conf.d/a.conf"]
    assert (a.mode, a.uid) == (0o640, 100)
    assert m["etc/app"].mode == 0o750 and m["etc/app"].uid == 100  # x added where r/w is
    assert data["etc/app/conf.d/b.conf"] == b"from a source file\n"
    assert m["etc/app/conf.d/b.conf"].mode == 0o600
    assert m["var/empty"].isdir() and m["var/empty"].mode == 0o700
    assert m["etc/app/link"].issym() and m["etc/app/link"].linkname == "conf.d/a.conf"
    assert "etc/missing" not in m


def test_second_pack_exports_nothing_and_output_is_reproducible(fb, images, tmp_path,
                                                                 cache_dir, dockerd) -> None:
    cfg = _yaml(tmp_path, SPECIAL_YAML)
    _pack(fb, cfg, tmp_path / "a.tar")
    exports = sorted(p.name for p in (cache_dir / "exports").glob("*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in (cache_dir / "exports").glob("*.tar")}
    assert len(exports) == 2
    before = {c["Id"] for c in list_containers(dockerd.client)}
    _pack(fb, cfg, tmp_path / "b.tar")
    # no new export: same files, untouched, and no container was created in between
    assert {p: p.stat().st_mtime_ns for p in (cache_dir / "exports").glob("*.tar")} == stamps
    assert {c["Id"] for c in list_containers(dockerd.client)} == before
    a, b = (tmp_path / "a.tar").read_bytes(), (tmp_path / "b.tar").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    # a fresh cache exports again (new container-create times) and still gives the same bytes
    for p in (cache_dir / "exports").iterdir():
        p.unlink()
    _pack(fb, cfg, tmp_path / "c.tar")
    assert (tmp_path / "c.tar").read_bytes() == a


def test_no_container_left_after_success(fb, images, tmp_path, dockerd) -> None:
    before = {c["Id"] for c in list_containers(dockerd.client)}
    _pack(fb, _yaml(tmp_path, SPECIAL_YAML), tmp_path / "out.tar")
    assert {c["Id"] for c in list_containers(dockerd.client)} == before


def test_export_failure_leaves_no_container_and_no_output(fb, images, tmp_path,
                                                         dockerd) -> None:
    # A cache on a tiny tmpfs: the export fails for lack of space half way.
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(small)], check=True)
    try:
        before = {c["Id"] for c in list_containers(dockerd.client)}
        out = tmp_path / "out.tar"
        r = fb("pack", _yaml(tmp_path, SPECIAL_YAML), "-o", out,
               env={"FUSEBUNDLE_CACHE_DIR": str(small)})
        assert r.returncode != 0
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert "cache" in r.stderr
        assert not out.exists() and list(tmp_path.glob(".fusebundle-*")) == []
        assert {c["Id"] for c in list_containers(dockerd.client)} == before
        assert [p.name for p in (small / "exports").glob("*.part")] == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_output_to_stdout(fb, images, tmp_path, dockerd, cache_dir) -> None:
    cfg = _yaml(tmp_path, "onboot:\n  - name: a\n    image: fbtest/dotted:1\n")
    out = tmp_path / "file.tar"
    _pack(fb, cfg, out)
    piped = tmp_path / "piped.tar"
    env = dict(os.environ, DOCKER_HOST=dockerd.host, FUSEBUNDLE_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with open(piped, "wb") as f:
        r = subprocess.run([sys.executable, "-m", "fusebundle", "pack", str(cfg), "-o", "-"],
                           stdout=f, stderr=subprocess.PIPE, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert piped.read_bytes() == out.read_bytes()


def test_several_config_files_merge(fb, images, tmp_path) -> None:
    a = _yaml(tmp_path, "onboot:\n  - name: a\n    image: fbtest/dotted:1\n", "a.yml")
    b = _yaml(tmp_path, "onboot:\n  - name: b\n    image: fbtest/dotted:1\n"
                        "services:\n  - name: s\n    image: fbtest/dotted:1\n", "b.yml")
    out = tmp_path / "out.tar"
    r = fb("pack", a, b, "-o", out)
    assert r.returncode == 0, r.stderr
    names = {m.name for m in _read(out)[0]}
    assert {"containers/onboot/000-a", "containers/onboot/001-b",
            "containers/services/s"} <= names


@pytest.fixture(scope="module")
def kernel_image(dockerd, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("kernel")
    modules = RootfsBuilder().dir("lib").dir("lib/modules").dir("lib/modules/6.1.0")
    modules.file("lib/modules/6.1.0/modules.dep", "fake.ko:\n")
    modules.file("lib/modules/6.1.0/fake.ko", b"\x00KO" * 100, mode=0o600)
    r = RootfsBuilder()
    r.file("System.map", "ffff T start\n")
    r.file("bzImage", b"\x4d\x5a" + b"K" * 5000, mode=0o600)
    r.file("kernel", b"\x4d\x5a" + b"k" * 70000, mode=0o644)
    r.file("kernel.tar", modules.tobytes())
    r.file("other.tar", modules.tobytes())
    r.write(tmp / "kernel.tar")
    import_image(dockerd.client, tmp / "kernel.tar", "fbtest/kernel:1", ['CMD ["/kernel"]'])
    return "fbtest/kernel:1"


def test_kernel_section(fb, kernel_image, images, tmp_path) -> None:
    cfg = _yaml(tmp_path, """
kernel:
  image: fbtest/kernel:1
  cmdline: "console=ttyS0 quiet"
init:
  - fbtest/dotted:1
""")
    out = tmp_path / "out.tar"
    _pack(fb, cfg, out)
    members, data = _read(out)
    names = [m.name for m in members]
    # kernel first, in the export's (lexical) order: kernel, then kernel.tar's contents
    assert names[:9] == ["boot", "boot/cmdline", "boot/kernel", "lib", "lib/modules",
                         "lib/modules/6.1.0", "lib/modules/6.1.0/modules.dep",
                         "lib/modules/6.1.0/fake.ko", "bin"]
    assert data["boot/cmdline"] == b"console=ttyS0 quiet"
    assert data["boot/kernel"] == b"\x4d\x5a" + b"k" * 70000
    assert data["lib/modules/6.1.0/fake.ko"] == b"\x00KO" * 100
    assert _by_name(members)["lib/modules/6.1.0/fake.ko"].mode == 0o600
    assert "System.map" not in names and "kernel.tar" not in names
    assert "etc/motd" in names  # the init image follows


def test_kernel_binary_and_tar_options(fb, kernel_image, tmp_path) -> None:
    cfg = _yaml(tmp_path, """
kernel:
  image: fbtest/kernel:1
  binary: bzImage
  tar: none
""")
    out = tmp_path / "out.tar"
    _pack(fb, cfg, out)
    members, data = _read(out)
    assert [m.name for m in members] == ["boot", "boot/cmdline", "boot/kernel"]
    assert data["boot/kernel"] == b"\x4d\x5a" + b"K" * 5000
    assert data["boot/cmdline"] == b""
    assert _by_name(members)["boot/kernel"].mode == 0o600
    cfg = _yaml(tmp_path, "kernel:\n  image: fbtest/kernel:1\n  tar: other.tar\n", "o.yml")
    _pack(fb, cfg, out)
    assert "lib/modules/6.1.0/fake.ko" in [m.name for m in _read(out)[0]]


def test_kernel_missing_file_is_an_error(fb, kernel_image, tmp_path) -> None:
    cfg = _yaml(tmp_path, "kernel:\n  image: fbtest/kernel:1\n  binary: vmlinuz\n")
    r = fb("pack", cfg, "-o", tmp_path / "out.tar")
    assert r.returncode != 0 and "vmlinuz" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.tar").exists()


def _creates(dockerd, since: float, until: float, image_ids: set[str]) -> list[dict]:
    """Container create events from these images in [since, until]: one per export."""
    events = dockerd.client.api.events(since=int(since), until=int(until) + 1, decode=True,
                                       filters={"type": "container", "event": "create"})
    return [e for e in events if e.get("from") in image_ids]


def test_cache_hit_creates_no_container(fb, images, tmp_path, dockerd) -> None:
    import time

    cfg = _yaml(tmp_path, SPECIAL_YAML)
    ids = set(images.values())
    time.sleep(1.1)  # event times have one-second resolution
    t0 = time.time()
    _pack(fb, cfg, tmp_path / "a.tar")
    t1 = time.time()
    assert len(_creates(dockerd, t0, t1, ids)) == 2  # two images, one export each
    time.sleep(1.1)
    t2 = time.time()
    _pack(fb, cfg, tmp_path / "b.tar")
    assert _creates(dockerd, t2, time.time(), ids) == []


def test_two_processes_share_one_cache(dockerd, tmp_path, cache_dir, fb) -> None:
    import time

    big = RootfsBuilder().dir("blob")
    for i in range(8):
        big.file(f"blob/{i}", os.urandom(4 << 20))
    big.write(tmp_path / "big.tar")
    big_id = import_image(dockerd.client, tmp_path / "big.tar", "fbtest/big:1", ['CMD ["/x"]'])
    cfg = _yaml(tmp_path, "onboot:\n  - name: a\n    image: fbtest/big:1\n")
    env = dict(os.environ, DOCKER_HOST=dockerd.host, FUSEBUNDLE_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    time.sleep(1.1)
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "fusebundle", "pack", str(cfg), "-o",
                               str(tmp_path / f"out{i}.tar")], env=env,
                              stderr=subprocess.PIPE) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert len(_creates(dockerd, t0, time.time(), {big_id})) == 1
    outs = {(tmp_path / f"out{i}.tar").read_bytes() for i in range(3)}
    assert len(outs) == 1
    assert [p.name for p in (cache_dir / "exports").iterdir() if p.suffix == ".part"] == []


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupted_export_leaves_nothing(dockerd, tmp_path, cache_dir, sig) -> None:
    import signal
    import time

    big = RootfsBuilder().dir("blob")
    for i in range(24):
        big.file(f"blob/{i}", os.urandom(8 << 20))
    big.write(tmp_path / "big.tar")
    import_image(dockerd.client, tmp_path / "big.tar", "fbtest/bigger:1", ['CMD ["/x"]'])
    (tmp_path / "big.tar").unlink()
    cfg = _yaml(tmp_path, "onboot:\n  - name: a\n    image: fbtest/bigger:1\n")
    env = dict(os.environ, DOCKER_HOST=dockerd.host, FUSEBUNDLE_CACHE_DIR=str(cache_dir),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    before = {c["Id"] for c in list_containers(dockerd.client)}
    out = tmp_path / "out.tar"
    p = subprocess.Popen([sys.executable, "-m", "fusebundle", "pack", str(cfg), "-o", str(out)],
                         env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((cache_dir / "exports").glob("*.part")):
        time.sleep(0.01)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == (130 if sig == "SIGINT" else 143), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert [x.name for x in (cache_dir / "exports").iterdir() if x.suffix in (".part", ".tar")] \
        == []
    assert {c["Id"] for c in list_containers(dockerd.client)} == before
