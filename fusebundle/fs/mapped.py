"""Read-only mappings of source files, so that a large read is answered without a copy of ours.

A reply given as a view of a mapping is copied by the kernel straight from the source's page
cache into the mount's: one copy fewer than reading into a buffer first.  Python code never
reads the mapped bytes itself: a page past the end of a file cut under the mount would kill the
server with SIGBUS, whereas the kernel's copy of it fails (EFAULT) and the reader gets EIO.
"""

from __future__ import annotations

import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]

PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value
MADV_DONTNEED = 4
MADV_WILLNEED = 3
MADV_POPULATE_READ = 22  # Linux 5.14: fill the page tables now, one call instead of faults
DROP_EVERY_BYTES = 4 << 20  # unmap served pages after this many bytes: they count as our RSS


class Mapping:
    """One whole file mapped shared and read-only; hands out views of page-cached ranges."""

    def __init__(self, fd: int, size: int) -> None:
        if size <= 0:
            raise OSError(0, "empty file")
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.addr, self.size = addr, size
        self._bytes = memoryview((ctypes.c_char * size).from_address(addr)).cast("B")
        self._vec = ctypes.create_string_buffer(0)
        self._handed = 0  # bytes handed out since the page tables were last emptied

    def view(self, off: int, n: int) -> memoryview | None:
        """Bytes [off, off+n) for a reply; None unless every page is in the page cache.

        The reply is copied while the server holds its one thread: a page that still had to
        come from the disk would stall every request, so such a read goes to a worker instead.
        """
        if off < 0 or n <= 0 or off + n > self.size:
            return None
        start = off - off % PAGE
        length = off + n - start
        pages = (length + PAGE - 1) // PAGE
        if len(self._vec) < pages:
            self._vec = ctypes.create_string_buffer(pages)
        if _libc.mincore(self.addr + start, length, self._vec) != 0:
            return None
        if b"\0" in ctypes.string_at(self._vec, pages):
            _libc.madvise(self.addr + start, length, MADV_WILLNEED)  # for the next try
            return None
        if self._handed > DROP_EVERY_BYTES:
            self.drop()
        self._handed += length
        # One call maps the range; else the kernel's copy faults 64 KiB at a time.  A failure
        # (EFAULT: cut under us) is left for the copy to meet and turn into EIO.
        _libc.madvise(self.addr + start, length, MADV_POPULATE_READ)
        return self._bytes[off : off + n]

    def drop(self) -> None:
        """Empty the page tables (the page cache keeps the pages): RSS back to nothing.

        Safe between requests only: every view handed out has been copied by then.
        """
        _libc.madvise(self.addr, self.size, MADV_DONTNEED)
        self._handed = 0

    def close(self) -> None:
        """Unmap; no view of it may be used afterwards."""
        if self.addr:
            try:
                self._bytes.release()
            except BufferError:
                return  # a view is still held: leave it mapped (the process is ending)
            _libc.munmap(self.addr, self.size)
            self.addr = 0
