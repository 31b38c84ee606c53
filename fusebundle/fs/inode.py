"""The words every part of the tree shares: inode numbers (a graft's are packed from graft,
alias and local position) and `Stat` tuples."""

from __future__ import annotations

import os
import stat

from fusebundle.bundle import Entry, directory

ROOT_INO = 1
GRAFT_SHIFT = 48
ALIAS_SHIFT = 32
LOCAL_MASK = (1 << ALIAS_SHIFT) - 1
ALIAS_MASK = (1 << (GRAFT_SHIFT - ALIAS_SHIFT)) - 1
MAX_ALIASES = ALIAS_MASK + 1
MAX_GRAFTS = (1 << (63 - GRAFT_SHIFT)) - 1

TYPE_BITS = {  # Entry.type letter -> its st_mode file-type bits (stat(7))
    "f": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK, "c": stat.S_IFCHR,
    "b": stat.S_IFBLK, "p": stat.S_IFIFO,
}  # fmt: skip
# A directory no header stands for (the root, a parent only its children's paths imply):
# 0755 root:root at mtime 0, as the view's directory() makes it.
IMPLICIT_DIR = directory(b"")

# (st_mode, st_nlink, st_uid, st_gid, st_rdev, st_size, st_mtime_ns)
Stat = tuple[int, int, int, int, int, int, int]


def graft_ino(k: int, alias: int, local: int) -> int:
    """The inode of `local` in alias `alias` of graft `k` (split_ino undoes it)."""
    return ((k + 1) << GRAFT_SHIFT) | (alias << ALIAS_SHIFT) | local


def split_ino(ino: int) -> tuple[int, int, int]:
    """(graft, alias, local) of a graft inode."""
    return (ino >> GRAFT_SHIFT) - 1, (ino >> ALIAS_SHIFT) & ALIAS_MASK, ino & LOCAL_MASK


def path_parts(path: bytes) -> list[bytes]:
    """A path's components, without empty and '.' ones."""
    return [p for p in path.split(b"/") if p and p != b"."]


def entry_stat(e: Entry, nlink: int) -> Stat:
    """The Stat of an entry of the view, with `nlink` links."""
    t = e.type
    if t == "l":
        size = len(e.linkname)
    elif t == "f":
        size = e.size
    else:
        size = 0
    rdev = os.makedev(e.devmajor, e.devminor) if t in "cb" else 0
    return (TYPE_BITS[t] | (e.mode & 0o7777), nlink, e.uid, e.gid, rdev, size, e.mtime_ns)
