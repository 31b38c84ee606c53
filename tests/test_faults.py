"""Faults on real processes: kill -9 at each stage, full and failing disks, a store someone
damaged, eight processes sharing one store, a mount whose store is pruned or whose tar is cut,
and hostile layers in a hand-made docker save archive, all through the CLI.

Images are small OCI layouts written here (tests/faulttools.py); a process is killed at a
known point either where a FIFO blob stalls it or where FUSEBUNDLE_TEST_STOP stops it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.faulttools import (
    BIG,
    Images,
    StallingRegistry,
    cli,
    kill9,
    locks_free,
    one_line,
    save_archive,
    sha,
    spawn,
    stopped,
    tar_bytes,
    tar_member,
    temps,
    wait_for,
)

ROOT = os.geteuid() == 0
HAVE_FUSE = ROOT and os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def reference(images: Images, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Each config packed by an undisturbed run, in a cache of its own."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for name, cfg in images.configs.items():
        r = cli("pack", "--from", f"oci:{images.layout}", cfg, "-o", root / f"{name}.tar",
                cache=root / "cache")
        assert r.returncode == 0, r.stderr
        out[name] = (root / f"{name}.tar").read_bytes()
    # Not only equal to each other: the files are the layers' bytes.
    with tarfile.open(fileobj=io.BytesIO(out["one"])) as t:
        f = t.extractfile("containers/onboot/000-one/lower/base/big.txt")
        assert f is not None and f.read() == BIG
    return out


def _pack(images: Images, cache: Path, out: Path, name: str = "one",
          **extra: str) -> subprocess.CompletedProcess[str]:
    return cli("pack", "--from", f"oci:{images.layout}", images.configs[name], "-o", out,
               cache=cache, **extra)


def _assert_clean(cache: Path, *dirs: Path) -> None:
    assert temps(cache, *dirs) == []
    assert locks_free(cache)


# ------------------------------------------------------------------------------ kill -9
STAGES = [("pack", "layer-written"), ("pack", "layer-indexed"), ("pack", "merge"),
          ("pack", "pack-write"), ("pull", "layer-written"), ("pull", "merge")]


@pytest.mark.parametrize("command,stage", STAGES)
def test_killed_at_a_stage_leaves_nothing_half_done(images, reference, tmp_path, command,
                                                    stage):
    cache, out = tmp_path / "cache", tmp_path / "out" / "one.tar"
    out.parent.mkdir()
    args = ["-o", out] if command == "pack" else []
    p = spawn(command, "--from", f"oci:{images.layout}", images.configs["one"], *args,
              cache=cache, FUSEBUNDLE_TEST_STOP=stage)
    wait_for(lambda: stopped(p.pid) or p.poll() is not None, f"{command} to stop at {stage}")
    assert p.poll() is None, p.communicate()
    kill9(p)
    left = temps(cache, out.parent)
    assert not out.exists()
    if stage.startswith("layer-"):
        assert any(n.endswith(".part") for n in left), left  # killed with a layer half-stored
    if stage == "pack-write":
        assert [os.path.basename(n) for n in left if str(out.parent) in n][0].startswith(
            ".one.tar.fusebundle-")
    if stage == "merge":
        # A merged index half-written by a writer killed in save() looks like this.
        stale = cache / "merged" / f".{images.config_hex('fbtest/one:1')}.idx.x1y2z3.part"
        stale.parent.mkdir(exist_ok=True)
        stale.write_bytes(b"{half")
    if command == "pull":
        r = cli("pull", "--from", f"oci:{images.layout}", images.configs["one"], cache=cache)
        assert r.returncode == 0, r.stderr
        assert (cache / "merged" / (images.config_hex("fbtest/one:1") + ".idx")).exists()
    r = _pack(images, cache, out)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == reference["one"]
    _assert_clean(cache, out.parent)
    for layer in ("base", "one"):
        assert sha(images.layer_path(cache, layer).read_bytes()) == images.diff_id(layer)


def test_pack_removes_only_dead_writers_temp_files(images, reference, tmp_path):
    import fcntl

    out = tmp_path / "one.tar"
    dead = tmp_path / ".one.tar.fusebundle-dead.part"  # as a killed pack leaves it
    live = tmp_path / ".one.tar.fusebundle-live.part"
    old_new = tmp_path / ".one.tar.fusebundle-old.new"  # killed before it was locked
    young_new = tmp_path / ".one.tar.fusebundle-young.new"
    other = tmp_path / ".two.tar.fusebundle-dead.part"  # another output's: not ours to judge
    for p in (dead, live, old_new, young_new, other):
        p.write_bytes(b"half a tar")
    os.utime(old_new, (1, 1))
    with open(live, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # a pack that is still writing
        r = _pack(images, tmp_path / "cache", out)
        assert r.returncode == 0, r.stderr
    assert out.read_bytes() == reference["one"]
    assert not dead.exists() and not old_new.exists()
    assert live.exists() and young_new.exists() and other.exists()


def _part_growing(cache: Path) -> bool:
    parts = list((cache / "layers" / "sha256").glob(".*.part")) if cache.exists() else []
    return any(p.stat().st_size > 0 for p in parts)


@pytest.fixture
def stalling(images: Images) -> Iterator[StallingRegistry]:
    reg = StallingRegistry(images, sha(images.blob_path("base").read_bytes()))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.mark.parametrize("command", ["pull", "pack"])
def test_killed_mid_download_and_decompression(images, reference, tmp_path, stalling, command):
    cache = tmp_path / "cache"
    cfg = stalling.config(images, "one")
    args = ["--from", "registry", "--insecure-registry", stalling.address, cfg]
    if command == "pack":
        args += ["-o", tmp_path / "one.tar"]
    p = spawn(command, *args, cache=cache)
    wait_for(lambda: _part_growing(cache) or p.poll() is not None, "a growing .part")
    assert p.poll() is None, p.communicate()
    kill9(p)
    assert not images.layer_path(cache, "base").exists()
    stalling.release.set()
    r = cli(command, *args, cache=cache)
    assert r.returncode == 0, r.stderr
    if command == "pull":
        # The killed run left nothing usable of the base layer (2.7 MiB): this run fetched it.
        # (The small layer may or may not have been stored before the kill.)
        m = re.match(r"pulled 1 images: \d layers fetched \(([\d.]+) MiB\)",
                     r.stdout.splitlines()[-1])
        assert m is not None and float(m.group(1)) > 2.5, r.stdout
    else:
        assert (tmp_path / "one.tar").read_bytes() == reference["one"]
    _assert_clean(cache, tmp_path)
    assert sha(images.layer_path(cache, "base").read_bytes()) == images.diff_id("base")


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_mount_killed_mid_download(images, reference, tmp_path, stalling):
    from fusebundle.cli.mount import _server_pid, find_mount

    cache, mnt = tmp_path / "cache", tmp_path / "mnt"
    mnt.mkdir()
    cfg = stalling.config(images, "one")
    reader = None
    try:
        r = cli("mount", "--from", "registry", "--insecure-registry", stalling.address, cfg,
                mnt, "--log", tmp_path / "mount.log", cache=cache)
        assert r.returncode == 0, r.stderr
        pid = _server_pid(str(mnt))
        assert pid is not None
        # The first look inside loads the image: the download starts and stalls.
        reader = subprocess.Popen(["ls", "-R", str(mnt)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        wait_for(lambda: _part_growing(cache), "a growing .part")
        os.kill(pid, 9)
        reader.wait(30)
    finally:
        stalling.release.set()
        if find_mount(str(mnt)) is not None:
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        if reader is not None and reader.poll() is None:
            reader.kill()
    assert not images.layer_path(cache, "base").exists()
    out = tmp_path / "one.tar"
    r = cli("pack", "--from", "registry", "--insecure-registry", stalling.address, cfg, "-o",
            out, cache=cache)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == reference["one"]
    _assert_clean(cache, tmp_path)


# ------------------------------------------------------------------------------ full, failing
@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mount)")


@needs_root
def test_full_cache_dir_is_one_line_and_the_store_stays_consistent(images, reference, tmp_path):
    with _tmpfs(tmp_path / "cache", "2m") as cache:
        out = tmp_path / "one.tar"
        r = _pack(images, cache, out)
        assert r.returncode == 1
        line = one_line(r.stderr)
        blob = sha(images.blob_path("base").read_bytes())
        assert line.startswith(f"fusebundle: image fbtest/one:1: layer {blob}: "), line
        assert line.endswith("No space left on device"), line
        assert not out.exists()
        assert not images.layer_path(cache, "base").exists()
        _assert_clean(cache, tmp_path)
        subprocess.run(["mount", "-o", "remount,size=32m", str(cache)], check=True)
        r = _pack(images, cache, out)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == reference["one"]


@needs_root
def test_full_output_dir_is_one_line_and_leaves_no_file(images, tmp_path):
    with _tmpfs(tmp_path / "out", "1m") as outdir:
        r = _pack(images, tmp_path / "cache", outdir / "one.tar")
        assert r.returncode == 1
        line = one_line(r.stderr)
        assert "one.tar: write failed: No space left on device" in line, line
        assert os.listdir(outdir) == []


class FailingDisk:
    """An ext4 on a loop device whose backing file is cut below the file system's size: writes
    that land past the cut fail with EIO (seen at fsync).  Without a journal the file system
    goes on; with one, ext4 aborts the journal and turns read-only (EROFS from then on)."""

    def __init__(self, root: Path, journal: bool) -> None:
        self.disk, self.mnt = root / "disk.img", root / "eio"
        self.mnt.mkdir()
        subprocess.run(["truncate", "-s", "32M", str(self.disk)], check=True)
        features = [] if journal else ["-O", "^has_journal"]
        subprocess.run(["mkfs.ext4", "-q", "-F", *features, str(self.disk)], check=True)
        self.dev = subprocess.run(["losetup", "-f", "--show", str(self.disk)], check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.mount()

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "errors=continue", self.dev, str(self.mnt)], check=True)

    def cut(self, size: str) -> None:
        subprocess.run(["truncate", "-s", size, str(self.disk)], check=True)
        subprocess.run(["losetup", "-c", self.dev], check=True)

    def repair(self) -> None:
        """Give the disk its size back, and (after an abort) fsck it and mount it again."""
        self.cut("32M")
        subprocess.run(["umount", str(self.mnt)], check=True)
        subprocess.run(["e2fsck", "-fy", str(self.dev)], capture_output=True, check=False)
        self.mount()

    def close(self) -> None:
        subprocess.run(["umount", str(self.mnt)], check=False)
        subprocess.run(["losetup", "-d", self.dev], check=False)


@needs_root
@pytest.mark.parametrize("where,journal", [("cache", False), ("output", False),
                                           ("cache", True)])
def test_eio_is_one_line_and_nothing_half_written(images, reference, tmp_path, where, journal):
    disk = FailingDisk(tmp_path, journal)
    try:
        cache = disk.mnt / "cache" if where == "cache" else tmp_path / "cache"
        out = (tmp_path if where == "cache" else disk.mnt) / "one.tar"
        disk.cut("14M")
        r = _pack(images, cache, out)
        assert r.returncode == 1, r.stderr
        line = one_line(r.stderr)
        # With a journal, ext4 turns read-only on its first EIO: the next write meets EROFS.
        assert ("Read-only file system" if journal else "Input/output error") in line, line
        assert not out.exists()
        if where == "cache":
            assert not images.layer_path(cache, "base").exists()
        if not journal:  # (read-only, the temporary file cannot be removed: the next run does)
            assert temps(cache, out.parent) == []
        disk.repair()
        r = _pack(images, cache, out)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == reference["one"]
        assert temps(cache, out.parent) == []
    finally:
        disk.close()


# ------------------------------------------------------------------------------ damaged store
@pytest.fixture
def filled(images: Images, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    r = cli("pull", "--from", f"oci:{images.layout}", images.configs["one"], cache=cache)
    assert r.returncode == 0, r.stderr
    return cache


def _ingests(events: Path) -> list[str]:
    return events.read_text().split() if events.exists() else []


def _flip_keeping_stat(path: Path, at: int) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x20]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_ino == st.st_ino


@pytest.mark.parametrize("damage", ["truncate", "flip-same-stat", "flip-and-touch"])
def test_a_damaged_layer_is_dropped_and_fetched_again(images, reference, filled, tmp_path,
                                                      damage):
    layer = images.layer_path(filled, "base")
    at = images.tars["base"].index(b"line 0050000")
    if damage == "truncate":
        os.truncate(layer, layer.stat().st_size // 2)
    elif damage == "flip-same-stat":
        _flip_keeping_stat(layer, at)
    else:
        with open(layer, "r+b") as f:
            f.seek(at)
            f.write(b"LINE")
    events = tmp_path / "events"
    out = tmp_path / "one.tar"
    r = _pack(images, filled, out, FUSEBUNDLE_TEST_EVENTS=str(events))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == reference["one"]
    line = one_line(r.stderr)  # a warning: the pack goes on
    assert line.startswith(f"fusebundle: warning: image fbtest/one:1: stored layer "
                           f"{images.diff_id('base')} is corrupt"), line
    assert line.endswith("removed it from the store; fetching it again"), line
    assert _ingests(events) == ["ingested", images.diff_id("base")]
    assert sha(layer.read_bytes()) == images.diff_id("base")
    _assert_clean(filled, tmp_path)


def test_a_damaged_layer_without_a_source_is_one_line(images, filled, tmp_path):
    layer = images.layer_path(filled, "one")
    _flip_keeping_stat(layer, images.tars["one"].index(b"file 3"))
    out = tmp_path / "one.tar"
    r = cli("pack", "--from", "store", images.configs["one"], "-o", out, cache=filled)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert f"stored layer {images.diff_id('one')} is corrupt" in line
    assert "no source was given" in line and "fbtest/one:1" in line
    assert not out.exists() and not layer.exists()


@pytest.mark.parametrize("which", ["layer", "merged"])
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_index_is_rebuilt(images, reference, filled, tmp_path, damage, which):
    merged = filled / "merged" / (images.config_hex("fbtest/one:1") + ".idx")
    idx = images.layer_path(filled, "one").with_suffix(".tar.idx") if which == "layer" \
        else merged
    good = idx.read_bytes()
    if damage == "truncate":
        os.truncate(idx, len(good) - 7)
    else:
        _flip_keeping_stat(idx, len(good) - 100)
    if which == "layer":
        merged.unlink()  # so that the layer indexes are read again
    events = tmp_path / "events"
    out = tmp_path / "one.tar"
    r = _pack(images, filled, out, FUSEBUNDLE_TEST_EVENTS=str(events))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == reference["one"]
    assert idx.read_bytes() == good  # rebuilt from the (intact) tar
    assert _ingests(events) == []  # the tar hashed right: not fetched again


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_a_mount_fetches_a_damaged_layer_again(images, filled, tmp_path):
    from fusebundle.cli.mount import find_mount

    layer = images.layer_path(filled, "base")
    os.truncate(layer, layer.stat().st_size - 5000)
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    mnt.mkdir()
    r = cli("mount", "--from", f"oci:{images.layout}", images.configs["one"], mnt, "--log", log,
            cache=filled)
    assert r.returncode == 0, r.stderr
    try:
        got = (mnt / "containers/onboot/000-one/lower/base/big.txt").read_bytes()
        assert got == BIG
        assert f"stored layer {images.diff_id('base')} is corrupt" in log.read_text()
        assert sha(layer.read_bytes()) == images.diff_id("base")
    finally:
        if find_mount(str(mnt)) is not None:
            cli("umount", mnt, cache=filled)


# ------------------------------------------------------------------------------ eight at once
@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_eight_processes_share_one_store(images, reference, tmp_path):
    from fusebundle.cli.mount import find_mount

    cache, events, mnt = tmp_path / "cache", tmp_path / "events", tmp_path / "mnt"
    mnt.mkdir()
    src = ["--from", f"oci:{images.layout}"]
    ev = {"FUSEBUNDLE_TEST_EVENTS": str(events)}
    jobs = {
        "pack-one": ["pack", *src, images.configs["one"], "-o", tmp_path / "one.tar"],
        "pack-two": ["pack", *src, images.configs["two"], "-o", tmp_path / "two.tar"],
        "pack-both": ["pack", *src, images.configs["both"], "-o", tmp_path / "both.tar"],
        "pull-both": ["pull", *src, images.configs["both"]],
        "pull-two": ["pull", *src, images.configs["two"]],
        "mount-both": ["mount", *src, images.configs["both"], mnt],
        "prune-1": ["cache", "prune"],
        "prune-2": ["cache", "prune"],
    }
    procs = {k: spawn(*v, cache=cache, **ev) for k, v in jobs.items()}
    try:
        outs = {k: p.communicate(timeout=120) for k, p in procs.items()}
        for k, p in procs.items():
            assert p.returncode == 0, (k, outs[k])
        got = (mnt / "containers/onboot/001-two/lower/base/big.txt").read_bytes()
        assert got == BIG
        r = cli("cache", "prune", cache=cache)  # while the mount holds its layers
        assert r.returncode == 0, r.stderr
    finally:
        if find_mount(str(mnt)) is not None:
            cli("umount", mnt, cache=cache)
    for name in ("one", "two", "both"):
        assert (tmp_path / f"{name}.tar").read_bytes() == reference[name]
    ingested = _ingests(events)[1::2]
    assert sorted(ingested) == sorted(images.diff_id(x) for x in ("base", "one", "two"))
    for layer in ("base", "one", "two"):  # recorded by the pulls: kept by every prune
        assert images.layer_path(cache, layer).exists()
    _assert_clean(cache, tmp_path)


# ------------------------------------------------------------------------------ a live mount
@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_a_mount_survives_prune_and_reports_a_cuttar_bytes(images, tmp_path):
    from fusebundle.cli.mount import find_mount

    cache, mnt, log = tmp_path / "cache", tmp_path / "mnt", tmp_path / "mount.log"
    mnt.mkdir()
    lower = mnt / "containers/onboot/000-one/lower"
    r = cli("mount", "--from", f"oci:{images.layout}", images.configs["one"], mnt, "--log", log,
            cache=cache)
    assert r.returncode == 0, r.stderr
    try:
        assert (lower / "one/f0.txt").read_bytes() == b"file 0 of image one\n" * 50
        for p in (cache / "images").iterdir():
            p.unlink()  # no record names the layers any more: only the mount holds them
        r = cli("cache", "prune", cache=cache)
        assert r.returncode == 0, r.stderr
        for layer in ("base", "one"):
            assert images.layer_path(cache, layer).exists()
            assert f"kept layer {images.diff_id(layer)}" in r.stdout, r.stdout
            assert "(in use by a running fusebundle)" in r.stdout
        assert (lower / "one/f1.txt").read_bytes() == b"file 1 of image one\n" * 50
        layer = images.layer_path(cache, "one")
        with open(layer, "r+b") as f:  # someone writes into the tar under the mount
            f.truncate(layer.stat().st_size // 2)
        with pytest.raises(OSError) as e:
            (lower / "one/f7.txt").read_bytes()
        assert e.value.errno == 5
        # The base layer's tar replaced by a copy of itself: the same bytes, another file.
        base = images.layer_path(cache, "base")
        shutil.copyfile(base, base.with_suffix(".copy"))
        os.replace(base.with_suffix(".copy"), base)
        with pytest.raises(OSError) as e:
            (lower / "base/hello.txt").read_bytes()
        assert e.value.errno == 5
        text = log.read_text()
        for p in (layer, base):
            assert f"{p}: changed or removed since it was indexed" in text, text
    finally:
        if find_mount(str(mnt)) is not None:
            cli("umount", mnt, cache=cache)


# ------------------------------------------------------------------------------ hostile layers
def _hostile() -> dict[str, bytes]:
    ok = tar_bytes([tar_member("etc/ok", b"fine\n")])
    cut = tar_bytes([tar_member("a.txt", b"x" * 700), tar_member("b.txt", b"y" * 10)])
    # 700 bytes of data end 188 bytes into their second block: cut inside the padding.
    cut = cut[: 512 + 700 + 100]
    pax = bytearray(tar_bytes([tar_member("p.txt", b"z", pax_headers={"comment": "c"})]))
    at = pax.index(b" comment=c\n") - 2
    pax[at : at + 2] = b"99"  # a record length that runs past the header's end
    return {
        "escaping hard link": tar_bytes([tar_member("x", type=tarfile.LNKTYPE,
                                            linkname="../../../etc/shadow")]),
        "cut inside padding": cut,
        "hostile PAX header": bytes(pax),
        "ok": ok,
    }


WHY = {"escaping hard link": "hostile hard link target b'../../../etc/shadow'",
       "cut inside padding": "truncated", "hostile PAX header": "malformed PAX record"}


@pytest.mark.parametrize("alone", [True, False], ids=["bad-only", "good-and-bad"])
@pytest.mark.parametrize("bad", list(WHY))
def test_a_hostile_layer_through_the_cli(tmp_path, bad, alone):
    layers = _hostile()
    archive = tmp_path / "img.tar"
    save_archive(archive, [layers[bad]] if alone else [layers["ok"], layers[bad]],
                    "fbtest/bad:1")
    cfg = tmp_path / "bad.yml"
    cfg.write_text("onboot:\n  - name: bad\n    image: fbtest/bad:1\n")
    cache, out = tmp_path / "cache", tmp_path / "out" / "bad.tar"
    out.parent.mkdir()
    r = cli("pack", "--from", f"docker-archive:{archive}", cfg, "-o", out, cache=cache)
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert line.startswith(f"fusebundle: image fbtest/bad:1: layer {sha(layers[bad])}: "
                           f"not a valid tar: {WHY[bad]}"), line
    assert os.listdir(out.parent) == []
    assert temps(cache) == []
    assert not (cache / "images").exists() or os.listdir(cache / "images") == []
    assert not (cache / "merged").exists() or os.listdir(cache / "merged") == []
    stored = sorted(os.listdir(cache / "layers" / "sha256"))
    if alone:
        assert stored == []
    else:
        # The good layer was verified and is kept for a later run; no record names it, so
        # `cache prune` takes it.
        assert stored == [sha(layers["ok"])[7:] + ".tar", sha(layers["ok"])[7:] + ".tar.idx"]
        r = cli("cache", "prune", cache=cache)
        assert r.returncode == 0, r.stderr
        assert os.listdir(cache / "layers" / "sha256") == []
