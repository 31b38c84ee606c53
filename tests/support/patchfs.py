"""A tiny pyfuse3 file system for tests/test_pyfuse3_patches.py, run as a script.

    python patchfs.py MNT CONFIG_JSON LOG

It serves a fixed tree (see TREE) and appends one line per request it receives to LOG
("OPEN ino", "READ fh", "READDIR plus|plain fh", "LOOKUP name", "OPENDIR ino", "CONN k=v",
"COLUMNS sent full|stop noted-inodes"),
so a test can tell which requests reached the server.  CONFIG_JSON switches the patched
pyfuse3 features on one by one; with none of them set it is a plain pyfuse3 file system.
"""

from __future__ import annotations

import array
import errno
import json
import os
import stat
import sys
import threading
from typing import Any

import pyfuse3
import trio

# ino: (parent, name, mode, data or children)
TREE: dict[int, tuple[int, bytes, int, Any]] = {
    1: (1, b"", stat.S_IFDIR | 0o755, [3, 4, 2, 6]),
    2: (1, b"d", stat.S_IFDIR | 0o755, [5]),
    3: (1, b"a", stat.S_IFREG | 0o644, b"alpha " * 1000),
    4: (1, b"b", stat.S_IFREG | 0o644, b"bravo!" * 333),
    5: (2, b"c", stat.S_IFREG | 0o644, b"charlie"),
    6: (1, b"t", stat.S_IFREG | 0o644, None),  # its bytes: BACKING from offset 100
}
BACKING_OFF = 100
BACKING_LEN = 300_000
MTIME_NS = -1_500_000_001  # before 1970, not whole seconds: the C path must round as Python does
COLUMN_STOPS = {4}  # entries the "columns" config leaves to readdir_reply (kind 0)


def owner(ino: int) -> tuple[int, int]:
    return 1000 + ino, ino


def columns() -> tuple[object, ...]:
    """TREE as the arrays readdir_reply_columns takes, in several widths (local id = inode)."""
    ids = range(max(TREE) + 1)
    names, name_off = b"", array.array("H", [0])
    for i in ids:
        names += TREE[i][1] if i in TREE else b""
        name_off.append(len(names))
    kinds = bytes(0 if i not in TREE or i in COLUMN_STOPS else 2 if stat.S_ISDIR(TREE[i][2])
                  else 1 for i in ids)
    modes = array.array("H", [TREE[i][2] & 0o7777 if i in TREE else 0 for i in ids])
    uids = array.array("I", [owner(i)[0] for i in ids])
    gids = memoryview(bytes(owner(i)[1] for i in ids))
    sizes = array.array("Q", [file_size(i) if i in TREE else 0 for i in ids])
    mtimes = array.array("q", [MTIME_NS] * len(ids))
    nsub = array.array("B", [sum(stat.S_ISDIR(TREE[c][2]) for c in TREE[i][3])
                             if i in TREE and stat.S_ISDIR(TREE[i][2]) else 0 for i in ids])
    return name_off, names, kinds, modes, uids, gids, sizes, mtimes, nsub, 0, 0


def file_size(ino: int) -> int:
    data = TREE[ino][3]
    return BACKING_LEN if ino == 6 else (len(data) if isinstance(data, bytes) else 0)


class ProbeFS(pyfuse3.Operations):
    supports_dot_lookup = False

    def __init__(self, cfg: dict[str, Any], log: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.log = log
        self.inode_for_zero_fh = bool(cfg.get("inode_for_zero_fh"))
        self.readdirplus = cfg.get("readdirplus", "always")
        self.backing = os.open(cfg["backing"], os.O_RDONLY) if cfg.get("backing") else -1

    def note(self, *words: object) -> None:
        self.log.write(" ".join(str(w) for w in words) + "\n")
        self.log.flush()

    def init_connection(self, conn: Any) -> None:
        self.note("CONN", f"capable={conn.capable}", f"want={conn.want}")
        want = self.cfg.get("conn", {})
        if want.get("clear_splice_read"):
            conn.want &= ~pyfuse3.CAP_SPLICE_READ
        if "max_readahead" in want:
            conn.max_readahead = want["max_readahead"]
        if want.get("bad_want"):
            missing = next(b for b in (1 << i for i in range(32)) if not conn.capable & b)
            try:
                conn.want |= missing
            except ValueError:
                self.note("CONN", "refused", missing)

    def attr(self, ino: int) -> pyfuse3.EntryAttributes:
        _, _, mode, data = TREE[ino]
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = mode
        a.st_size = file_size(ino)
        a.entry_timeout = a.attr_timeout = 3600
        if self.cfg.get("columns"):  # what the columns say, for the entries they leave to us
            a.st_uid, a.st_gid = owner(ino)
            a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = MTIME_NS
            a.st_blocks = (a.st_size + 511) // 512
            if stat.S_ISDIR(mode):
                a.st_nlink = 2 + sum(stat.S_ISDIR(TREE[c][2]) for c in data)
        return a

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self.attr(inode)

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        self.note("LOOKUP", name.decode())
        for ino in TREE[parent][3]:
            if TREE[ino][1] == name:
                return self.attr(ino)
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        self.note("OPEN", inode)
        if self.cfg.get("no_open"):
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return pyfuse3.FileInfo(fh=inode + 1000)

    async def read(self, fh: int, off: int, size: int) -> Any:
        self.note("READ", fh)
        ino = fh - 1000 if fh > 1000 else fh
        if ino == 3 and self.cfg.get("store_many"):
            def store() -> None:  # b's bytes, and an inode the kernel does not know
                self.note("STORED", pyfuse3.notify_store_many([(4, 0, TREE[4][3]),
                                                               (999, 0, b"x")]))
            threading.Thread(target=store).start()
        if ino == 6:
            n = max(0, min(size, BACKING_LEN - off))
            return pyfuse3.FdRange(self.backing, BACKING_OFF + off, n)
        return TREE[ino][3][off : off + size]

    async def opendir(self, inode: int, ctx: Any = None) -> Any:
        self.note("OPENDIR", inode)
        if self.cfg.get("no_opendir"):
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if self.cfg.get("cache_readdir"):
            return pyfuse3.FileInfo(fh=inode + 1000, cache_readdir=True, keep_cache=True)
        return inode + 1000

    async def readdir(self, fh: int, start: int, token: pyfuse3.ReaddirToken) -> None:
        plus = getattr(token, "plus", True)
        self.note("READDIR", "plus" if plus else "plain", fh)
        ino = fh - 1000 if fh > 1000 else fh
        children = TREE[ino][3]
        if self.cfg.get("columns"):
            self.reply_columns(token, children, start, plus)
            return
        for i in range(start, len(children)):
            child = children[i]
            lean = self.cfg.get("lean") and not stat.S_ISDIR(TREE[child][2])
            kw = {"lookup": False} if lean else {}
            if not pyfuse3.readdir_reply(token, TREE[child][1], self.attr(child), i + 1, **kw):
                return

    def reply_columns(self, token: pyfuse3.ReaddirToken, children: list[int], start: int,
                      plus: bool) -> None:
        """The listing from arrays; the entries they stop at through readdir_reply."""
        kids = array.array("I", children)
        lean = bool(self.cfg.get("lean")) and plus
        seen: dict[int, str] = {}
        j = start
        while j < len(kids):
            sent, full = pyfuse3.readdir_reply_columns(
                token, self.attr(1), j + 1, kids, j, len(kids), *columns(), lean=lean,
                note=seen, note_value="listed")
            self.note("COLUMNS", sent, "full" if full else "stop", *sorted(seen))
            j += sent
            if full or j >= len(kids):
                return
            child = kids[j]
            kw = {"lookup": False} if lean and not stat.S_ISDIR(TREE[child][2]) else {}
            if not pyfuse3.readdir_reply(token, TREE[child][1], self.attr(child), j + 1, **kw):
                return
            j += 1

    async def releasedir(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass


async def serve(fs: ProbeFS) -> None:
    await pyfuse3.main()


def main() -> None:
    mnt, cfg_path, log_path = sys.argv[1:4]
    with open(cfg_path) as f:
        cfg = json.load(f)
    with open(log_path, "a") as log:
        fs = ProbeFS(cfg, log)
        pyfuse3.init(fs, mnt, {"fsname=patchfs", "ro", "default_permissions"})
        try:
            trio.run(serve, fs)
        finally:
            pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
