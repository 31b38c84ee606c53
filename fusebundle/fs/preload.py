"""The sibling preload: on a directory's first read, its other small files go to the kernel.

A walk that reads every file (tar) then finds them in the page cache: no round trip per
file.  A walk that never reads (find) pays nothing.  Reading and storing run in a thread of
their own: a store into pages that the kernel holds locked for a READ still queued waits
until that READ is answered, which the server's loop must stay free to do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import threading

import pyfuse3

from fusebundle.fs.inode import Content
from fusebundle.fs.reader import Reader
from fusebundle.fs.tree import Tree

log = logging.getLogger(__name__)

PRELOAD = 128 * 1024  # files up to this size (ops' BLKSIZE) go with their directory's first read
PRELOAD_THREADS = 4  # directories sent ahead at once (more readers get no preload)
PRELOAD_SPAN = 16 << 20  # the most read at once for one directory's small files
GIL_SLICE = 0.0002  # seconds: see _short_gil_slices
DIRS_OF = 1 << 16  # file inode -> directory pairs kept for the sibling preload


class Preload:
    """Where files were listed, which directories went ahead, and the threads sending them."""

    def __init__(self, tree: Tree, reader: Reader) -> None:
        self.tree = tree
        self.reader = reader
        self._dir_of: dict[int, int] = {}  # file inode -> the directory it was listed in
        self._preloaded: set[int] = set()  # directories whose small files went to the kernel
        # Read here, not at import: the bench's A/B sets PRELOAD_THREADS = 0 before mounting.
        self._threads = threading.BoundedSemaphore(PRELOAD_THREADS)  # else: no preload
        # What the preload cost and gave, for the bench and the tests (no lock: a bench
        # figure, and CPython's += on a dict item under the GIL loses nothing that matters).
        self.counts = {"read_bytes": 0, "stored_bytes": 0, "stored_files": 0}

    def dir_map(self) -> dict[int, int]:
        """File inode -> the directory it was seen in, for the sibling preload.

        A hint for recent listings and lookups only: emptied when full, so bounded at any size.
        """
        if len(self._dir_of) >= DIRS_OF:
            self._dir_of.clear()
        return self._dir_of

    def first_read(self, ino: int) -> None:
        """`ino` is read from its start: send its directory's other small files ahead, once."""
        d = self._dir_of.get(ino)
        if d is None or d in self._preloaded:
            return
        self._preloaded.add(d)
        if self._threads.acquire(blocking=False):
            _short_gil_slices()
            threading.Thread(target=self._send_ahead, args=(d, ino), daemon=True,
                             name="fusebundle-preload").start()

    def _send_ahead(self, d: int, skip: int) -> None:
        """The preload thread: find d's small files, read them, store them in the kernel.

        A tar directory's members lie side by side in their tar: one read of the span that
        holds them serves them all (at most PRELOAD_SPAN, else the span is skipped).  Only
        sources already open are read (the file just read opened its tar).
        """
        try:
            files = []
            for _, ino, st in self.tree.listdir(d).rows(0):
                if ino == skip or not stat.S_ISREG(st[0]) or not 0 < st[5] <= PRELOAD:
                    continue
                content = self.tree.content(ino)
                if content is not None:
                    files.append((ino, content, self.reader.open_fd(content)))
            batch = self.batch(files)
            if batch:
                _store_all(batch)
                self.counts["stored_files"] += len(batch)
                self.counts["stored_bytes"] += sum(len(data) for _, _, data in batch)
        except Exception:  # a preload is only a hint: reads report real trouble
            log.debug("preload of directory %d failed", d, exc_info=True)
        finally:
            self._threads.release()

    def batch(self, files: list[tuple[int, Content, int]]
              ) -> list[tuple[int, int, bytes | memoryview]]:
        """The preload's (inode, 0, bytes) for small files: in memory, or read in one span per
        source (at most PRELOAD_SPAN) whose tar still is the one indexed."""
        batch: list[tuple[int, int, bytes | memoryview]] = []
        spans: dict[int, list[tuple[int, Content]]] = {}
        for ino, content, fd in files:
            if content.data is not None:
                batch.append((ino, 0, content.data))
            elif content.sparse is None and content.graft >= 0 and fd >= 0:
                spans.setdefault(fd, []).append((ino, content))
        for fd, group in spans.items():
            lo = min(c.offset for _, c in group)
            hi = max(c.offset + c.size for _, c in group)
            if hi - lo > PRELOAD_SPAN:
                continue
            buf = bytearray(hi - lo)
            try:
                got = os.preadv(fd, [buf], lo)
            except OSError:
                continue  # reads of the files report it
            self.counts["read_bytes"] += got
            if not self.tree.verify(group[0][1].graft):
                continue  # the tar changed: reads of the files report it
            view = memoryview(buf)
            batch.extend((ino, 0, view[c.offset - lo : c.offset - lo + c.size])
                         for ino, c in group if c.offset + c.size - lo <= got)
        # Last file first: the walk reads them first to last, and a store into a file that
        # the walk is reading waits for that READ; in the walk's order the two would go in
        # lock-step (a READ per file), against it they meet once.
        batch.reverse()
        return batch


def _short_gil_slices() -> None:
    """Let a preload thread in within 0.2 ms, not CPython's 5 ms.

    The loop keeps the GIL while requests keep coming; with the default slice a preload
    thread that needs it a few times finishes only after tar has read the whole directory.
    """
    if sys.getswitchinterval() > GIL_SLICE:
        sys.setswitchinterval(GIL_SLICE)


def _store_all(batch: list[tuple[int, int, bytes | memoryview]]) -> None:
    """Hand the bytes to the kernel: with the patched pyfuse3 in one call without the GIL."""
    many = getattr(pyfuse3, "notify_store_many", None)
    if many is not None:
        many(batch)
        return
    for ino, off, data in batch:  # each store wins the GIL back from the loop: slow, correct
        with contextlib.suppress(OSError):
            pyfuse3.notify_store(ino, off, data)
