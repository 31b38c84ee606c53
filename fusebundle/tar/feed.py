"""Scan a tar while it is being written: the scanner reads the bytes as the writer hands them on.

The writer appends each piece to the file first and then gives it to `TarFeed.push`; the
scanner, in a thread of its own (`ScanAlong`), reads through the `TarBytes` interface and waits
where it is ahead of the writer.  Pieces stay in memory only until the scanner has passed them,
and never more than `_WINDOW` bytes of them: a scanner that falls that far behind reads what it
missed back from the file, where it already is.  The writer never waits for the scanner.
"""

from __future__ import annotations

import os
import threading
from collections import deque

from fusebundle.errors import CorruptTar
from fusebundle.tar.header import Corrupt
from fusebundle.tar.index import Stamp, TarIndex
from fusebundle.tar.scan import ScanColumns, scan_tar

# The scanner asks for at most 1 MiB at once (an extension header, a sparse map; headers in
# reads of 512 KiB) and keeps up with a decoder on most layers: 4 MiB is four of the store's
# largest pieces (stream.py's MAX_OUT) behind the writer before it reads from the file instead
# (from the page cache: the writer has just put them there).
_WINDOW = 4 << 20


class Abandoned(Exception):
    """Internal: the writer gave up on the tar; the scanner stops where it waits."""


class TarFeed:
    """The bytes of a tar still being written (a `TarBytes` for the scanner)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd  # the file being written, for what is no longer held
        self._cond = threading.Condition()
        self._pieces: deque[tuple[int, bytes]] = deque()  # (offset, bytes), in tar order
        self._held = 0  # bytes in _pieces
        self._end = 0  # bytes written so far
        self._complete = False  # no more will come: _end is the tar's size
        self._abandoned = False
        self._done = False  # the scanner needs nothing more

    # -- the writer's side
    def push(self, data: bytes) -> None:
        """Take the next bytes of the tar, just written to the file."""
        with self._cond:
            start, self._end = self._end, self._end + len(data)
            if self._done:
                return
            self._pieces.append((start, data))
            self._held += len(data)
            while self._held > _WINDOW:
                self._held -= len(self._pieces.popleft()[1])
            self._cond.notify()

    def complete(self) -> None:
        """The tar is whole: what was pushed is all of it."""
        with self._cond:
            self._complete = True
            self._cond.notify_all()

    def abandon(self) -> None:
        """The tar will not be finished: the scanner stops at its next wait."""
        with self._cond:
            self._abandoned = True
            self._cond.notify_all()

    # -- the scanner's side
    def finished(self) -> None:
        """The scanner is done: hold nothing more."""
        with self._cond:
            self._done = True
            self._pieces.clear()
            self._held = 0

    def _wait_for(self, end: int) -> int:
        """Wait until the tar reaches `end` bytes or is complete; the bytes written then."""
        while self._end < end and not self._complete and not self._abandoned:
            self._cond.wait()
        if self._abandoned:
            raise Abandoned
        return self._end

    def at_least(self, size: int) -> int:
        """The bytes written once there are `size` of them, or the whole tar's size if shorter."""
        with self._cond:
            return self._wait_for(size)

    def read(self, n: int, pos: int) -> bytes:
        """Bytes [pos, pos + n) once written, fewer only where the tar ends."""
        with self._cond:
            stop = min(pos + n, self._wait_for(pos + n))
            if stop <= pos:
                return b""
            pieces = self._pieces
            # Reads only move forward: what ends before this one is never asked for again.
            while pieces and pieces[0][0] + len(pieces[0][1]) <= pos:
                self._held -= len(pieces.popleft()[1])
            if pieces and pieces[0][0] <= pos:
                return _gather(pieces, pos, stop)
        return _pread_all(self._fd, stop - pos, pos)  # fell behind: read it back from the file


def _gather(pieces: deque[tuple[int, bytes]], pos: int, stop: int) -> bytes:
    """Bytes [pos, stop) from the held pieces (which cover them)."""
    out = []
    for start, data in pieces:
        if start >= stop:
            break
        if start == pos and start + len(data) <= stop:
            out.append(data)  # a whole piece: no copy
        else:
            out.append(data[max(pos - start, 0) : stop - start])
    return out[0] if len(out) == 1 else b"".join(out)


def _pread_all(fd: int, n: int, pos: int) -> bytes:
    """n bytes at pos of a file known to hold them."""
    data = os.pread(fd, n, pos)
    while len(data) < n:
        more = os.pread(fd, n - len(data), pos + len(data))
        if not more:
            raise OSError(f"the tar being written is shorter than {pos + n} bytes")
        data += more
    return data


class ScanAlong:
    """Index a tar while it is written to `fd`: give it every byte in order with `push`, then
    `save` writes what `TarIndex.scan` would have made of the file.

    Use it as a context manager: on the way out a scan not taken is abandoned and its thread
    ended.
    """

    def __init__(self, fd: int, sparse: bool = False) -> None:
        self._fd = fd
        self.feed = TarFeed(fd)
        self.push = self.feed.push
        self._sparse = sparse
        self._cols: ScanColumns | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fusebundle-scan-along",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._cols = scan_tar(self.feed, None, self._sparse)
        except BaseException as e:  # handed to the caller by columns()
            self._error = e
        finally:
            self.feed.finished()

    def save(self, tar_path: str, index_path: str) -> None:
        """Save the tar's index at `index_path` once the tar is complete at `tar_path` (keyed on
        the file as it is now); CorruptTar as TarIndex.scan raises it."""
        TarIndex.save_columns(index_path, tar_path, self._stamp(), self._columns(tar_path))

    def _stamp(self) -> Stamp:
        return Stamp.of(os.fstat(self._fd))

    def _columns(self, tar_path: str) -> ScanColumns:
        """The scan's columns once the tar is whole (they are the caller's from then on)."""
        self.feed.complete()
        self._thread.join()
        if isinstance(self._error, Corrupt):
            what, offset = self._error.args
            raise CorruptTar(f"{tar_path}: {what} at offset {offset}") from None
        if self._error is not None:
            raise self._error
        assert self._cols is not None
        cols, self._cols = self._cols, None
        return cols

    def close(self) -> None:
        """Stop the scan if it still runs, and wait for its thread."""
        self.feed.abandon()
        self._thread.join()

    def __enter__(self) -> ScanAlong:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
