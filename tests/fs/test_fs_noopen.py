"""fusebundle mount with the patched pyfuse3: no_open/no_opendir, the sibling preload, the
kernel's directory cache and the --listing modes, on real mounts of an OCI layout (no engine).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.imagetools import RootfsBuilder
from support.mounts import NO_OPEN_MOUNT, _resident_pages, app_layout, mounted

from fusebundle.fs import ops as fs

pytestmark = NO_OPEN_MOUNT

SMALL = {f"f{i:02d}.txt": f"small file {i}\n".encode() * (i + 1) for i in range(12)}
BIG = os.urandom(300_000)


def _rootfs() -> RootfsBuilder:
    b = RootfsBuilder().dir("data").dir("data/sub").dir("other")
    for name, data in SMALL.items():
        b.file(f"data/{name}", data)
    b.file("data/big.bin", BIG)
    b.file("data/sub/inner", b"inner\n")
    b.file("other/one", b"one\n").file("other/two", b"two\n")
    b.symlink("data/link", "f00.txt")
    return b


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return app_layout(tmp_path_factory.mktemp("layout"), _rootfs())


def _server_pid(mnt_root: Path) -> int:
    from fusebundle.cli.mount import _server_pid as pid_of

    mnt = mnt_root.parents[3]
    pid = pid_of(str(mnt))
    assert pid is not None
    return pid


def test_files_read_right_without_open(layout: Path, tmp_path: Path) -> None:
    with mounted(layout, tmp_path) as root:
        # The first access loads the image lazily; every read finds its file by inode.
        for name, data in SMALL.items():
            assert (root / "data" / name).read_bytes() == data
        assert (root / "data/big.bin").read_bytes() == BIG
        with open(root / "data/big.bin", "rb") as f:
            f.seek(123_457)
            assert f.read(1000) == BIG[123_457:124_457]
        assert (root / "data/sub/inner").read_bytes() == b"inner\n"
        assert (root / "other/two").read_bytes() == b"two\n"
        assert os.readlink(root / "data/link") == "f00.txt"


def test_write_opens_still_fail(layout: Path, tmp_path: Path) -> None:
    with mounted(layout, tmp_path) as root:
        target = root / "data/f01.txt"
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
            with pytest.raises(OSError) as e:
                os.close(os.open(target, flags))
            assert e.value.errno == errno.EROFS
        assert target.read_bytes() == SMALL["f01.txt"]


def test_first_read_sends_the_small_siblings_ahead(layout: Path, tmp_path: Path) -> None:
    # Plus: a store needs the kernel to know the inode, which a lean listing does not give.
    with mounted(layout, tmp_path, "--listing=plus") as root:
        d = root / "data"
        names = sorted(os.listdir(d))
        assert "f05.txt" in names
        # Listed, never read: nothing of the files is in the page cache yet.
        assert _resident_pages(d / "f05.txt")[0] == 0
        assert (d / "f00.txt").read_bytes() == SMALL["f00.txt"]
        time.sleep(0.3)  # the preload runs after the reply
        for name in SMALL:
            assert _resident_pages(d / name) == (1, 1), name
        resident, pages = _resident_pages(d / "big.bin")
        assert resident == 0 < pages  # larger than a preload: left to its reads
        # Another directory has not been read from: its files are not sent.
        assert _resident_pages(root / "other/one")[0] == 0


def _replies_during(pid: int, action: object) -> int:
    """How many replies (writev on /dev/fuse) the server sent while `action()` ran."""
    out = Path(f"/tmp/fb-strace-{pid}-{time.monotonic_ns()}.txt")
    tracer = subprocess.Popen(["strace", "-f", "-c", "-e", "trace=writev", "-o", str(out),
                               "-p", str(pid)], stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        action()  # type: ignore[operator]
        time.sleep(0.2)
    finally:
        tracer.terminate()
        tracer.wait(timeout=10)
    text = out.read_text()
    out.unlink()
    return sum(int(r.split()[3]) for r in text.splitlines() if r.split()[-1:] == ["writev"])


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_repeated_walks_are_served_by_the_kernel(layout: Path, tmp_path: Path) -> None:
    with mounted(layout, tmp_path) as root:
        pid = _server_pid(root)

        def walk() -> None:
            for dirpath, dirs, files in os.walk(root):
                for n in dirs + files:
                    os.lstat(os.path.join(dirpath, n))

        first = _replies_during(pid, walk)
        # The image loads on the first walk, and the directories it fills are re-stat'ed once.
        second = _replies_during(pid, walk)
        assert first > 10 and second <= 4
        assert _replies_during(pid, walk) == 0  # listings from the kernel's cache


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    got = {}
    for dirpath, dirs, files in os.walk(root):
        with os.scandir(dirpath) as it:
            types = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it}
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            assert types[n] == (os.path.isdir(p) and not os.path.islink(p), os.path.islink(p))
            got[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_ino)
    return got


@pytest.mark.parametrize("mode", ["lean", "plain", "auto", "adaptive"])
def test_listing_modes_show_the_same_tree(layout: Path, tmp_path: Path, mode: str) -> None:
    with mounted(layout, tmp_path, "--listing=plus") as root:
        want = _tree(root)
    assert "data/f03.txt" in want and "data/sub/inner" in want
    with mounted(layout, tmp_path, f"--listing={mode}") as root:
        assert _tree(root) == want
        assert (root / "data/f03.txt").read_bytes() == SMALL["f03.txt"]


def test_bad_listing_mode_is_one_line(layout: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FUSEBUNDLE_CACHE_DIR": str(tmp_path / "cache")}
    (tmp_path / "m").mkdir()
    r = subprocess.run([sys.executable, "-m", "fusebundle", "mount", "--listing=fast",
                        str(layout / "cfg.yml"), str(tmp_path / "m")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "--listing" in r.stderr


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_adaptive_listing_goes_plus_once_callers_stat_files(tmp_path: Path) -> None:
    many = fs.ADAPT_LOOKUPS + 8
    b = RootfsBuilder().dir("a").dir("b")
    for i in range(many):
        b.file(f"a/x{i:03d}", b"x")
    for i in range(5):
        b.file(f"b/y{i}", b"y")
    app_layout(tmp_path, b)

    def listed_then_stat(root: Path, d: str, names: list[str]) -> int:
        os.listdir(root / d)
        return _replies_during(_server_pid(root),
                               lambda: [os.lstat(root / d / n) for n in names])

    def loaded(root: Path) -> Path:
        os.listdir(root)  # loads the image: its top directories' attributes are asked again
        for d in ("a", "b"):
            os.lstat(root / d)
        return root

    with mounted(tmp_path, tmp_path, "--listing=plus") as root:
        assert listed_then_stat(loaded(root), "a", ["x000"]) == 0  # the listing made its inode
    with mounted(tmp_path, tmp_path) as root:  # adaptive, the default
        loaded(root)
        # Listed lean: stat'ing a file is a lookup, one reply each.
        assert listed_then_stat(root, "a", ["x000"]) == 1
        rest = [f"x{i:03d}" for i in range(1, many)]
        assert listed_then_stat(root, "a", rest) == len(rest)
        # That many lookups of listed files: listings carry attributes from now on.
        assert listed_then_stat(root, "b", ["y0", "y1"]) == 0
