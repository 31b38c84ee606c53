"""The sibling preload: on a directory's first read, its other small files go to the kernel.

A walk that reads every file (tar) then finds them in the page cache: no round trip per
file.  A walk that never reads (find) pays nothing.  Only dense spans are read: runs of small
files side by side in their tar, never the bytes of a large file lying between them (issue
22: in a real layer `usr/bin`'s small files are interleaved with large ones, and reading past
them doubled the bytes read).  The loop works out what to send and, when the tar's pages are
cached, reads it too, in one go; one thread of the preload's own stores it, taking the GIL
once per directory (no GIL-interval tuning: under load, every forced hand-off of the GIL to
a thread the scheduler had not run yet stalled the loop).  A store into pages that the
kernel holds locked for a READ still queued waits until that READ is answered, which is why
the loop never stores itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import threading

import pyfuse3

from fusebundle.fs.reader import Reader
from fusebundle.fs.tree import Tree
from fusebundle.tar import Source

log = logging.getLogger(__name__)

PRELOAD = 128 * 1024  # files up to this size (ops' BLKSIZE) go with their directory's first read
# Directories waiting to be sent (0: no preload; a walk reading faster than this gets none).
PRELOAD_THREADS = 4
PRELOAD_SPAN = 16 << 20  # the most read for one directory's small files (the thread's buffer)
# Two small files further apart than this have another member's bytes between them (a large
# file, a subdirectory's files): a tar header, its padding and a PAX record take under 3 KiB.
GAP = 16 * 1024
HEADER = 1536  # a small member's own overhead in its tar: header block, padding, PAX record
# Read the spans on the loop when the source's pages are cached (RWF_NOWAIT; else the thread
# reads them): the thread then needs the GIL once a directory, not once a span, and each time
# it needs it while the loop is busy it waits out a switch interval (5 ms) and falls behind.
READ_ON_LOOP = True
# The loop waits this long at most (seconds) for the thread to take a directory it queued: the
# wait hands the thread the GIL at once, where it would otherwise wait out a switch interval
# (5 ms) while the walk reads on; 2 ms bounds what a thread the scheduler has not run costs.
HANDOFF = 0.002
MIN_FILES = 2  # a span of one file saves one READ and costs a store: not worth the thread
DIRS_OF = 1 << 16  # file inode -> directory pairs kept for the sibling preload

Stored = tuple[int, int, "bytes | memoryview"]  # inode, offset, bytes: one store
# A span to read: fd, its start and end, its source (whose guard says whether the offsets
# still hold), and its files (inode, offset, size).
Job = tuple[int, int, int, Source, list[tuple[int, int, int]]]


def dense_spans(members: list[tuple[int, int, int]]) -> list[tuple[int, int, list[int]]]:
    """(lo, hi, indexes) of the runs of `members` (inode, offset, size in one tar) worth reading.

    A run ends where the next member starts more than GAP past the last one's end; a run is
    kept if it holds MIN_FILES or more, fits in PRELOAD_SPAN, and the bytes in it that are
    no member's own, headers aside, are at most the members' bytes (amplification <= 2).
    """
    order = sorted(range(len(members)), key=lambda i: members[i][1])
    runs: list[list[int]] = []
    end = -1
    for i in order:
        _, off, size = members[i]
        if not runs or off - end > GAP:
            runs.append([])
        runs[-1].append(i)
        end = max(end, off + size)
    out = []
    for run in runs:
        lo = members[run[0]][1]
        hi = max(members[i][1] + members[i][2] for i in run)
        own = sum(members[i][2] for i in run)
        if (len(run) >= MIN_FILES and hi - lo <= PRELOAD_SPAN
                and hi - lo - own - HEADER * len(run) <= own):
            out.append((lo, hi, run))
    return out


class Preload:
    """Where files were listed, which directories went ahead, and the thread sending them."""

    def __init__(self, tree: Tree, reader: Reader) -> None:
        self.tree = tree
        self.reader = reader
        self._dir_of: dict[int, int] = {}  # file inode -> the directory it was listed in
        self._preloaded: set[int] = set()  # directories whose small files went to the kernel
        self._read: set[int] = set()  # files read from their start: not worth a store any more
        # Read here, not at import: the bench's A/B sets PRELOAD_THREADS = 0 before mounting.
        self._waiting = threading.BoundedSemaphore(PRELOAD_THREADS)  # else: no preload
        self._jobs: queue.SimpleQueue[tuple[list[Job] | None, list[Stored], bytearray]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._taken = threading.Event()  # the thread has taken the last directory queued
        # Buffers for one directory's spans each (<= PRELOAD_SPAN), reused: a fresh one costs
        # a page fault per 4 KiB.  At most PRELOAD_THREADS are out at once.
        self._buffers: list[bytearray] = []
        # What the preload cost and gave, for the bench and the tests.
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
        if len(self._read) >= DIRS_OF:
            self._read.clear()
        self._read.add(ino)
        d = self._dir_of.get(ino)
        if d is None or d in self._preloaded:
            return
        self._preloaded.add(d)
        if not self._waiting.acquire(blocking=False):
            return
        try:
            jobs, inline = self._plan(d, ino)
        except Exception:  # a preload is only a hint: reads report real trouble
            log.debug("preload of directory %d failed", d, exc_info=True)
            jobs, inline = [], []
        if not jobs and not inline:
            self._waiting.release()
            return
        buf = self._buffers.pop() if self._buffers else bytearray()
        self._taken.clear()
        if READ_ON_LOOP and self.reader.nowait:
            batch, buf = self._fill(jobs, inline, buf, os.RWF_NOWAIT)
            self._jobs.put((None, batch, buf))
        else:
            self._jobs.put((jobs, inline, buf))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="fusebundle-preload")
            self._thread.start()
        if HANDOFF:
            self._taken.wait(HANDOFF)

    def _plan(self, d: int, skip: int) -> tuple[list[Job], list[Stored]]:
        """The dense spans of d's small files to read (see dense_spans), and those in memory.

        Only sources already open are read (the file just read opened its tar).
        """
        inline: list[Stored] = []
        by_fd: dict[int, list[tuple[int, int, int]]] = {}
        source_of: dict[int, Source] = {}
        for _, ino, st in self.tree.listdir(d).rows(0):
            if ino == skip or not stat.S_ISREG(st[0]) or not 0 < st[5] <= PRELOAD:
                continue
            body = self.tree.content(ino)
            if body is None:
                continue
            if isinstance(body, bytes):
                inline.append((ino, 0, body))
            elif body.fragments is None and body.source.indexed:
                fd = self.reader.open_fd(body)
                if fd >= 0:
                    by_fd.setdefault(fd, []).append((ino, body.offset, body.size))
                    source_of[fd] = body.source
        jobs: list[Job] = []
        planned = 0
        for fd, members in by_fd.items():
            for lo, hi, run in dense_spans(members):
                if planned + hi - lo > PRELOAD_SPAN:
                    break  # the thread's buffer holds one directory's spans
                jobs.append((fd, lo, hi, source_of[fd], [members[i] for i in run]))
                planned += hi - lo
        return jobs, inline

    def _run(self) -> None:
        """The preload thread: read (unless the loop did) and store, one directory at a time."""
        while True:
            jobs, batch, buf = self._jobs.get()
            self._taken.set()
            try:
                if jobs is not None:
                    batch, buf = self._fill(jobs, batch, buf, 0)
                self._store(batch)
            except Exception:  # a preload is only a hint: reads report real trouble
                log.debug("preload failed", exc_info=True)
            finally:
                batch = []
                self._buffers.append(buf)
                self._waiting.release()

    def _fill(self, jobs: list[Job], inline: list[Stored], buf: bytearray, flags: int
              ) -> tuple[list[Stored], bytearray]:
        """Read each span into `buf` (grown if need be): the stores of the files of tars still
        the ones indexed.  With RWF_NOWAIT in `flags`, a span not all cached is left out."""
        batch = list(inline)
        need = sum(hi - lo for _, lo, hi, _, _ in jobs)
        if len(buf) < need:
            buf = bytearray(need)
        view = memoryview(buf)
        at = 0
        checked: dict[Source, bool] = {}
        for fd, lo, hi, source, members in jobs:
            span = view[at : at + hi - lo]
            at += hi - lo
            try:
                got = os.preadv(fd, [span], lo, flags)
            except OSError:
                continue  # would wait for the disk, or failed: reads of the files see to it
            self.counts["read_bytes"] += got
            if source not in checked:
                checked[source] = source.changed() is None
            if checked[source]:  # else the tar changed: reads of the files report it
                batch.extend((ino, 0, span[off - lo : off - lo + size])
                             for ino, off, size in members if off - lo + size <= got)
        return batch, buf

    def _store(self, batch: list[Stored]) -> None:
        """Store the files the walk has not read meanwhile (those are in the kernel already)."""
        read = self._read
        batch = [s for s in batch if s[0] not in read]
        if not batch:
            return
        # Last file first: the walk reads them first to last, and a store into a file that
        # the walk is reading waits for that READ; in the walk's order the two would go in
        # lock-step (a READ per file), against it they meet once.
        batch.reverse()
        _store_all(batch)
        self.counts["stored_files"] += len(batch)
        self.counts["stored_bytes"] += sum(len(data) for _, _, data in batch)


def _store_all(batch: list[Stored]) -> None:
    """Hand the bytes to the kernel: with the patched pyfuse3 in one call without the GIL."""
    many = getattr(pyfuse3, "notify_store_many", None)
    if many is not None:
        many(batch)
        return
    for ino, off, data in batch:  # each store wins the GIL back from the loop: slow, correct
        with contextlib.suppress(OSError):
            pyfuse3.notify_store(ino, off, data)
