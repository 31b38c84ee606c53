"""One or more tests per patch in patches/pyfuse3, against real FUSE mounts of tests/patchfs.py.

Each test mounts the probe file system in a subprocess with one feature switched on, acts on
the mount, and checks what reached the server (its request log) or what the kernel did.  On a
stock pyfuse3 each of these fails: the attribute, class or keyword it uses does nothing or does
not exist.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest

HERE = Path(__file__).resolve().parents[1]  # tests/
FS = HERE / "support" / "patchfs.py"
PATCHES = sorted((HERE.parent / "patches" / "pyfuse3").glob("*.patch"))
A = b"alpha " * 1000
B = b"bravo!" * 333
BACKING_OFF, BACKING_LEN = 100, 300_000

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse") or shutil.which("fusermount3")
                                is None, reason="needs /dev/fuse and fusermount3")


class Mount:
    """A running patchfs: its mount point, its server process and its request log."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.path = path
        self.proc = proc
        self._log = log

    def requests(self) -> list[str]:
        return self._log.read_text().splitlines()

    def count(self, prefix: str) -> int:
        return sum(1 for line in self.requests() if line.startswith(prefix))


@contextlib.contextmanager
def mounted(tmp_path: Path, wrap: tuple[str, ...] = (), **cfg: Any) -> Iterator[Mount]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "requests.log"
    log.write_text("")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    proc = subprocess.Popen([*wrap, sys.executable, str(FS), str(mnt), str(cfg_path), str(log)],
                            stderr=open(tmp_path / "server.err", "wb"))  # noqa: SIM115
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("patchfs did not mount: "
                                     + (tmp_path / "server.err").read_text())
            time.sleep(0.02)
        yield Mount(mnt, proc, log)
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _backing(tmp_path: Path) -> Path:
    data = bytes(range(256)) * ((BACKING_OFF + BACKING_LEN) // 256 + 1)
    path = tmp_path / "backing.bin"
    path.write_bytes(data[: BACKING_OFF + BACKING_LEN])
    return path


# ---------------------------------------------------------------------------- 0001 inode fh 0
def test_no_open_reads_tell_files_apart_by_inode(tmp_path: Path) -> None:
    with mounted(tmp_path, no_open=True, inode_for_zero_fh=True) as m:
        assert (m.path / "a").read_bytes() == A
        assert (m.path / "b").read_bytes() == B
        assert (m.path / "a").read_bytes() == A
        # The kernel stopped sending OPEN after the first ENOSYS; reads came with the inode.
        assert m.count("OPEN") == 1
        reads = {line.split()[1] for line in m.requests() if line.startswith("READ ")}
        assert reads <= {"3", "4"} and reads


def test_no_opendir_lists_each_directory_by_inode(tmp_path: Path) -> None:
    with mounted(tmp_path, no_opendir=True, inode_for_zero_fh=True) as m:
        assert sorted(os.listdir(m.path)) == ["a", "b", "d", "t"]
        assert os.listdir(m.path / "d") == ["c"]
        assert m.count("OPENDIR") == 1
        assert "READDIR plus 2" in m.requests()


# ---------------------------------------------------------------------------- 0002 readdir modes
def test_plain_mode_gets_plain_readdir_with_names_and_types(tmp_path: Path) -> None:
    with mounted(tmp_path, readdirplus="never") as m:
        got = {e.name: e.is_dir(follow_symlinks=False) for e in os.scandir(m.path)}
        assert got == {"a": False, "b": False, "d": True, "t": False}
        kinds = {line.split()[1] for line in m.requests() if line.startswith("READDIR")}
        assert kinds == {"plain"}
        # Entries carried no attributes: a stat now has to look the name up.
        os.stat(m.path / "a")
        assert "LOOKUP a" in m.requests()


def test_always_mode_stays_readdirplus(tmp_path: Path) -> None:
    with mounted(tmp_path, readdirplus="always") as m:
        os.listdir(m.path)
        kinds = {line.split()[1] for line in m.requests() if line.startswith("READDIR")}
        assert kinds == {"plus"}


@pytest.mark.parametrize("lean", [False, True])
def test_lean_entries_are_looked_up_when_used(tmp_path: Path, lean: bool) -> None:
    with mounted(tmp_path, lean=lean) as m:
        with os.scandir(m.path) as it:
            types = {e.name: e.is_dir(follow_symlinks=False) for e in it}
        assert types == {"a": False, "b": False, "d": True, "t": False}
        before = m.count("LOOKUP")
        for name in ("a", "b", "d"):
            os.lstat(m.path / name)
        looked = [line.split()[1] for line in m.requests()[before:] if line.startswith("LOOKUP")]
        # Full entries instantiate the inodes: no lookups.  Lean ones do it for files only.
        assert sorted(looked) == (["a", "b"] if lean else [])
        assert os.lstat(m.path / "a").st_size == len(A)


# ---------------------------------------------------------------------------- 0003 opendir info
@pytest.mark.parametrize("cache", [False, True])
def test_cache_readdir_serves_the_second_listing(tmp_path: Path, cache: bool) -> None:
    with mounted(tmp_path, cache_readdir=cache) as m:
        first = sorted(os.listdir(m.path))
        n = m.count("READDIR")
        second = sorted(os.listdir(m.path))
        assert first == second == ["a", "b", "d", "t"]
        assert m.count("OPENDIR") == 2
        if cache:
            assert m.count("READDIR") == n  # the kernel's cache answered
        else:
            assert m.count("READDIR") > n


def test_fileinfo_has_cache_readdir_and_noflush() -> None:
    fi = pyfuse3.FileInfo(fh=7, cache_readdir=True, noflush=True)
    assert (fi.fh, fi.cache_readdir, fi.noflush, fi.keep_cache) == (7, True, True, True)
    assert not pyfuse3.FileInfo().cache_readdir


# ---------------------------------------------------------------------------- 0004 init hook
def _bdi_read_ahead_kb(path: Path) -> int:
    dev = os.stat(path).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
               .read_text())


def test_init_connection_sees_capable_and_sets_max_readahead(tmp_path: Path) -> None:
    with mounted(tmp_path, conn={"max_readahead": 16384, "bad_want": True}) as m:
        conn = [line for line in m.requests() if line.startswith("CONN capable=")]
        assert len(conn) == 1
        capable = int(conn[0].split()[1].split("=")[1])
        want = int(conn[0].split()[2].split("=")[1])
        assert capable & pyfuse3.CAP_READDIRPLUS and want & pyfuse3.CAP_READDIRPLUS
        assert want & ~capable == 0
        assert any(line.startswith("CONN refused") for line in m.requests())
        # The kernel applied what the hook asked for: 16 KiB of read-ahead, not 128.
        assert _bdi_read_ahead_kb(m.path) == 16


def _pipe_calls_while_serving(tmp_path: Path, clear: bool) -> tuple[int, int]:
    """(F_SETPIPE_SZ calls, splice calls) of a server that answered 50 requests."""
    out = tmp_path / "strace.txt"
    wrap = ("strace", "-f", "-e", "trace=fcntl,splice", "-o", str(out))
    with mounted(tmp_path, wrap=wrap, conn={"clear_splice_read": clear}) as m:
        for i in range(50):
            with contextlib.suppress(FileNotFoundError):
                os.stat(m.path / f"missing{i}")  # one LOOKUP request each
        assert m.count("LOOKUP missing") == 50
    text = out.read_text()
    return text.count("F_SETPIPE_SZ"), text.count("splice(")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_clearing_splice_read_stops_libfuse_splicing_requests(tmp_path: Path) -> None:
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    # libfuse's default: it sets up a pipe of a request's size to splice requests through
    # (and splices when it may grow the pipe, i.e. with CAP_SYS_RESOURCE).
    sizing, _ = _pipe_calls_while_serving(tmp_path / "on", clear=False)
    assert sizing >= 1
    # With the bit cleared by the hook it reads each request with one read(), nothing else.
    assert _pipe_calls_while_serving(tmp_path / "off", clear=True) == (0, 0)


# ---------------------------------------------------------------------------- 0005 FdRange
def _read_in_child(path: Path, offset: int, size: int) -> subprocess.CompletedProcess[str]:
    code = ("import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY)\n"
            "try:\n  d=os.pread(fd,int(sys.argv[3]),int(sys.argv[2])); print('OK', len(d))\n"
            "except OSError as e: print('ERR', e.errno)")
    return subprocess.run([sys.executable, "-c", code, str(path), str(offset), str(size)],
                          capture_output=True, text=True, timeout=20)


def test_read_reply_from_fd_range(tmp_path: Path) -> None:
    backing = _backing(tmp_path)
    with mounted(tmp_path, backing=str(backing)) as m:
        assert (m.path / "t").read_bytes() == backing.read_bytes()[BACKING_OFF:]


def test_fd_range_past_a_truncated_end_gives_eio_and_serving_goes_on(tmp_path: Path) -> None:
    backing = _backing(tmp_path)
    with mounted(tmp_path, backing=str(backing)) as m:
        head = (m.path / "t").open("rb").read(4096)
        assert head == backing.read_bytes()[BACKING_OFF : BACKING_OFF + 4096]
        os.truncate(backing, BACKING_OFF + 8192)
        got = _read_in_child(m.path / "t", 200_000, 4096)  # not in the page cache yet
        assert got.stdout.split() == ["ERR", "5"], got  # EIO, within the timeout
        assert (m.path / "a").read_bytes() == A  # the server still serves


# ---------------------------------------------------------------------------- 0007 store many
def test_notify_store_many_fills_the_page_cache_from_a_thread(tmp_path: Path) -> None:
    with mounted(tmp_path, store_many=True) as m:
        os.listdir(m.path)  # the kernel now knows b's inode
        assert (m.path / "a").read_bytes() == A
        deadline = time.monotonic() + 5
        while not any(line.startswith("STORED") for line in m.requests()):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert "STORED 1" in m.requests()  # b stored, the unknown inode skipped
        assert (m.path / "b").read_bytes() == B
        assert not [line for line in m.requests() if line in ("READ 1004", "READ 4")]


# ---------------------------------------------------------------------------- 0008 columns
def test_listing_from_columns_carries_every_attribute(tmp_path: Path) -> None:
    from support.patchfs import MTIME_NS, owner

    with mounted(tmp_path, columns=True) as m:
        assert sorted(os.listdir(m.path)) == ["a", "b", "d", "t"]
        # a went out from the arrays, then b (a stop) from Python, then d and t from arrays.
        runs = [line.split()[1:3] for line in m.requests() if line.startswith("COLUMNS")]
        assert runs[:2] == [["1", "stop"], ["2", "stop"]]
        for name, ino, mode, size, nlink in (("a", 3, stat.S_IFREG | 0o644, len(A), 1),
                                              ("b", 4, stat.S_IFREG | 0o644, len(B), 1),
                                              ("d", 2, stat.S_IFDIR | 0o755, 0, 2),
                                              ("t", 6, stat.S_IFREG | 0o644, BACKING_LEN, 1)):
            st = os.lstat(m.path / name)
            assert (st.st_ino, st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid) == (
                ino, mode, size, nlink, *owner(ino)), name
            assert st.st_mtime_ns == st.st_atime_ns == st.st_ctime_ns == MTIME_NS
            assert st.st_blocks == (size + 511) // 512
        assert m.count("LOOKUP") == 0  # the attributes all came with the listing
        assert (m.path / "a").read_bytes() == A
        # Every entry the arrays sent with attributes was noted (b went through Python).
        noted = [line.split()[3:] for line in m.requests() if line.startswith("COLUMNS")]
        assert noted[-1] == ["2", "3", "6"]


def test_lean_listing_from_columns(tmp_path: Path) -> None:
    with mounted(tmp_path, columns=True, lean=True) as m:
        with os.scandir(m.path) as it:
            assert {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in it} == {
                "a": (3, False), "b": (4, False), "d": (2, True), "t": (6, False)}
        noted = [line.split()[3:] for line in m.requests() if line.startswith("COLUMNS")]
        assert noted[-1] == ["2"]  # only the directory went with attributes
        for name in ("a", "d"):
            os.lstat(m.path / name)
        assert [line for line in m.requests() if line.startswith("LOOKUP")] == ["LOOKUP a"]


def test_plain_listing_from_columns(tmp_path: Path) -> None:
    with mounted(tmp_path, columns=True, readdirplus="never") as m, os.scandir(m.path) as it:
        assert {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in it} == {
            "a": (3, False), "b": (4, False), "d": (2, True), "t": (6, False)}
        assert {line.split()[1] for line in m.requests() if line.startswith("READDIR")} == {
            "plain"}
        noted = [line.split()[3:] for line in m.requests() if line.startswith("COLUMNS")]
        assert noted[-1] == ["2", "3", "6"]


# ---------------------------------------------------------------------------- 0006 __version__
def test_version_is_the_patched_builds_constant() -> None:
    from importlib.metadata import version

    assert pyfuse3.__version__ == version("pyfuse3") == f"3.5.0+fusebundle.{len(PATCHES)}"
    from pyfuse3 import _version  # type: ignore[attr-defined]

    assert _version.__version__ == pyfuse3.__version__


def test_import_does_not_load_importlib_metadata() -> None:
    code = "import sys, pyfuse3; print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                         capture_output=True, text=True, check=True)
    pyfuse3_part = [line for line in out.stderr.splitlines() if "|" in line]
    assert out.stdout.strip() == "False"
    assert not any("importlib.metadata" in line for line in pyfuse3_part)
