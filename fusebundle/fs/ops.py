"""The FUSE renderer: a read-only pyfuse3 file system over a `tree.Tree`.

Each FUSE call is a short method that renders tree nodes.  Nothing here changes once mounted,
so entries and attributes are cached by the kernel for a long time and file pages are kept
across opens.  Work that may block (exporting and indexing an image on first access, reading
file data) runs in worker threads, so one slow request never holds up the others.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from fusebundle.errors import UserError
from fusebundle.fs.graft_tree import ColumnsRun
from fusebundle.fs.inode import Stat
from fusebundle.fs.preload import Preload
from fusebundle.fs.reader import Reader, SourceError
from fusebundle.fs.tree import DirListing, Tree
from fusebundle.tar import Extent, body_size

log = logging.getLogger(__name__)

TIMEOUT = 7 * 24 * 3600.0  # the tree never changes while mounted
BLKSIZE = 128 * 1024  # st_blksize: what cat and cp use as their buffer size
IO_THREADS = 16
LOAD_THREADS = 4
DIRECT_BLKSIZE = 1 << 20  # st_blksize of direct_io files: cat then asks for one full READ
CACHED_FILES = 4096  # inode -> content lookups kept for reads without an open
CACHED_LISTINGS = 256  # inode -> listing kept for readdir without an opendir
ADAPT_LOOKUPS = 32  # --listing=adaptive: lookups of lean-listed files before going plus

# What the patched pyfuse3 (patches/pyfuse3) adds; a stock pyfuse3 runs as before without it.
NO_OPEN = hasattr(pyfuse3.Operations, "inode_for_zero_fh")  # read/readdir get the inode
LISTING_MODES = hasattr(pyfuse3.Operations, "readdirplus")  # plain READDIR, lean entries
# Listings of graft directories rendered in C from the index's columns; FUSEBUNDLE_READDIR_
# COLUMNS=0 keeps the loop in Python (the tests compare the two).
READDIR_COLUMNS = (hasattr(pyfuse3, "readdir_reply_columns")
                   and os.environ.get("FUSEBUNDLE_READDIR_COLUMNS") != "0")
CAP_CACHE_SYMLINKS = 1 << 23  # not among pyfuse3's CAP_* names
# --listing: READDIRPLUS with every entry's attributes (what tar, ls -l and runc want), lean
# (attributes for directories only: the kernel makes no inode per file), plain READDIR (names
# and types), auto (the kernel picks plus while lookups follow the listing), or adaptive (lean
# until callers look up the files it listed without attributes, then plus for the mount).
LISTINGS = {"plus": "always", "lean": "always", "plain": "never", "auto": "auto",
            "adaptive": "always"}
DEFAULT_LISTING = "adaptive" if LISTING_MODES else "plus"

T = TypeVar("T")


def _guarded(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn unexpected exceptions into EIO (pyfuse3 would stop serving on them)."""

    @functools.wraps(fn)
    async def wrapper(*args: Any) -> T:
        try:
            return await fn(*args)
        except pyfuse3.FUSEError:
            raise
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[1:3])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class Operations(pyfuse3.Operations):
    """Read-only FUSE operations over a Tree."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    inode_for_zero_fh = NO_OPEN  # open/opendir answer ENOSYS once; fh 0 then means the inode

    def __init__(self, tree: Tree, listing: str | None = None, direct_io_min: int = 0) -> None:
        """`listing`: see LISTINGS (None: DEFAULT_LISTING).  `direct_io_min` > 0: files at
        least that large bypass the kernel's page cache."""
        super().__init__()
        listing = listing or DEFAULT_LISTING
        if listing not in LISTINGS:
            raise UserError(f"--listing={listing}: expected one of {', '.join(LISTINGS)}")
        if listing != "plus" and not LISTING_MODES:
            raise UserError(f"--listing={listing} needs the patched pyfuse3 (scripts/setup)")
        self.readdirplus = LISTINGS[listing]
        self._lean = listing in ("lean", "adaptive")
        self._adapting = listing == "adaptive"
        self._lean_lookups = 0
        self._lean_dirs: set[int] = set()  # directories listed lean while adapting
        self.tree = tree
        self.direct_io_min = direct_io_min
        # direct_io is a flag of an open's reply: with it, files are opened (not directories).
        self._no_open = NO_OPEN and not direct_io_min
        self._files: dict[int, tuple[Extent | bytes, int]] = {}  # fh (or inode) -> (body, fd)
        self._fh_ino: dict[int, int] = {}  # fh -> inode, when open hands out handles
        self._dirs: dict[int, Any] = {}  # fh (or inode) -> DirListing
        self._next_fh = 1
        self.reader = Reader(tree)
        self.preload = Preload(tree, self.reader)
        self._load_locks: dict[str, trio.Lock] = {}
        self._io = trio.CapacityLimiter(IO_THREADS)
        self._loaders = trio.CapacityLimiter(LOAD_THREADS)
        self._broken: set[str] = set()  # sources already reported broken
        self._broken_lock = threading.Lock()
        self._row = self._attr(0, (0, 0, 0, 0, 0, 0, 0))  # refilled by readdir

    # -------------------------------------------------------------------------- helpers
    def _attr(self, ino: int, st: Stat) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_blksize = BLKSIZE
        a.st_ino = ino
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, a.st_size, mtime = st
        a.st_atime_ns = a.st_ctime_ns = a.st_mtime_ns = mtime
        a.st_blocks = (a.st_size + 511) // 512
        if self._direct(a.st_size):
            a.st_blksize = DIRECT_BLKSIZE
        return a

    def _direct(self, size: int) -> bool:
        """True if a file of `size` bytes is opened direct_io (read without the page cache)."""
        return 0 < self.direct_io_min <= size

    def _stat(self, ino: int) -> pyfuse3.EntryAttributes:
        try:
            return self._attr(ino, self.tree.stat(ino))
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    async def _ready(self, ino: int) -> None:
        """Load (export, index, build) the grafts the children of `ino` come from."""
        for k in self.tree.pending(ino):
            if self.tree.loaded(k):
                continue
            key = self.tree.image_key(k)
            lock = self._load_locks.setdefault(key, trio.Lock())
            async with lock:
                if self.tree.loaded(k):
                    continue
                try:
                    await trio.to_thread.run_sync(self.tree.load_graft, k,
                                                  limiter=self._loaders)
                except UserError as e:
                    log.error("%s", e)
                    raise pyfuse3.FUSEError(errno.EIO) from None
                # Directories showing the graft's top now know their link counts: let the
                # kernel ask again instead of keeping what it was told before.
                self._invalidate(self.tree.graft_owners(k))

    def _invalidate(self, inos: list[int]) -> None:
        """Make the kernel ask again for attributes it may have cached (link counts)."""
        for ino in inos:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(ino, attr_only=True)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _report(self, key: str, message: str) -> None:
        """Log a broken source once, not once per read."""
        with self._broken_lock:
            if key in self._broken:
                return
            self._broken.add(key)
        log.error("%s; reads of its files answer EIO", message)

    # -------------------------------------------------------------------------- metadata
    @_guarded
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        attr = self._stat(inode)
        if self.tree.changed:
            self._invalidate(self.tree.take_changed())
        return attr

    @_guarded
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: Any = None) -> pyfuse3.EntryAttributes:
        await self._ready(parent_inode)
        if name == b".":
            return self._stat(parent_inode)
        if name == b"..":
            return self._stat(self.tree.listdir(parent_inode).parent)
        ino = self.tree.lookup(parent_inode, name)
        if self.tree.changed:
            self._invalidate(self.tree.take_changed())
        if ino is not None:
            self._note_parent(ino, parent_inode)
        if ino is None:
            a = pyfuse3.EntryAttributes()
            a.st_ino = 0  # a negative entry, cached by the kernel like a positive one
            a.entry_timeout = TIMEOUT
            return a
        return self._stat(ino)

    def _note_parent(self, ino: int, parent: int) -> None:
        """Remember where a file was found (for the preload); adapt the listing to callers.

        A lookup of a file listed without attributes means its caller wants them: tar,
        ls -l, du.  After ADAPT_LOOKUPS of those the mount lists with attributes for good;
        a walk that only descends (find) never looks files up and stays lean.
        """
        self.preload.dir_map()[ino] = parent
        if self._adapting and parent in self._lean_dirs:
            self._lean_lookups += 1
            if self._lean_lookups >= ADAPT_LOOKUPS:
                self._lean = self._adapting = False
                self._lean_dirs.clear()
                log.debug("listing: callers stat what they list; attributes from now on")

    @_guarded
    async def readlink(self, inode: int, ctx: Any = None) -> bytes:
        target = self.tree.readlink(inode)
        if target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return target

    def init_connection(self, conn: Any) -> None:
        """Called by the patched pyfuse3 at init: see `tune_connection`."""
        tune_connection(conn)

    @_guarded
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        if NO_OPEN:
            # Once: the kernel then opens directories itself, caches their listings
            # (FOPEN_CACHE_DIR|KEEP_CACHE) and sends readdir the inode.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if not self.tree.is_dir(inode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._ready(inode)
        fh = self._new_fh()
        self._dirs[fh] = self.tree.listdir(inode)
        if self.tree.changed:
            self._invalidate(self.tree.take_changed())
        return fh

    async def _listing(self, fh: int) -> Any:
        """The listing readdir pages through: by handle, or by inode without an opendir."""
        listing = self._dirs.get(fh)
        if listing is not None:
            return listing
        if not NO_OPEN:
            return self._dirs[fh]  # a handle opendir never gave: KeyError, answered EIO
        await self._ready(fh)  # no opendir did it
        listing = self.tree.listdir(fh)
        if self.tree.changed:
            self._invalidate(self.tree.take_changed())
        if len(self._dirs) >= CACHED_LISTINGS:
            self._dirs.clear()
        self._dirs[fh] = listing
        return listing

    @_guarded
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = await self._listing(fh)
        lean = self._lean and getattr(token, "plus", False)
        if lean and self._adapting:
            self._lean_dirs.add(listing.ino)
        if start_id >= len(listing) + 2:
            return  # the end: every directory's listing ends with this empty page
        if not self._reply_dots(token, listing, start_id):
            return
        pos = max(start_id, 2)
        first = pos - 2
        run = listing.columns_run() if READDIR_COLUMNS else None
        if run is None:
            for name, ino, st in listing.rows(first):
                if not self._reply_row(token, name, ino, st, pos, lean, listing.ino):
                    return
                pos += 1
            return
        self._reply_run(token, listing, run, first, pos, lean)

    def _reply_dots(self, token: pyfuse3.ReaddirToken, listing: DirListing, start_id: int) -> bool:
        """'.' and '..' from `start_id` on: inode and type only (the kernel never takes a dot
        entry's attributes: fuse_direntplus_link returns before it looks at them)."""
        a = self._row
        a.st_mode = stat.S_IFDIR
        bare = {"lookup": False} if LISTING_MODES else {}
        for pos, (name, ino) in enumerate(((b".", listing.ino), (b"..", listing.parent))):
            if pos < start_id:
                continue
            a.st_ino = ino
            if not pyfuse3.readdir_reply(token, name, a, pos + 1, **bare):
                return False
        return True

    def _reply_run(self, token: pyfuse3.ReaddirToken, listing: DirListing, run: ColumnsRun,
                   first: int, pos: int, lean: bool) -> None:
        """Children from position `first` on, in C from the columns; the entries the columns
        cannot render (links, devices, overrides) one at a time through rows()."""
        lo, hi, arrays = run
        reply = pyfuse3.readdir_reply_columns
        d = listing.ino
        dir_of = self.preload.dir_map()
        j = lo + first
        while j < hi:
            sent, full = reply(token, self._row, pos + 1, arrays[0], j, hi, *arrays[1:],
                               lean=lean, note=dir_of, note_value=d)
            j += sent
            pos += sent
            if full or j >= hi:
                return
            name, ino, st = next(listing.rows(j - lo))
            if not self._reply_row(token, name, ino, st, pos, lean, d):
                return
            j += 1
            pos += 1

    def _reply_row(self, token: pyfuse3.ReaddirToken, name: bytes, ino: int, st: Stat,
                   pos: int, lean: bool, d: int) -> bool:
        """One entry at position `pos`; False when the reply is full."""
        # A listing can be 100k entries: one attributes object, refilled (the reply copies it).
        a = self._row
        a.st_ino = ino
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid, a.st_rdev, size, mtime = st
        a.st_size = size
        a.st_atime_ns = a.st_ctime_ns = a.st_mtime_ns = mtime
        a.st_blocks = (size + 511) // 512
        if lean and not stat.S_ISDIR(a.st_mode):
            # No attributes: the kernel lists it without making an inode for it.
            return pyfuse3.readdir_reply(token, name, a, pos + 1, lookup=False)
        if not pyfuse3.readdir_reply(token, name, a, pos + 1):
            return False
        self.preload.dir_map()[ino] = d  # where the sibling preload finds its neighbours
        return True

    async def releasedir(self, fh: int) -> None:
        if not NO_OPEN:
            self._dirs.pop(fh, None)

    @_guarded
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        files, size = self.tree.counts()
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_blocks = (size + 4095) // 4096
        s.f_bfree = s.f_bavail = 0
        s.f_files = files
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @_guarded
    async def getxattr(self, inode: int, name: bytes, ctx: Any = None) -> bytes:
        attrs = self.tree.xattrs(inode)
        if attrs:
            value = attrs.get(name.decode("utf-8", "surrogateescape"))
            if value is not None:
                return bytes(value)
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    @_guarded
    async def listxattr(self, inode: int, ctx: Any = None) -> Sequence[bytes]:
        attrs = self.tree.xattrs(inode)
        return [k.encode("utf-8", "surrogateescape") for k in attrs] if attrs else []

    # -------------------------------------------------------------------------- data
    @_guarded
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        if self._no_open:
            # Once: the kernel then opens files itself (no OPEN, no RELEASE) and read gets
            # the inode.  Writes stay refused by the read-only mount.
            raise pyfuse3.FUSEError(errno.ENOSYS)
        fh = self._new_fh()
        self._files[fh] = self._open_content(inode)
        self._fh_ino[fh] = inode
        body = self._files[fh][0]
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=self._direct(body_size(body)))

    def _open_content(self, inode: int) -> tuple[Extent | bytes, int]:
        """A file's body and the descriptor of its source (-1 for bytes in memory)."""
        body = self.tree.content(inode)
        if body is None:
            raise pyfuse3.FUSEError(errno.EISDIR if self.tree.is_dir(inode) else errno.EINVAL)
        try:
            return body, self.reader.source_fd(body)
        except SourceError as e:
            self._report(_source_path(body), str(e))
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _file(self, fh: int) -> tuple[Extent | bytes, int]:
        """What a read of `fh` reads: its open's, or (without opens) the inode's."""
        found = self._files.get(fh)
        if found is not None:
            return found
        if not self._no_open:
            raise pyfuse3.FUSEError(errno.EBADF)
        found = self._open_content(fh)
        if len(self._files) >= CACHED_FILES:
            self._files.clear()
        self._files[fh] = found
        return found

    @_guarded
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        content, fd = self._file(fh)
        if off == 0:
            self.preload.first_read(fh if self._no_open else self._fh_ino.get(fh, 0))
        if isinstance(content, bytes):
            return content[off : off + size]
        if off >= content.size:
            return b""
        n = min(size, content.size - off)
        reader = self.reader
        try:
            # Bytes already in the page cache are answered right here; only a read that would
            # wait for the disk goes to a worker thread, where it holds up nobody.
            data = reader.cached(content, fd, off, n)
            if data is None:
                data = await trio.to_thread.run_sync(reader.pread, content, fd, off,
                                                     memoryview(bytearray(n)), 0,
                                                     limiter=self._io)
            return data
        except SourceError as e:
            self._report(content.source.path, str(e))
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh: int) -> None:
        self._files.pop(fh, None)
        self._fh_ino.pop(fh, None)

    async def flush(self, fh: int) -> None:
        # Nothing is ever written: ENOSYS once and the kernel stops sending flush on close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    def close_sources(self) -> None:
        """Close the sources' descriptors and mappings (the server is done)."""
        self.reader.close()

    # -------------------------------------------------------------------------- read-only
    async def _erofs(self, *args: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _erofs
    create = write = setxattr = removexattr = _erofs


def tune_connection(conn: Any) -> None:
    """What this file system asks of the FUSE connection at init (patched pyfuse3 only).

    libfuse wants SPLICE_READ by default (pyfuse3 registers write_buf): as root with
    CAP_SYS_RESOURCE each request then costs a splice and a read instead of one read, and
    without it a pipe is still set up per thread for nothing.  Nothing here is written.
    """
    conn.want &= ~pyfuse3.CAP_SPLICE_READ
    # Symlinks never change while mounted: let the kernel keep their targets (else every
    # path walk through a link asks again).  libfuse 3.14's FUSE_CAP_CACHE_SYMLINKS.
    if conn.capable & CAP_CACHE_SYMLINKS:
        conn.want |= CAP_CACHE_SYMLINKS


def _source_path(body: Extent | bytes) -> str:
    return body.source.path if isinstance(body, Extent) else "?"
