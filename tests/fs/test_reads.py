"""Reads of a large file on a real mount whose source tar is cut or replaced underneath it.

A layer tar in the store is what a mount reads file bytes from.  Whatever happens to it while
mounted, a reader must get either the file's true bytes or EIO, within a bounded time, and the
server must keep answering for every other image.  The images are OCI layouts written here;
nothing needs an engine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.fakeregistry import layer_tar
from support.faulttools import cli, sha, stopped, wait_for
from support.imagetools import RootfsBuilder, busybox_bytes, write_oci_layout

from fusebundle.cli.mount import _alive, _server_pid, find_mount

HAVE_FUSE = (os.geteuid() == 0 and os.path.exists("/dev/fuse")
             and shutil.which("fusermount3") is not None)
pytestmark = pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")

MIB = 1 << 20
BIG_SIZE = 32 * MIB
BLOCK = 4096
HANG = 30.0  # seconds: a reader still blocked after this is hung


def pattern(off: int, n: int) -> bytes:
    """Bytes [off, off+n) of the big file: every 4 KiB block says its own number."""
    first, last = off // BLOCK, (off + n - 1) // BLOCK
    data = b"".join((b"%015d\n" % b) * (BLOCK // 16) for b in range(first, last + 1))
    return data[off - first * BLOCK:][:n]


BIG = pattern(0, BIG_SIZE)
SMALL = b"a small file next to the big one\n" * 20
OTHER = {"other/hello.txt": b"hello from the other image\n",
         "other/mid.bin": bytes(range(256)) * 4096}  # 1 MiB, read after the damage


@dataclass
class Layout:
    root: Path
    layout: Path
    config: Path
    big_tar: bytes
    other_tar: bytes

    def layer(self, cache: Path, tar: bytes) -> Path:
        return cache / "layers" / "sha256" / (sha(tar)[7:] + ".tar")

    @property
    def big_data_offset(self) -> int:
        """Where big.bin's bytes start in its layer tar."""
        return self.big_tar.index(BIG[:BLOCK])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    root = tmp_path_factory.mktemp("reads")
    big_tar = layer_tar({"data/small.txt": SMALL, "data/big.bin": BIG})
    # A 2 MiB static binary, run from the mount (as runc runs a bundle's programs).
    tools_tar = RootfsBuilder().dir("bin").file("bin/busybox", busybox_bytes(),
                                                mode=0o755).tobytes()
    other_tar = layer_tar(OTHER)
    layout = root / "layout"
    write_oci_layout(layout, "fbtest/big:1", [big_tar], {"Cmd": ["/bin/sh"]})
    write_oci_layout(layout, "fbtest/other:1", [other_tar, tools_tar], {"Cmd": ["/bin/sh"]})
    cfg = root / "reads.yml"
    cfg.write_text("onboot:\n  - name: big\n    image: fbtest/big:1\n"
                   "  - name: other\n    image: fbtest/other:1\n")
    return Layout(root, layout, cfg, big_tar, other_tar)


@dataclass
class Mounted:
    mnt: Path
    cache: Path
    log: Path
    pid: int
    mode: str

    @property
    def big(self) -> Path:
        return self.mnt / "containers/onboot/000-big/lower/data/big.bin"

    @property
    def small(self) -> Path:
        return self.mnt / "containers/onboot/000-big/lower/data/small.txt"

    @property
    def other(self) -> Path:
        return self.mnt / "containers/onboot/001-other/lower/other"

    @property
    def busybox(self) -> Path:
        return self.mnt / "containers/onboot/001-other/lower/bin/busybox"

    def assert_serving(self) -> None:
        """The server lives and still answers reads of the undamaged image."""
        assert _alive(self.pid), "the server died"
        for name in ("hello.txt", "mid.bin"):
            r = _cat(self.other / name, self.pid)
            assert r.returncode == 0 and r.stdout == OTHER["other/" + name], r.stderr
        assert self.big.stat().st_size == BIG_SIZE  # metadata still answers


@contextlib.contextmanager
def _mount(images: Layout, tmp_path: Path, mode: str, **env: str) -> Iterator[Mounted]:
    """A fresh mount of both images, each image's layers already in the store.

    mode "cache": reads go through the kernel's page cache (the default); "direct": files of
    1 MiB and more are opened direct_io, so every read() of them is a request.
    """
    cache, mnt, log = tmp_path / "cache", tmp_path / "mnt", tmp_path / "mount.log"
    mnt.mkdir()
    opts = ["-o", f"direct_io_min={MIB}"] if mode == "direct" else []
    r = cli("mount", *opts, "--from", f"oci:{images.layout}", images.config, mnt, "--log", log,
            cache=cache, **env)
    assert r.returncode == 0, r.stderr
    pid = _server_pid(str(mnt))
    assert pid is not None
    m = Mounted(mnt, cache, log, pid, mode)
    try:
        # Listing loads each image (its layer ingested and indexed) without reading a file.
        assert "big.bin" in os.listdir(m.big.parent)
        assert "hello.txt" in os.listdir(m.other)
        assert images.layer(cache, images.big_tar).exists()
        yield m
    finally:
        with _continued(pid):
            pass
        if find_mount(str(mnt)) is not None:
            r = cli("umount", mnt, cache=cache, timeout=60)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)


@pytest.fixture(params=["cache", "direct"])
def mounted(images: Layout, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mounted]:
    with _mount(images, tmp_path, request.param) as m:
        yield m


class _continued:
    """On exit, SIGCONT the server in case a test stopped it (a stopped server hangs umount)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if _alive(self.pid):
            os.kill(self.pid, signal.SIGCONT)


@contextlib.contextmanager
def _kept_going(pid: int) -> Iterator[None]:
    """Continue the server each time its test hook stops it, while the block runs."""
    done = threading.Event()

    def go_on() -> None:
        while not done.wait(0.01):
            if stopped(pid):
                os.kill(pid, signal.SIGCONT)

    t = threading.Thread(target=go_on, daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()


def _stacks(*pids: int) -> str:
    out = []
    for pid in pids:
        try:
            out.append(f"--- {pid}:\n" + Path(f"/proc/{pid}/stack").read_text())
        except OSError as e:
            out.append(f"--- {pid}: {e.strerror}")
    return "\n".join(out)


def _cat(path: Path, server: int) -> subprocess.CompletedProcess[bytes]:
    """cat of `path`, failing the test (with kernel stacks) if it does not end in time."""
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        stacks = _stacks(proc.pid, server)
        proc.kill()
        proc.communicate()
        pytest.fail(f"cat {path} hung for {HANG:g} s:\n{stacks}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_cat_eio(path: Path, server: int) -> bytes:
    """cat fails with EIO in time; what it wrote before failing is the file's true start."""
    t0 = time.monotonic()
    r = _cat(path, server)
    assert r.returncode != 0, "cat read the whole file from a damaged tar"
    assert b"Input/output error" in r.stderr, r.stderr
    assert time.monotonic() - t0 < HANG
    assert r.stdout == BIG[: len(r.stdout)], "cat got wrong bytes before the error"
    return r.stdout


# A reader that reads in steps the test drives through its stdin.  It says "open" once the
# file is open; then "read N CHUNK" reads N more bytes, CHUNK per read(), and answers "ok OFF",
# "eio OFF", "eof OFF" or "bad OFF" (wrong bytes); "map N" maps the file, reads its first N
# bytes through the mapping and answers "ok N" or "bad N"; "remap" reads them again.
READER = textwrap.dedent("""
    import mmap, os, sys
    BLOCK = 4096
    def pattern(off, n):
        first, last = off // BLOCK, (off + n - 1) // BLOCK
        data = b"".join((b"%015d\\n" % b) * (BLOCK // 16) for b in range(first, last + 1))
        return data[off - first * BLOCK:][:n]
    fd = os.open(sys.argv[1], os.O_RDONLY)
    print("open", 0, flush=True)
    off, view, mapped = 0, None, 0
    for line in sys.stdin:
        cmd, *args = line.split()
        status = "ok"
        if cmd == "read":
            end, chunk = off + int(args[0]), int(args[1])
            while off < end:
                try:
                    got = os.read(fd, min(chunk, end - off))
                except OSError as e:
                    status = "eio" if e.errno == 5 else f"errno{e.errno}"
                    break
                if not got:
                    status = "eof"
                    break
                if got != pattern(off, len(got)):
                    status = "bad"
                    break
                off += len(got)
            print(status, off, flush=True)
        elif cmd == "map":
            mapped = int(args[0])
            view = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            print("ok" if view[:mapped] == pattern(0, mapped) else "bad", mapped, flush=True)
        elif cmd == "remap":
            print("ok" if view[:mapped] == pattern(0, mapped) else "bad", mapped, flush=True)
""")


class Reader:
    """A separate process reading the big file in steps, so that a test can act in between.

    It runs apart from pytest because a mapping of a file that fails to page in kills its
    process with SIGBUS.
    """

    def __init__(self, path: Path, server: int) -> None:
        self.server = server
        self.proc = subprocess.Popen([sys.executable, "-c", READER, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._answer() == ("open", 0)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _answer(self) -> tuple[str, int]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], HANG)
        if not ready:
            stacks = _stacks(self.proc.pid, self.server)
            self.proc.kill()
            pytest.fail(f"the reader hung for {HANG:g} s:\n{stacks}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            pytest.fail(f"the reader died: status {self.proc.returncode}")
        status, off = line.split()
        return status, int(off)

    def read(self, n: int, chunk: int = MIB) -> tuple[str, int]:
        self.send(f"read {n} {chunk}")
        return self._answer()

    def map(self, n: int) -> tuple[str, int]:
        self.send(f"map {n}")
        return self._answer()

    def remap(self) -> tuple[str, int]:
        self.send("remap")
        return self._answer()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def reader(mounted: Mounted) -> Iterator[Reader]:
    r = Reader(mounted.big, mounted.pid)
    try:
        yield r
    finally:
        r.close()


def _in_file_read(pid: int) -> bool:
    stack = _stacks(pid)
    return "ksys_read" in stack and "pipe_read" not in stack


def _cut(images: Layout, m: Mounted, at_file_offset: int) -> Path:
    """Truncate the big file's layer tar inside the big file's bytes."""
    layer = images.layer(m.cache, images.big_tar)
    os.truncate(layer, images.big_data_offset + at_file_offset)
    return layer


# ------------------------------------------------------------------------------ cut tar
def test_a_tar_cut_before_the_first_read_gives_eio(images, mounted):
    layer = _cut(images, mounted, BIG_SIZE // 2)
    _assert_cat_eio(mounted.big, mounted.pid)
    _assert_cat_eio(mounted.big, mounted.pid)  # and again: nothing cached, nothing stuck
    with pytest.raises(OSError) as e:
        mounted.small.read_bytes()  # the same tar: its other files fail alike
    assert e.value.errno == errno.EIO
    mounted.assert_serving()
    assert f"{layer}: changed or removed since it was indexed" in mounted.log.read_text()


def test_a_tar_cut_between_reads_gives_eio_after_the_true_bytes(images, mounted, reader):
    assert reader.read(4 * MIB) == ("ok", 4 * MIB)
    _cut(images, mounted, BIG_SIZE // 2)
    status, off = reader.read(BIG_SIZE)
    assert status == "eio", (status, off)
    # Pages read ahead before the cut may still be served (they are the true bytes); nothing
    # past the cut ever is.
    assert 4 * MIB <= off <= BIG_SIZE // 2
    assert reader.read(MIB)[0] == "eio"  # the reader is not stuck on the failed page
    mounted.assert_serving()


def test_a_reader_inside_one_large_read_gets_eio_not_a_hang(images, mounted, reader):
    """A 32 MiB read() waits in the kernel for the server while the tar is cut."""
    os.kill(mounted.pid, signal.SIGSTOP)
    with _continued(mounted.pid):
        reader.send(f"read {BIG_SIZE} {BIG_SIZE}")
        # The file is open already: a wait inside read() that is not on its stdin pipe is the
        # wait for the mount.
        wait_for(lambda: _in_file_read(reader.proc.pid), "the reader to wait inside read()",
                 timeout=HANG)
        _cut(images, mounted, 3 * MIB)
    # Nothing was served before the cut, so nothing true can come back: EIO, in time.
    assert reader._answer() == ("eio", 0)
    assert reader.read(MIB) == ("eio", 0)
    mounted.assert_serving()


@pytest.mark.parametrize("mode", ["cache", "direct"])
@pytest.mark.parametrize("cut", [0, MIB // 2 + 512], ids=["all", "half"])
def test_a_tar_cut_while_its_pages_are_being_replied_gives_eio(images, tmp_path, cut, mode):
    """The cut lands after every check, while the reply is a view of the tar's pages.

    The server stops itself (FUSEBUNDLE_TEST_STOP=read-reply) with a reply ready that points
    into its mapping of the tar; the tar is cut there, and then the kernel's copy of the reply
    meets pages that no longer exist.  It must fail that one request (EIO), not hang the reader,
    and must not kill the server (only a read by the server's own code would: SIGBUS).
    """
    with _mount(images, tmp_path, mode, FUSEBUNDLE_TEST_STOP="read-reply") as m:
        reader = Reader(m.big, m.pid)
        try:
            with _continued(m.pid):
                reader.send(f"read {MIB} {MIB}")
                wait_for(lambda: stopped(m.pid), "the server to stop with a reply ready",
                         timeout=HANG)
                _cut(images, m, cut)
            assert reader._answer() == ("eio", 0)
            assert reader.read(MIB) == ("eio", 0)
            with _kept_going(m.pid):  # large reads of the other image stop the server too
                m.assert_serving()
        finally:
            reader.close()
        log = m.log.read_text()
        assert "fuse_read(): fuse_reply_* failed with Bad address" in log, log


# ------------------------------------------------------------------------------ replaced tar
@pytest.mark.parametrize("by", ["garbage of the same size", "a copy of itself"])
def test_a_tar_replaced_by_rename_gives_eio(images, mounted, tmp_path, by):
    layer = images.layer(mounted.cache, images.big_tar)
    new = layer.with_name(".replacement")
    if by == "a copy of itself":
        shutil.copyfile(layer, new)
    else:
        new.write_bytes(b"\xa5" * layer.stat().st_size)
    os.replace(new, layer)
    _assert_cat_eio(mounted.big, mounted.pid)
    mounted.assert_serving()


def test_a_tar_deleted_gives_eio(images, mounted):
    images.layer(mounted.cache, images.big_tar).unlink()
    _assert_cat_eio(mounted.big, mounted.pid)
    mounted.assert_serving()


# ------------------------------------------------------------------------------ served before
def test_pages_served_before_the_cut_stay_true(images, mounted, reader):
    assert reader.read(BIG_SIZE) == ("ok", BIG_SIZE)
    assert reader.map(8 * MIB) == ("ok", 8 * MIB)  # as exec maps a binary
    _cut(images, mounted, MIB)
    # What the kernel holds of the file stays the file's true bytes: a page kept in the mount's
    # cache, or mapped from it, never turns into what the cut tar says now.
    assert reader.remap() == ("ok", 8 * MIB)
    r = _cat(mounted.big, mounted.pid)
    if r.returncode == 0:
        assert r.stdout == BIG
    else:  # the kernel may have dropped pages since: then they cannot be read again
        assert b"Input/output error" in r.stderr and r.stdout == BIG[: len(r.stdout)]
    mounted.assert_serving()


# ------------------------------------------------------------------------------ each mode
def test_a_binary_runs_from_the_mount(mounted):
    """exec maps the binary privately: that works with direct_io too (runc needs it)."""
    assert mounted.busybox.stat().st_size >= MIB  # direct_io in the "direct" mode
    r = subprocess.run([str(mounted.busybox), "echo", "ran"], capture_output=True, text=True,
                       timeout=HANG)
    assert r.returncode == 0 and r.stdout == "ran\n", r.stderr


def test_a_shared_mapping_of_a_large_file(mounted):
    """A shared mapping works in the default mode; direct_io files refuse it (ENODEV).

    libfuse 3.14 cannot ask the kernel to allow it (FUSE_DIRECT_IO_ALLOW_MMAP needs 3.17.1):
    the price of `-o direct_io_min`, and the reason it is not the default.
    """
    import mmap

    with open(mounted.big, "rb") as f:
        if mounted.mode == "direct":
            with pytest.raises(OSError) as e:
                mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            assert e.value.errno == errno.ENODEV
        else:
            view = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            try:
                assert view[-BLOCK:] == BIG[-BLOCK:]
            finally:
                view.close()


def test_a_bad_direct_io_min_is_one_line(images, tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = cli("mount", "-o", "direct_io_min=1M", "--from", f"oci:{images.layout}", images.config,
            mnt, cache=tmp_path / "cache")
    assert r.returncode != 0
    assert r.stderr.strip() == "fusebundle: -o direct_io_min=1M: expected a size in bytes", r.stderr
    assert find_mount(str(mnt)) is None


def _rss_file_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile")


def test_the_servers_rss_does_not_grow_by_what_it_served(mounted):
    """Served pages of the mapped tar count as the server's RSS until it unmaps them."""
    before = _rss_file_kib(mounted.pid)
    r = _cat(mounted.big, mounted.pid)
    assert r.returncode == 0 and r.stdout == BIG
    grown = _rss_file_kib(mounted.pid) - before
    assert grown < BIG_SIZE // 1024 // 4, f"RssFile grew by {grown} KiB for a 32 MiB read"
