"""The bytes of regular files, served from their sources: the reader behind `ops`' read.

A source (a tar, or a `files:` file) is opened once and its descriptor kept; a large read is
answered from a mapping of it when its pages are cached, a small one with RWF_NOWAIT into one
shared buffer, and only a read that would wait for the disk goes to a worker thread.  Sparse
members read their fragments, holes as zeros.  Before bytes are handed out the source is
checked to still be the one its offsets are for.
"""

from __future__ import annotations

import errno
import logging
import os

from fusebundle import testhook
from fusebundle.fs.mapped import Mapping
from fusebundle.fs.tree import Tree
from fusebundle.tar import Extent, SourceFds

log = logging.getLogger(__name__)

MAP_MIN = 128 * 1024  # reads at least this large are answered from a mapping of the source


class SourceError(Exception):
    """Reading a file's bytes failed: the message says why, the reader gets EIO."""


class Reader:
    """Source descriptors and mappings, and the reads of files' bytes out of them."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._fds = SourceFds(SourceError)  # a failed open: EIO for the kernel
        self._maps: dict[str, Mapping | None] = {}  # source path -> its mapping (None: cannot)
        self.nowait = hasattr(os, "RWF_NOWAIT")
        self._inline = bytearray()

    def source_fd(self, body: Extent | bytes) -> int:
        """The descriptor of the file's source, opened once (-1 for bytes in memory)."""
        if not isinstance(body, Extent):
            return -1
        return self._fds.fd(body.source.path)

    def open_fd(self, body: Extent | bytes) -> int:
        """The source's descriptor if it is open already, else -1 (the preload opens none)."""
        return self._fds.opened(body.source.path) if isinstance(body, Extent) else -1

    def cached(self, ext: Extent, fd: int, off: int, n: int) -> memoryview | None:
        """n bytes at `off` if the page cache has them (a view of the mapped source for a large
        read, else the shared buffer); None when a read would wait for the disk."""
        data = None
        if n >= MAP_MIN and ext.fragments is None and fd >= 0:
            data = self.mapped(ext, fd, off, n)
        if data is None and self.nowait:
            data = self.pread(ext, fd, off, self.inline_view(n), os.RWF_NOWAIT)
        return data

    def mapped(self, ext: Extent, fd: int, off: int, n: int) -> memoryview | None:
        """The bytes as a view of the mapped source, for the kernel to copy; None if not cached."""
        path = ext.source.path
        if path not in self._maps:
            try:
                self._maps[path] = Mapping(fd, os.fstat(fd).st_size)
            except OSError as e:
                log.debug("%s: cannot map (%s); reading it instead", path, e.strerror)
                self._maps[path] = None
        m = self._maps[path]
        if m is None:
            return None
        view = m.view(ext.offset + off, n)
        if view is not None:
            # Checked after the residency test: a cut there leaves the pages out of the cache.
            self.check_source(ext)
            testhook.stop_at("read-reply")
        return view

    def inline_view(self, n: int) -> memoryview:
        """n bytes of the buffer for reads answered without an await.

        pyfuse3 copies a read's bytes into its reply before the next request is taken, so
        one buffer serves them all: no allocating, zeroing and freeing 1 MiB per request.
        """
        if len(self._inline) < n:
            self._inline = bytearray(n)
        return memoryview(self._inline)[:n]

    def pread(self, ext: Extent, fd: int, off: int, buf: memoryview,
              flags: int) -> memoryview | None:
        """Fill buf with a file's bytes from `off` (dense or sparse: one read_into), or raise
        SourceError.  With RWF_NOWAIT in `flags`, None when they are not all in the page cache.
        """
        path = ext.source.path
        n = len(buf)
        try:
            got = ext.read_into(fd, off, buf, flags)
        except BlockingIOError:
            return None
        except OSError as e:
            if flags and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.nowait = False  # not on this file system: always use a thread
                return None
            raise SourceError(f"{path}: read failed: {e.strerror}") from None
        if got != n and flags:
            return None  # partly cached: read the rest in a thread (or find it short there)
        self.check_source(ext)
        if got != n:
            if ext.fragments is not None:
                raise SourceError(f"{path}: read failed: sparse member data past end of file")
            raise SourceError(f"{path}: ends early ({got} of {n} bytes at offset "
                              f"{ext.offset + off})")
        return buf

    def check_source(self, ext: Extent) -> None:
        """Raise SourceError unless the file's source is still the one its offsets are for."""
        why = ext.source.changed()
        if why is not None:
            raise SourceError(why)


    def close(self) -> None:
        """Close every source descriptor and mapping."""
        for m in self._maps.values():
            if m is not None:
                m.close()
        self._maps.clear()
        self._fds.close()
