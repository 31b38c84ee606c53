"""pack: render a view as one PAX tar, copying file data straight from the cached exports."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence

from fusebundle import testhook
from fusebundle.atomic import Temp, atomic_file
from fusebundle.bundle.entry import Entry
from fusebundle.bundle.view import View
from fusebundle.errors import CorruptTar, UserError
from fusebundle.tar.index import read_sparse

BLOCK = 512
TYPEFLAGS = {"f": b"0", "h": b"1", "l": b"2", "c": b"3", "b": b"4", "d": b"5", "p": b"6"}
SMALL = 64 * 1024  # files below this are read into the write buffer: fewer syscalls
WINDOW = 1 << 20  # small files are read from the source this much at a time
FLUSH_AT = 1 << 20
MAX_OCTAL_8 = 0o7777777
MAX_OCTAL_12 = 0o77777777777


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body)
    size = n + len(str(n))
    # The length counts its own digits; one more pass settles a carry (99 -> 100).
    size = n + len(str(size))
    return str(size).encode() + body


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def _ustar(name: bytes, e: Entry, size: int, typeflag: bytes, linkname: bytes,
           mtime: int, uid: int, gid: int) -> bytes:
    fields = [
        name[:100].ljust(100, b"\0"),
        _octal(e.mode & 0o7777, 8),
        _octal(uid, 8),
        _octal(gid, 8),
        _octal(size, 12),
        _octal(mtime, 12),
        b" " * 8,  # checksum placeholder: spaces, as the format says
        typeflag,
        linkname[:100].ljust(100, b"\0"),
        b"ustar\x0000",
        b"\0" * 32,
        b"\0" * 32,
        _octal(e.devmajor, 8) if e.type in "cb" else b"\0" * 8,
        _octal(e.devminor, 8) if e.type in "cb" else b"\0" * 8,
        b"\0" * 155,
        b"\0" * 12,
    ]
    hdr = bytearray(b"".join(fields))
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr)


def _fits(s: bytes) -> bool:
    return len(s) <= 100 and s.isascii()


def header(e: Entry) -> bytes:
    """The header block(s) of one entry: a PAX record set first when ustar cannot hold it."""
    size = e.size if e.type == "f" else 0
    records: list[bytes] = []
    if not _fits(e.path):
        records.append(_pax_record(b"path", e.path))
    if e.linkname and not _fits(e.linkname):
        records.append(_pax_record(b"linkpath", e.linkname))
    sec, ns = divmod(e.mtime_ns, 1_000_000_000)
    mtime = sec
    if ns or not 0 <= sec <= MAX_OCTAL_12:
        frac = f".{ns:09d}".rstrip("0") if ns else ""
        records.append(_pax_record(b"mtime", f"{sec}{frac}".encode()))
        mtime = min(max(sec, 0), MAX_OCTAL_12)
    uid, gid = e.uid, e.gid
    if uid > MAX_OCTAL_8:
        records.append(_pax_record(b"uid", str(uid).encode()))
        uid = 0
    if gid > MAX_OCTAL_8:
        records.append(_pax_record(b"gid", str(gid).encode()))
        gid = 0
    if size > MAX_OCTAL_12:
        records.append(_pax_record(b"size", str(size).encode()))
    for k, v in sorted((e.xattrs or {}).items()):
        records.append(_pax_record(b"SCHILY.xattr." + k.encode(), bytes(v)))
    typeflag = TYPEFLAGS[e.type]
    main = _ustar(e.path, e, 0 if size > MAX_OCTAL_12 else size, typeflag, e.linkname,
                  mtime, uid, gid)
    if not records:
        return main
    for p in (e.path, e.linkname):
        try:
            p.decode("utf-8")
        except UnicodeDecodeError:
            records.insert(0, _pax_record(b"hdrcharset", b"BINARY"))
            break
    data = b"".join(records)
    base = os.path.basename(e.path.rstrip(b"/"))
    pax_name = (b"PaxHeaders/" + base)[:100]
    pax = Entry(path=pax_name, type="f", mode=0o644)
    pax_hdr = _ustar(pax_name, pax, len(data), b"x", b"", mtime, 0, 0)
    return pax_hdr + data + _padding(len(data)) + main


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


class _Writer:
    """Buffered writes to a file descriptor, with zero-copy transfers for large data."""

    def __init__(self, fd: int, seekable: bool) -> None:
        self.fd = fd
        self.seekable = seekable
        self.pos = 0
        self.buf = bytearray()
        self.sources: dict[str, int] = {}
        # The last window read from a source: small files lie one after another in a tar,
        # so one read serves many of them.
        self.window = (-1, 0, b"")

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        with memoryview(self.buf) as whole:
            view = whole
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.pos += n
            view.release()
        self.buf.clear()

    def _source(self, path: str) -> int:
        fd = self.sources.get(path)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise UserError(f"{path}: cannot open: {e.strerror}") from None
            self.sources[path] = fd
        return fd

    def copy(self, path: str, offset: int, size: int) -> None:
        src = self._source(path)
        if size <= SMALL:
            self.write(self._small(path, src, offset, size))
            return
        self.flush()
        done = 0
        while done < size:
            n = self._transfer(src, offset + done, size - done)
            if n <= 0:
                raise _short(path, offset, size)
            done += n
            self.pos += n

    def copy_sparse(self, path: str, offset: int, fragments: Sequence[int], size: int) -> None:
        """A sparse member's bytes, its holes written as zeros, 1 MiB at a time."""
        src = self._source(path)
        for pos in range(0, size, 1 << 20):
            try:
                self.write(read_sparse(src, offset, fragments, size, pos, 1 << 20))
            except OSError:
                raise _short(path, offset, size) from None

    def _small(self, path: str, src: int, offset: int, size: int) -> bytes:
        wsrc, wstart, data = self.window
        if wsrc != src or not wstart <= offset or offset + size > wstart + len(data):
            data = os.pread(src, max(size, WINDOW), offset)
            self.window = (src, offset, data)
            wstart = offset
        piece = data[offset - wstart : offset - wstart + size]
        if len(piece) != size:
            raise _short(path, offset, size)
        return piece

    def _transfer(self, src: int, offset: int, count: int) -> int:
        count = min(count, 1 << 30)
        if self.seekable:
            with contextlib.suppress(OSError):
                return os.copy_file_range(src, self.fd, count, offset)
            self.seekable = False  # e.g. EXDEV on old kernels: fall back for good
        try:
            return os.sendfile(self.fd, src, offset, count)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS):
                raise
        data = os.pread(src, min(count, 1 << 20), offset)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        return len(data)

    def close(self) -> None:
        for fd in self.sources.values():
            os.close(fd)
        self.sources.clear()


def _short(path: str, offset: int, size: int) -> CorruptTar:
    return CorruptTar(f"{path}: ends early: {size} bytes expected at offset {offset}; "
                      f"delete it to export the image again")


def write_entries(entries: Iterable[Entry], fd: int, seekable: bool,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write entries as a tar to `fd`; return the number of bytes written."""
    w = _Writer(fd, seekable)
    try:
        for e in entries:
            w.write(header(e))
            if e.type == "f" and e.size:
                if e.data is not None:
                    w.write(e.data)
                elif e.sparse is not None and e.src is not None:
                    w.copy_sparse(e.src, e.offset, e.sparse, e.size)
                elif e.src is not None:
                    w.copy(e.src, e.offset, e.size)
                w.write(_padding(e.size))
                if progress:
                    progress(e.size)
        w.write(b"\0" * (2 * BLOCK))
        w.flush()
    finally:
        w.close()
    return w.pos


def pack(view: View, out: str, progress_factory: Callable[[int], Callable[[int], None]]
         | None = None) -> int:
    """Write the view to `out` (a path, or '-' for stdout) atomically; return bytes written."""
    progress = None
    if progress_factory is not None:
        # A first pass over the indexes (no data) gives the total for the progress bar.
        progress = progress_factory(sum(e.size for e in view.entries() if e.type == "f"))
    return write(view.entries(), out, progress)


def write(entries: Iterable[Entry], out: str,
          progress: Callable[[int], None] | None = None) -> int:
    """Write entries as one tar to `out` (a path, written atomically, or '-' for stdout, never
    a terminal); return bytes written.  Every renderer of tars (pack, image export) ends here."""
    if out == "-":
        fd = sys.stdout.fileno()
        if os.isatty(fd):
            raise UserError("refusing to write a tar to a terminal; use -o FILE or a pipe")
        sys.stdout.flush()
        return write_entries(entries, fd, stat.S_ISREG(os.fstat(fd).st_mode), progress)
    directory = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(directory):
        raise UserError(f"{out}: directory {directory} does not exist")
    if os.path.isdir(out):
        raise UserError(f"{out}: is a directory")
    prefix = "." + os.path.basename(out) + ".fusebundle-"
    try:
        _clean_dead_temps(directory, prefix)
        temp = Temp(*_locked_temp(directory, prefix))
    except OSError as e:
        raise UserError(f"{out}: cannot create a file in {directory}: {e.strerror}") from None
    try:
        # The next pack to `out` removes the temporary file if even removing it fails here.
        with atomic_file(out, temp) as t:
            n = write_entries(entries, t.fd, True, progress)
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(t.fd, 0o666 & ~umask)
            testhook.stop_at("pack-write")
        return n
    except OSError as e:
        raise UserError(f"{out}: write failed: {e.strerror or e}") from None


def _locked_temp(directory: str, prefix: str) -> tuple[int, str]:
    """A new temporary file for the output, under a name ending in .part only once it is locked:
    the lock, held until the rename, tells a later pack that its writer is alive."""
    fd, new = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".new")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = new.removesuffix(".new") + ".part"
        os.rename(new, tmp)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        raise
    return fd, tmp


NEW_STALE = 60.0  # seconds: a .new file is locked and renamed within microseconds of its birth


def _clean_dead_temps(directory: str, prefix: str) -> None:
    """Remove the temporary files of earlier packs to the same output whose writer died."""
    now = time.time()
    for n in os.listdir(directory):
        if not n.startswith(prefix) or not n.endswith((".part", ".new")):
            continue
        path = os.path.join(directory, n)
        if n.endswith(".new"):  # (killed between creating and locking it)
            with contextlib.suppress(OSError):
                if now - os.lstat(path).st_mtime < NEW_STALE:
                    continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live pack is writing it
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        finally:
            os.close(fd)
