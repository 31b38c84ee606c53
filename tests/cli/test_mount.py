"""fusebundle mount on real FUSE mounts, against a real dockerd.

The reference for every check is `fusebundle pack`: walking the mount must give exactly the
entries, metadata and bytes that the pack tar holds (read header by header with tarfile, never
extracted).  Every mount is unmounted by a finalizer, also when a test fails.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from support.imagetools import T1, RootfsBuilder, import_image
from support.mounts import (
    CAP,
    REPO,
    RUNC,
    SCENARIOS,
    _layer_rootfs,
    _pack,
    _resident_pages,
    _runc,
    _scenario,
    assert_same_tree,
    mount_listing,
    pack_listing,
)

from fusebundle.cli.mount import _alive, _server_pid, find_mount


@pytest.mark.skipif(not SCENARIOS, reason="no conformance scenarios")
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_mount_shows_the_pack_tree(scenario, fb, mounts, tmp_path):
    config = _scenario(scenario)
    tar = _pack(fb, config, tmp_path / "pack.tar")
    mnt = mounts.mount(config)
    m = find_mount(str(mnt))
    assert m is not None and m.fstype == "fuse.fusebundle" and m.source == "fusebundle"
    assert_same_tree(tar, mnt)


def test_layers_files_and_special_entries(fb, mounts, special_yml, tmp_path):
    tar = _pack(fb, special_yml, tmp_path / "pack.tar")
    mnt = mounts.mount(special_yml)
    got = assert_same_tree(tar, mnt)
    # the later init image wins, files: wins over both, directories merge
    assert (mnt / "etc/motd").read_text() == "files wins\n"
    assert (mnt / "bin/ping").read_bytes() == b"replaced"
    assert {"layer.conf", "issue", "fb", "hosts"} <= set(os.listdir(mnt / "etc"))
    assert got["etc/resolv.conf"][7] == "/run/resolvconf/resolv.conf"
    assert got["dev/null"][0] == "c" and got["dev/null"][8] == (1, 3)
    assert got["dev/fifo"][0] == "p"
    lower = "containers/services/sp/rootfs"
    assert got[f"{lower}/bin/ping"][9] == {"security.capability": CAP}
    assert got[f"{lower}/bin/ping"][1] == 0o4755
    assert (mnt / lower / "etc/injected").read_text() == "injected\n"
    assert (mnt / lower / "etc/hosts").stat().st_size == 160
    with pytest.raises(OSError) as e:
        os.getxattr(mnt / lower / "bin/busybox", "user.nope")
    assert e.value.errno == errno.ENODATA
    s = os.statvfs(mnt)
    assert s.f_files > 0 and s.f_bfree == 0 and s.f_namemax == 255


def test_lazy_export_and_stable_inodes(fb, mounts, cache_dir):
    mnt = mounts.mount(_scenario("basic"))
    exports = cache_dir / "exports"

    def exported() -> int:
        return len(list(exports.glob("*.tar"))) if exports.exists() else 0

    assert exported() == 0  # mounting exported nothing
    app = mnt / "containers/onboot/001-app-setup"
    assert sorted(os.listdir(app)) == ["config.json", "lower", "rootfs", "runtime.json", "tmp"]
    assert (app / "lower").is_dir()
    assert exported() == 0  # nor did looking at a bundle, or at its lower/ itself
    bb = mnt / "containers/onboot/000-hello/lower/bin/busybox"
    ino = bb.stat().st_ino
    assert exported() == 1  # only the image that was used
    assert bb.stat().st_ino == ino
    assert os.lstat(mnt / "containers/onboot/000-hello/lower/bin/sh").st_ino != ino
    assert exported() == 1
    assert (app / "lower/app/VERSION").stat().st_ino != ino
    assert exported() == 2




def test_small_files_reach_the_page_cache_with_a_siblings_read(mounts):
    mnt = mounts.mount(_scenario("basic"))
    small = mnt / "containers/onboot/001-app-setup/lower/app/VERSION"
    big = mnt / "containers/onboot/000-hello/lower/bin/busybox"
    assert 0 < small.stat().st_size <= 128 * 1024 < big.stat().st_size
    # A directory with two small files, neither read yet: the first read sends the other.
    pair = next(sorted(ps)[:2] for d, _, names in os.walk(mnt / "containers")
                if len(ps := [Path(d, n) for n in names if Path(d, n).is_file()
                              and not Path(d, n).is_symlink()
                              and 0 < Path(d, n).stat().st_size <= 128 * 1024]) >= 2)
    small = pair[1]
    assert _resident_pages(small)[0] == 0
    pair[0].read_bytes()  # the directory's first read sends its small files ahead
    time.sleep(0.3)
    # Never read: a small file's bytes are already there, a big one's are not.
    assert _resident_pages(small) == (1, 1)
    resident, pages = _resident_pages(big)
    assert resident == 0 < pages


# ------------------------------------------------------------------------------ --expand, runc
def test_expand_shows_each_root_with_shared_inodes(fb, mounts, tmp_path):
    mnt = mounts.mount(_scenario("shared"), "--expand")
    bundles = mnt / "containers"
    first = bundles / "onboot/000-app-first"
    for b in ("onboot/002-app-again", "onshutdown/000-app-flush", "services/app"):
        root = bundles / b / "rootfs"
        assert sorted(os.listdir(root)) == sorted(os.listdir(first / "lower")), b
        f = root / "app/bin/server"
        assert f.stat().st_ino == (first / "lower/app/bin/server").stat().st_ino
        assert f.read_bytes() == (first / "lower/app/bin/server").read_bytes()
        # directories are distinct inodes at each place (the kernel needs one path each)
        assert (root / "app").stat().st_ino != (first / "lower/app").stat().st_ino
    assert sorted(os.listdir(first / "rootfs")) == sorted(os.listdir(first / "lower"))
    # --expand changes nothing outside rootfs/
    tar = _pack(fb, _scenario("shared"), tmp_path / "pack.tar")
    want, links = pack_listing(tar)
    got, _ = mount_listing(mnt)
    for name, w in want.items():
        assert got[name] == w, name




@pytest.mark.skipif(not os.access(RUNC, os.X_OK), reason=f"no {RUNC}")
def test_runc_runs_a_bundle_straight_from_the_mount(mounts, tmp_path):
    mnt = mounts.mount(_scenario("basic"), "--expand")
    bundle = mnt / "containers/onboot/000-hello"
    state = tmp_path / "runc"
    state.mkdir()
    r = _runc(bundle, state, f"fbtest-{uuid.uuid4().hex[:8]}")
    if r.returncode != 0:
        # Is it runc that cannot run here? The same bundle from a plain directory tells.
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copy(bundle / "config.json", copy / "config.json")
        shutil.copytree(bundle / "rootfs", copy / "rootfs", symlinks=True)
        control = _runc(copy, state, f"fbtest-{uuid.uuid4().hex[:8]}")
        if control.returncode != 0:
            pytest.skip(f"runc cannot run containers here: {control.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello\n"


def test_requests_waiting_for_an_export_hold_up_nobody(dockerd, mounts, cache_dir):
    import fcntl

    mnt = mounts.mount(_scenario("basic"))
    app = mnt / "containers/onboot/001-app-setup/lower"
    hello = mnt / "containers/onboot/000-hello"
    # Holding the cache's lock for fbpub/app:1 keeps its export, and every request below
    # app's lower/, waiting as long as the test likes.
    image_hex = dockerd.client.api.inspect_image("fbpub/app:1")["Id"].split(":", 1)[1]
    (cache_dir / "exports").mkdir(exist_ok=True)
    lock = os.open(cache_dir / "exports" / f"{image_hex}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    assert app.is_dir()  # the directory itself is known without the export
    listings: list[list[str]] = []

    def listing() -> None:
        # Each opendir is a request of its own (lookups of one directory may be serialized
        # by the kernel, opens are not), and each waits in the server for the export.
        listings.append(sorted(os.listdir(app)))

    waiting = [threading.Thread(target=listing, daemon=True) for _ in range(10)]
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for t in waiting:
            t.start()
        time.sleep(1)
        assert not listings and all(t.is_alive() for t in waiting)
        # Meanwhile the rest of the mount answers, another image's first export included.
        others: dict[str, object] = {}

        def other() -> None:
            others["config"] = json.loads((hello / "config.json").read_bytes())
            others["busybox"] = (hello / "lower/bin/busybox").stat().st_size

        t = threading.Thread(target=other, daemon=True)
        t.start()
        t.join(60)
        assert not t.is_alive(), "the mount stopped answering while an export waited"
        assert others["config"]["process"]["args"] == ["/bin/sh", "-c", "echo hello"]
        assert others["busybox"] > 0
        assert not listings  # still waiting
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    for t in waiting:
        t.join(60)
    assert len(listings) == 10 and "app" in listings[0]
    assert all(names == listings[0] for names in listings)


def test_a_directory_too_big_for_one_reply_lists_whole(dockerd, mounts, tmp_path):
    # 4000 entries with long names are several readdirplus replies: each must resume where
    # the last one stopped, neither repeating nor skipping an entry.
    names = sorted(f"{i:05d}-{'x' * 80}" for i in range(4000))
    r = RootfsBuilder().dir("big")
    for i, name in enumerate(names):
        if i % 10 == 0:
            r.dir(f"big/{name}")
        else:
            r.file(f"big/{name}", f"{i}\n")
    r.write(tmp_path / "big.tar")
    import_image(dockerd.client, tmp_path / "big.tar", "fbtest/bigdir:1", ['CMD ["/x"]'])
    cfg = tmp_path / "big.yml"
    cfg.write_text("onboot:\n  - name: big\n    image: fbtest/bigdir:1\n")
    mnt = mounts.mount(cfg)
    big = mnt / "containers/onboot/000-big/lower/big"
    seen: list[tuple[str, int, bool]] = []

    def scan() -> None:
        # A listing that restarts instead of resuming never ends: bounded, so it fails.
        with os.scandir(big) as it:
            for e in it:
                seen.append((e.name, e.inode(), e.is_dir(follow_symlinks=False)))
                if len(seen) > len(names):
                    return

    t = threading.Thread(target=scan, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the listing did not end"
    assert [n for n, _, _ in seen] == names
    assert len({ino for _, ino, _ in seen}) == len(names)
    for i, (name, ino, is_dir) in enumerate(seen):
        assert is_dir == (i % 10 == 0)
        if i % 397 == 0:
            assert os.lstat(big / name).st_ino == ino
    assert (big / names[1]).read_text() == "1\n"
    assert os.stat(big).st_nlink == 2 + 400


# ------------------------------------------------------------------------------ reading
def test_parallel_readers_agree(fb, mounts, special_yml, tmp_path):
    tar = _pack(fb, special_yml, tmp_path / "pack.tar")
    want, _ = pack_listing(tar)
    expected = {n: w[6] for n, w in want.items() if w[0] == "f"}
    mnt = mounts.mount(special_yml)
    results: list[dict[str, str] | BaseException] = [{} for _ in range(16)]

    def reader(k: int) -> None:
        try:
            names = list(expected)
            names = names[k % len(names):] + names[: k % len(names)]  # start at different places
            out = {}
            for n in names:
                h = hashlib.sha256()
                with open(mnt / n, "rb", buffering=0) as f:
                    while chunk := f.read(4096 * (1 + k)):
                        h.update(chunk)
                out[n] = h.hexdigest()
            results[k] = out
        except BaseException as e:
            results[k] = e

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in results:
        assert r == expected


def test_every_change_is_erofs(mounts):
    mnt = mounts.mount(_scenario("basic"))
    cfg = mnt / "containers/onboot/000-hello/config.json"
    lower = mnt / "containers/onboot/000-hello/lower"
    attempts: list[tuple[str, Callable[[], object]]] = [
        ("write", lambda: os.open(cfg, os.O_WRONLY)),
        ("create", lambda: os.open(mnt / "containers/new", os.O_WRONLY | os.O_CREAT)),
        ("mkdir", lambda: os.mkdir(lower / "newdir")),
        ("unlink", lambda: os.unlink(lower / "etc/motd")),
        ("rmdir", lambda: os.rmdir(lower / "tmp")),
        ("rename", lambda: os.rename(lower / "etc/motd", lower / "etc/motd2")),
        ("link", lambda: os.link(lower / "etc/motd", lower / "etc/motd2")),
        ("symlink", lambda: os.symlink("x", lower / "etc/sym")),
        ("chmod", lambda: os.chmod(cfg, 0o600)),
        ("chown", lambda: os.chown(cfg, 1, 1)),
        ("truncate", lambda: os.truncate(cfg, 0)),
        ("utime", lambda: os.utime(cfg, (0, 0))),
        ("setxattr", lambda: os.setxattr(cfg, "user.x", b"1")),
        ("removexattr", lambda: os.removexattr(cfg, "user.x")),
        ("mknod", lambda: os.mkfifo(lower / "fifo")),
    ]
    for what, fn in attempts:
        with pytest.raises(OSError) as e:
            fn()
        assert e.value.errno == errno.EROFS, what
    assert cfg.read_bytes().startswith(b"{")


def test_changed_source_tar_reads_eio(dockerd, mounts, special_yml, cache_dir):
    mnt = mounts.mount(special_yml)
    lower = mnt / "containers/onboot/000-hello/lower"
    assert (lower / "etc/motd").read_bytes()  # exports busybox into this test's cache
    special = mnt / "containers/services/sp/rootfs"
    assert (special / "long").is_dir()

    def export(ref: str) -> Path:
        image_id = dockerd.client.api.inspect_image(ref)["Id"]
        return cache_dir / "exports" / (image_id.split(":")[-1] + ".tar")

    busybox = export("fbpub/busybox:1")
    with open(busybox, "r+b") as f:
        f.truncate(busybox.stat().st_size // 2)
    export("fbtest/mnt-special:1").unlink()
    for path in (lower / "bin/busybox", special / "data/big.bin"):
        with pytest.raises(OSError) as e:
            path.read_bytes()
        assert e.value.errno == errno.EIO, path
    # metadata still answers; the log says why
    assert (lower / "bin/busybox").stat().st_size > 0
    log = (cache_dir / "mount.log").read_text()
    assert "changed or removed since it was indexed" in log


# ------------------------------------------------------------------------------ lifecycle
def _wait(cond: Callable[[], bool], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_sigterm_unmounts_and_exits_0(dockerd, cache_dir, mounts):
    mnt = mounts.point()
    env = {**os.environ, "DOCKER_HOST": dockerd.host, "FUSEBUNDLE_CACHE_DIR": str(cache_dir),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "fusebundle", "mount", "-f", "-q",
                             _scenario("basic"), mnt], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: find_mount(str(mnt)) is not None or proc.poll() is not None)
        assert (mnt / "containers").is_dir()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert find_mount(str(mnt)) is None
        assert os.listdir(mnt) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_server_then_umount_leaves_a_clean_mount_point(fb, mounts):
    mnt = mounts.mount(_scenario("basic"))
    pid = _server_pid(str(mnt))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert _wait(lambda: not _alive(pid))
    with pytest.raises(OSError) as e:
        os.statvfs(mnt)
    # ECONNABORTED when a request was in flight as the server died: gone, either way
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    r = fb("mount", _scenario("basic"), mnt)
    assert r.returncode != 0 and "stale" in r.stderr and "Traceback" not in r.stderr
    r = fb("umount", mnt)
    assert r.returncode == 0, r.stderr
    assert find_mount(str(mnt)) is None and os.listdir(mnt) == []
    mounts.mount(_scenario("basic"), mnt=mnt)  # reusable
    assert (mnt / "containers").is_dir()
    pid = _server_pid(str(mnt))
    r = fb("umount", mnt)
    assert r.returncode == 0, r.stderr
    assert find_mount(str(mnt)) is None
    assert pid is not None and not os.path.exists(f"/proc/{pid}/cmdline") or \
        _server_pid(str(mnt)) is None


def test_bad_mount_points_are_one_line_errors(fb, mounts, tmp_path):
    config = _scenario("basic")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    afile = tmp_path / "afile"
    afile.write_text("x")
    busy = mounts.mount(config)
    for mnt, words in ((tmp_path / "missing", "does not exist"), (full, "not empty"),
                       (afile, "not a directory"), (busy, "already a mount point")):
        r = fb("mount", config, mnt)
        assert r.returncode != 0
        assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = fb("umount", tmp_path)
    assert r.returncode != 0 and "not mounted" in r.stderr
    r = fb("mount", tmp_path / "nope.yml", mounts.point())
    assert r.returncode != 0 and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------ the model alone
class _Image:
    """An image handle over a tar on disk (what images.LazyImage is for an engine)."""

    def __init__(self, tar: Path) -> None:
        from fusebundle.sources.base import ImageInfo

        self.tar = tar
        self.info = ImageInfo(ref=tar.name, id="sha256:" + tar.stem, config={})
        self.calls = 0

    def index(self):
        from fusebundle.tar.index import open_index

        self.calls += 1
        return open_index(str(self.tar))


def _odd_rootfs() -> RootfsBuilder:
    """What a hand-made (not docker-exported) tar may hold."""
    r = RootfsBuilder(raw_names=True)
    r.dir("./", mode=0o700, mtime=T1)  # the image root itself (the index leaves it out)
    r.dir("./etc").file("./etc/hosts", "mine\n", mode=0o600).file("./etc/hostname", "h\n")
    r.file("Dockerfile", "FROM x\n")
    r.hardlink("etc/name-copy", "etc/hostname")  # to a dropped name: a file of its own
    r.file("dup", "first\n").file("dup", "second\n", mode=0o640)
    r.dir("d", mode=0o700).dir("d/", mode=0o750).file("d/f", "f\n")
    r.file("x/y/z", "implicit parents\n")
    r.file("f", "target\n", xattrs={"user.a": b"1", "trusted.b": b"\x00\xff"})
    r.hardlink("l1", "f").hardlink("l2", "l1").hardlink("dangling", "nope")
    r.symlink("s", "../f").fifo("p").chardev("c", 4, 5).blockdev("b", 8, 1)
    r.file("big", bytes(range(256)) * 700)
    return r


def _later_wins(entries) -> dict[bytes, object]:
    """Path -> Entry as extracting the entries in order leaves them (hard links resolved)."""
    out: dict[bytes, object] = {}
    for e in entries:
        path = b"/".join(p for p in e.path.split(b"/") if p)
        if not path:
            continue
        if e.type == "h":
            target = out.get(b"/".join(p for p in e.linkname.split(b"/") if p))
            if target is None:
                continue
            out[path] = target
        else:
            out[path] = e
    return out


def _bytes_of(entry=None, content=None) -> bytes:
    body = entry.body if entry else content
    if body is None or isinstance(body, bytes):
        return body or b""
    with open(body.source.path, "rb") as f:
        f.seek(body.offset)
        return f.read(body.size)


@pytest.mark.parametrize("fast,saved", [(True, False), (False, False), (True, True)],
                         ids=["columns", "entries", "saved-arrays"])
def test_tree_renders_what_the_view_lists(tmp_path, fast, saved, monkeypatch):
    from fusebundle.bundle.entry import directory, regular
    from fusebundle.bundle.view import INIT_RESOLV_LINK, Graft, View
    from fusebundle.fs import graft_tree
    from fusebundle.fs import tree as treemod

    if not fast:  # attributes from entry() where the index's columns are not used
        monkeypatch.setattr(graft_tree, "_numeric_columns", lambda idx: None)
    odd_tar = _odd_rootfs().write(tmp_path / "odd.tar")
    layer_tar = _layer_rootfs().write(tmp_path / "layer.tar")

    def items_for(odd: _Image, layer: _Image) -> list:
        return [
            Graft(prefix=b"", image=odd, resolv_link=INIT_RESOLV_LINK),
            Graft(prefix=b"", image=layer, resolv_link=INIT_RESOLV_LINK),
            directory(b"containers"), directory(b"containers/b"),
            directory(b"containers/b/lower"),
            Graft(prefix=b"containers/b/lower/", image=odd),
            regular(b"containers/b/config.json", b"{}"),
            directory(b"etc", 0o700), regular(b"etc/motd", b"files\n"),
            regular(b"containers/b/lower/etc/extra", b"into an image\n"),
        ]

    if saved:  # a first mount builds and saves the arrays; this one must only load them
        first = treemod.Tree(View(items=items_for(_Image(odd_tar), _Image(layer_tar))))
        for k in range(len(first.grafts)):
            first.load_graft(k)
        assert (tmp_path / "odd.tar.tree").exists() and (tmp_path / "odd.tar.tree-init").exists()

        def no_build(self: object) -> None:
            raise AssertionError("built again instead of loading the saved arrays")

        monkeypatch.setattr(treemod.GraftTree, "_build", no_build)
    odd, layer = _Image(odd_tar), _Image(layer_tar)
    view = View(items=items_for(odd, layer))
    t = treemod.Tree(view)
    assert odd.calls == 0 and layer.calls == 0  # nothing indexed before it is needed
    for k in range(len(t.grafts)):
        t.load_graft(k)
    want = _later_wins(view.entries())
    seen: set[bytes] = set()

    def walk(ino: int, prefix: bytes) -> None:
        listing = t.listdir(ino)
        names = [listing[i][0] for i in range(len(listing))]
        assert names == sorted(names)
        for name, child in (listing[i] for i in range(len(listing))):
            path = prefix + name
            seen.add(path)
            assert t.lookup(ino, name) == child, path
            if path not in want:  # a parent the tar only implies: a plain directory
                assert path.rsplit(b"/", 2)[-2:] in ([b"x"], [b"x", b"y"], [b"lower", b"x"])
                assert t.stat(child)[0] == stat.S_IFDIR | 0o755
                walk(child, path + b"/")
                continue
            e = want[path]
            st = t.stat(child)
            assert stat.S_IFMT(st[0]) == {"f": stat.S_IFREG, "d": stat.S_IFDIR,
                                          "l": stat.S_IFLNK, "c": stat.S_IFCHR,
                                          "b": stat.S_IFBLK, "p": stat.S_IFIFO}[e.type], path
            assert (stat.S_IMODE(st[0]), st[2], st[3], st[6]) == \
                (e.mode, e.uid, e.gid, e.mtime_ns), path
            assert dict(t.xattrs(child) or {}) == dict(e.xattrs or {}), path
            if e.type == "f":
                assert st[5] == e.size and _bytes_of(content=t.content(child)) == _bytes_of(e)
            if e.type == "l":
                assert t.readlink(child) == e.linkname and st[5] == len(e.linkname)
            if e.type in "cb":
                assert st[4] == os.makedev(e.devmajor, e.devminor)
            if e.type == "d":
                walk(child, path + b"/")

    walk(treemod.ROOT_INO, b"")
    assert set(want) - seen == set()
    root = t.stat(treemod.ROOT_INO)
    assert stat.S_ISDIR(root[0])
    lower = t.lookup(t.lookup(t.lookup(treemod.ROOT_INO, b"containers"), b"b"), b"lower")
    assert stat.S_IMODE(t.stat(lower)[0]) == 0o755  # the index leaves out the "./" entry
    f = t.lookup(lower, b"f")
    assert t.stat(f)[1] == 3  # f, l1, l2
    assert t.lookup(lower, b"l2") == f and t.lookup(lower, b"dangling") is None
    assert t.lookup(lower, b"Dockerfile") is None
