"""Where a regular file's bytes are: an `Extent` of a `Source`, and the one way to read it.

A member stored whole is read as tarfile reads it: as a sparse member with one fragment
(0, size), so dense and sparse members share `runs` and `read_into`.  Every renderer (the FUSE
reader, pack's tar and cpio writers, image cat/diff, the copy-out of a nested tar, a member of
a docker save archive) reads through these; each says a short source in its own words.
`SourceFds` keeps the sources' descriptors for the renderers that read many files.
"""

from __future__ import annotations

import array
import io
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

CHUNK = 1 << 20  # bytes read at a time by chunks() and copy_to(): pack's copy reads as much


class Source:
    """A file extents point into, and its guard: the check that their offsets still hold."""

    __slots__ = ("path", "_verify", "_size")

    def __init__(self, path: str, verify: Callable[[], bool] | None = None,
                 size: int = -1) -> None:
        self.path = path
        self._verify = verify  # an index's stamps: False once the tar moved under it
        self._size = size  # a files: source's size when the view was built (-1: unchecked)

    @property
    def indexed(self) -> bool:
        """True for a tar an index points into (its offsets are members', not a whole file)."""
        return self._verify is not None

    def changed(self) -> str | None:
        """Why the offsets no longer hold, as one line naming the file; None while they do."""
        if self._verify is not None:
            if self._verify():
                return None
            # The tar must still be the one indexed: else the offsets may point anywhere.
            return f"{self.path}: changed or removed since it was indexed"
        if self._size < 0:
            return None
        try:
            st = os.stat(self.path)
        except OSError as e:
            return f"{self.path}: {e.strerror}"
        if st.st_size != self._size:
            return f"{self.path}: its size changed from {self._size} to {st.st_size} bytes"
        return None

    def __repr__(self) -> str:
        return f"Source({self.path!r})"


class Extent(NamedTuple):
    """`size` bytes of a file, stored from `offset` of `source`: whole, or as `fragments`
    (flat (offset, length) pairs of a GNU sparse member, stored one after another; the rest
    holes)."""

    source: Source
    offset: int
    size: int
    fragments: array.array[int] | None = None

    @classmethod
    def whole(cls, path: str, size: int) -> Extent:
        """A whole file (a files: source): its size is its guard."""
        return cls(Source(path, size=size), 0, size)

    def runs(self, pos: int, n: int) -> Iterator[tuple[int, int, int]]:
        """(position in the file, position in the source, length) of the stored bytes in
        [pos, pos+n); what lies between them is holes."""
        end = min(pos + n, self.size)
        frags = self.fragments
        if frags is None:
            if pos < end:
                yield pos, self.offset + pos, end - pos
            return
        physical = self.offset
        for k in range(0, len(frags), 2):
            frag, length = frags[k], frags[k + 1]
            lo, hi = max(frag, pos), min(frag + length, end)
            if lo < hi:
                yield lo, physical + (lo - frag), hi - lo
            elif frag >= end:
                return
            physical += length

    def read_into(self, fd: int, pos: int, buf: Any, flags: int = 0) -> int:
        """Fill buf (a writable memoryview) with the file's bytes from `pos`, holes as zeros;
        the count filled, short where the source ends (or, with RWF_NOWAIT in `flags`, where
        the page cache does).  OSError as os.preadv raises it."""
        n = min(len(buf), self.size - pos)
        if n <= 0:
            return 0
        if self.fragments is None:  # its one run, without making it: this is every READ's
            return os.preadv(fd, [buf if n == len(buf) else buf[:n]], self.offset + pos, flags)
        buf[:n] = bytes(n)
        for at, where, length in self.runs(pos, n):
            got = os.preadv(fd, [buf[at - pos : at - pos + length]], where, flags)
            if got != length:
                return at - pos + got
        return n

    def read(self, fd: int, pos: int, n: int) -> bytes | bytearray:
        """Up to n bytes from `pos` (fewer at the end of the file, or where the source ends)."""
        n = max(0, min(n, self.size - pos))
        if self.fragments is None:
            return os.pread(fd, n, self.offset + pos)  # bytes, no second copy
        buf = bytearray(n)
        got = self.read_into(fd, pos, memoryview(buf))
        return buf if got == len(buf) else buf[:got]

    def chunks(self, fd: int, step: int = CHUNK) -> Iterator[bytes | bytearray]:
        """The file's bytes, `step` at a time; EOFError where the source ends early."""
        for pos in range(0, self.size, step):
            data = self.read(fd, pos, step)
            if len(data) != min(step, self.size - pos):
                raise EOFError(self.source.path)
            yield data

    def span(self) -> tuple[int, int]:
        """The source bytes [start, end) the file is stored in."""
        stored = self.size if self.fragments is None else sum(self.fragments[1::2])
        return self.offset, self.offset + stored

    def copy_to(self, fd: int, out: Any) -> None:
        """Write the file's bytes to the binary file `out`; EOFError where the source ends."""
        for data in self.chunks(fd):
            out.write(data)

    def open(self, short: Callable[[], Exception]) -> io.RawIOBase:
        """A read-only, seekable file of the bytes (it owns a descriptor of the source);
        `short()` is raised where the source ends early, never a silently short read."""
        return _View(self, os.open(self.source.path, os.O_RDONLY | os.O_CLOEXEC), short)


class SourceFds:
    """Sources' descriptors, each opened once and kept until close(): the FUSE reader's and
    pack's writers'.  A failed open is `error("PATH: cannot open: WHY")`: each caller names
    its own error class (fs turns its into EIO for the kernel, pack prints its one line)."""

    __slots__ = ("_fds", "_error")

    def __init__(self, error: Callable[[str], Exception]) -> None:
        self._fds: dict[str, int] = {}  # source path -> its descriptor
        self._error = error

    def fd(self, path: str) -> int:
        """An open descriptor of `path`, kept until close()."""
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise self._error(f"{path}: cannot open: {e.strerror}") from None
            self._fds[path] = fd
        return fd

    def opened(self, path: str) -> int:
        """`path`'s descriptor if it is open already, else -1 (opens nothing)."""
        return self._fds.get(path, -1)

    def close(self) -> None:
        """Close every descriptor (a later fd() opens afresh)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def body_size(body: Extent | bytes | None) -> int:
    """The size of a file's body (an Extent is a tuple: its len() is not the file's)."""
    if body is None:
        return 0
    return body.size if isinstance(body, Extent) else len(body)


class _View(io.RawIOBase):
    """An Extent as a file: each read one read_into at the position."""

    def __init__(self, extent: Extent, fd: int, short: Callable[[], Exception]) -> None:
        super().__init__()
        self._extent = extent
        self._fd = fd
        self._short = short
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._extent.size}[whence]
        if base + pos < 0:
            raise ValueError("negative seek position")
        self._pos = base + pos
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes (all that is left if negative)."""
        left = self._extent.size - self._pos
        want = left if size is None or size < 0 else min(size, left)
        if want <= 0:
            return b""
        data = self._extent.read(self._fd, self._pos, want)
        if len(data) < want:
            raise self._short()
        self._pos += want
        return bytes(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        want = min(len(view), self._extent.size - self._pos)
        if want <= 0:
            return 0
        if self._extent.read_into(self._fd, self._pos, view[:want]) < want:
            raise self._short()
        self._pos += want
        return want

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
