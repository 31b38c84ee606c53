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
from fusebundle.fs.inode import Content
from fusebundle.fs.mapped import Mapping
from fusebundle.fs.tree import Tree
from fusebundle.tar.index import read_sparse

log = logging.getLogger(__name__)

MAP_MIN = 128 * 1024  # reads at least this large are answered from a mapping of the source


class SourceError(Exception):
    """Reading a file's bytes failed: the message says why, the reader gets EIO."""


class Reader:
    """Source descriptors and mappings, and the reads of files' bytes out of them."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._fds: dict[str, int] = {}  # source path -> fd, opened once
        self._maps: dict[str, Mapping | None] = {}  # source path -> its mapping (None: cannot)
        self.nowait = hasattr(os, "RWF_NOWAIT")
        self._inline = bytearray()

    def source_fd(self, content: Content) -> int:
        """The descriptor of the file's source, opened once (-1 for bytes in memory)."""
        if content.data is not None or content.path is None:
            return -1
        fd = self._fds.get(content.path, -1)
        if fd < 0:
            try:
                fd = os.open(content.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise SourceError(f"{content.path}: cannot open: {e.strerror}") from None
            self._fds[content.path] = fd
        return fd

    def open_fd(self, content: Content) -> int:
        """The source's descriptor if it is open already, else -1 (the preload opens none)."""
        return self._fds.get(content.path, -1) if content.path else -1

    def cached(self, content: Content, fd: int, off: int, n: int) -> memoryview | None:
        """n bytes at `off` if the page cache has them (a view of the mapped source for a large
        read, else the shared buffer); None when a read would wait for the disk."""
        data = None
        if n >= MAP_MIN and content.sparse is None and fd >= 0:
            data = self.mapped(content, fd, off, n)
        if data is None and self.nowait:
            data = self.pread(content, fd, off, self.inline_view(n), os.RWF_NOWAIT)
        return data

    def mapped(self, content: Content, fd: int, off: int, n: int) -> memoryview | None:
        """The bytes as a view of the mapped source, for the kernel to copy; None if not cached."""
        path = content.path
        assert path is not None
        if path not in self._maps:
            try:
                self._maps[path] = Mapping(fd, os.fstat(fd).st_size)
            except OSError as e:
                log.debug("%s: cannot map (%s); reading it instead", path, e.strerror)
                self._maps[path] = None
        m = self._maps[path]
        if m is None:
            return None
        view = m.view(content.offset + off, n)
        if view is not None:
            # Checked after the residency test: a cut there leaves the pages out of the cache.
            self.check_source(content)
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

    def pread(self, content: Content, fd: int, off: int, buf: memoryview,
               flags: int) -> memoryview | None:
        """Fill buf with a file's bytes from offset `off` of its source, or raise SourceError.

        With RWF_NOWAIT in `flags`, None when the bytes are not all in the page cache.
        """
        path = content.path
        n = len(buf)
        if content.sparse is not None:
            return self._pread_sparse(content, fd, off, buf, flags)
        try:
            got = os.preadv(fd, [buf], content.offset + off, flags)
        except BlockingIOError:
            return None
        except OSError as e:
            if flags and e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.nowait = False  # not on this file system: always use a thread
                return None
            raise SourceError(f"{path}: read failed: {e.strerror}") from None
        if got != n and flags:
            return None  # partly cached: read the rest in a thread (or find it short there)
        data = buf if got == n else buf[:got]
        self.check_source(content)
        if len(data) != n:
            raise SourceError(f"{path}: ends early ({len(data)} of {n} bytes at offset "
                               f"{content.offset + off})")
        return data

    def check_source(self, content: Content) -> None:
        """Raise SourceError unless the file's source is still the one its offsets are for."""
        path = content.path
        if content.graft >= 0:
            # The tar must still be the one indexed: else the offsets may point anywhere.
            if not self.tree.verify(content.graft):
                raise SourceError(f"{path}: changed or removed since it was indexed")
            return
        try:
            st = os.stat(path)  # type: ignore[arg-type]
        except OSError as e:
            raise SourceError(f"{path}: {e.strerror}") from None
        if st.st_size != content.size:
            raise SourceError(f"{path}: its size changed from {content.size} to "
                               f"{st.st_size} bytes")

    def _pread_sparse(self, content: Content, fd: int, off: int, buf: memoryview,
                      flags: int) -> memoryview | None:
        """_pread for a sparse member: its fragments, holes as zeros (always in a thread)."""
        if flags:
            return None
        try:
            data = read_sparse(fd, content.offset, content.sparse, content.size, off, len(buf))
        except OSError as e:
            raise SourceError(f"{content.path}: read failed: {e.strerror}") from None
        self.check_source(content)
        buf[: len(data)] = data
        return buf[: len(data)]

    def close(self) -> None:
        """Close every source descriptor and mapping."""
        for m in self._maps.values():
            if m is not None:
                m.close()
        self._maps.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
