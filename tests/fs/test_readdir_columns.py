"""Listings rendered in C from the index's columns (pyfuse3.readdir_reply_columns, patch 0008)
against the Python loop they replace: every field `find`, `ls -la`, `stat` and `du` see must
match, in every listing mode, on a tree with every kind of entry the columns cannot render.
"""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path

import pytest
from support.imagetools import T0, RootfsBuilder
from support.mounts import NO_OPEN_MOUNT, app_layout, mounted

from fusebundle.fs import ops as fs

pytestmark = [*NO_OPEN_MOUNT, pytest.mark.skipif(not fs.READDIR_COLUMNS,
                                                 reason="needs pyfuse3 with patch 0008")]

BIG_DIR = 20_000  # entries in one directory: hundreds of READDIRPLUS pages


def _rootfs() -> RootfsBuilder:
    b = RootfsBuilder()
    b.dir("etc", mode=0o750, uid=3, gid=4, mtime=T0 + 5)
    b.file("etc/resolv.conf", "nameserver 1.1.1.1\n")  # replaced by the view
    b.file("etc/hosts", "1.2.3.4 x\n")  # replaced too
    b.file("etc/hostname", "gone\n")  # dropped
    b.file("etc/passwd", "root:x:0:0::/root:/bin/sh\n", mode=0o644)
    b.dir("bin").file("bin/tool", b"\x7fELF" * 300, mode=0o4755, uid=70_000, gid=2**31 + 5)
    b.symlink("bin/sh", "tool").hardlink("bin/tool2", "bin/tool")
    b.dir("dev").chardev("dev/null", 1, 3).blockdev("dev/sda", 8, 0).fifo("dev/fifo")
    b.dir("empty", mode=0o700)
    b.dir("old").file("old/epoch", b"e", mtime=0).file("old/past", b"p", mtime=-86_401.5)
    b.file("old/frac", b"f", mtime=T0 + 0.123456)
    # One directory of many pages, every kind of entry in it: the C run stops and starts again.
    b.dir("many")
    for i in range(BIG_DIR):
        name = f"many/e{i:05d}" + "x" * (i % 40)
        if i % 997 == 0:
            b.dir(name, mode=0o711, uid=i, mtime=T0 + i)
        elif i % 211 == 0:
            b.symlink(name, f"e{i - 1:05d}")
        elif i % 307 == 0:
            b.hardlink(name, "bin/tool")
        else:
            b.file(name, b"z" * (i % 1030), mode=0o600 + i % 64, uid=i % 7, gid=i % 5,
                   mtime=T0 + i * 1.5)
    b.file("many/e00997xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx/inner", b"in")
    b.dir("implied/below")  # its parent only implied by the path
    return b


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return app_layout(tmp_path_factory.mktemp("layout"), _rootfs())


def _lstat_walk(root: Path) -> dict[str, tuple[int, ...]]:
    """Every path under root with what lstat gives (after the listing gave it, with plus)."""
    got: dict[str, tuple[int, ...]] = {}
    for top, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(top, n)
            st = os.lstat(p)
            got[os.path.relpath(p, root)] = (
                st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                st.st_blocks, st.st_blksize, st.st_rdev, st.st_mtime_ns, st.st_atime_ns,
                st.st_ctime_ns)
    return got


def _scandir_walk(root: Path) -> dict[str, tuple[int, bool, bool]]:
    """What a walk that never stats sees (find): names, d_ino and d_type of each entry."""
    got: dict[str, tuple[int, bool, bool]] = {}
    todo = [str(root)]
    while todo:
        top = todo.pop()
        with os.scandir(top) as it:
            for e in it:
                got[os.path.relpath(e.path, root)] = (e.inode(), e.is_dir(follow_symlinks=False),
                                                      e.is_symlink())
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
    return got


_COUNTER = """\
import os, pyfuse3
_real = pyfuse3.readdir_reply_columns
def _counted(*args, **kw):
    sent, full = _real(*args, **kw)
    with open(os.environ["FB_COLUMNS_LOG"], "a") as f:
        f.write(f"{sent}\\n")
    return sent, full
pyfuse3.readdir_reply_columns = _counted
"""


def _sent_in_c(log: Path) -> int:
    return sum(int(x) for x in log.read_text().split()) if log.exists() else 0


@pytest.fixture
def counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The servers started from here log how many entries the C function sent."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(_COUNTER))
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    log = tmp_path / "columns.log"
    monkeypatch.setenv("FB_COLUMNS_LOG", str(log))
    return log


def _both(layout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: Path,
          walk, *args: str) -> tuple[dict, dict]:
    """The walk on a mount with the Python loop, then on one with the C run."""
    monkeypatch.setenv("FUSEBUNDLE_READDIR_COLUMNS", "0")
    with mounted(layout, tmp_path, *args) as root:
        python = walk(root)
    assert _sent_in_c(log) == 0
    monkeypatch.delenv("FUSEBUNDLE_READDIR_COLUMNS")
    with mounted(layout, tmp_path, *args) as root:
        columns = walk(root)
    # Most of the 20k-entry directory went through C, the rest through the loop.
    assert _sent_in_c(log) > BIG_DIR * 9 // 10
    return python, columns


def test_plus_listing_gives_lstat_the_same_attributes(layout: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      counted: Path) -> None:
    python, columns = _both(layout, tmp_path, monkeypatch, counted, _lstat_walk,
                            "--listing=plus")
    assert len(python) > BIG_DIR
    # The kinds the C run leaves to Python are there, with what makes them special.
    assert stat.S_ISLNK(python["bin/sh"][1]) and stat.S_ISCHR(python["dev/null"][1])
    assert python["bin/tool2"][0] == python["bin/tool"][0] and python["bin/tool"][2] > 2
    assert "etc/hostname" not in python and "implied/below" in python
    diffs = [(p, python[p], columns.get(p)) for p in python if columns.get(p) != python[p]]
    assert not diffs and columns.keys() == python.keys(), diffs[:5]


@pytest.mark.parametrize("mode", ["adaptive", "plain"])
def test_walks_without_stat_see_the_same_entries(layout: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 counted: Path, mode: str) -> None:
    python, columns = _both(layout, tmp_path, monkeypatch, counted, _scandir_walk,
                            f"--listing={mode}")
    assert python["many/e00211" + "x" * 11][2]  # a symlink's d_type
    assert columns == python


def test_du_and_ls_agree_after_a_lean_listing(layout: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              counted: Path) -> None:
    # Lean: files are listed without attributes and looked up; directories carry theirs.
    python, columns = _both(layout, tmp_path, monkeypatch, counted, _lstat_walk,
                            "--listing=lean")
    assert columns == python
