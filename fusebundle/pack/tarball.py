"""The tar writer: PAX headers as moby's archive writes them, file data copied straight from
the sources (small files gathered in one buffer, sparse members with their holes as zeros)."""

from __future__ import annotations

import contextlib
import errno
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from zlib import adler32

from fusebundle.bundle import Entry, Members
from fusebundle.errors import CorruptTar, UserError
from fusebundle.tar import Extent, SourceFds
from fusebundle.tar.index import DROP_EVERY_ENTRIES

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


# The ustar block as moby's writer fills it: name, then mode, uid, gid, size and mtime as one
# run of octal fields, the checksum, typeflag, linkname, magic "ustar\0" and version "00",
# empty uname and gname, devmajor and devminor, an empty prefix and the pad. struct pads each
# field with NULs, as the format wants.
_USTAR = struct.Struct("100s48s8s1s100s8s64s16s167s")
_MAGIC = b"ustar\x0000"
_PADS = [b"\0" * n for n in range(BLOCK)]
# The checksum is the sum of the block's bytes with its own field as eight spaces. The fixed
# part (those spaces and the magic) is summed once; the rest is summed by adler32, in C: its
# low half is 1 + the byte sum modulo 65521, exact here, as name and linkname (100 bytes of at
# most 255 each) and the octal fields (64 bytes of at most '7') sum to at most 54520.
_FIXED_SUM = 8 * ord(" ") + sum(_MAGIC)


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
           typeflag: bytes, linkname: bytes, dev: bytes) -> bytes:
    """One ustar block; every number already fits its field (header() sees to that)."""
    name, linkname = name[:100], linkname[:100]
    numbers = b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode, uid, gid, size, mtime)
    total = adler32(dev, adler32(numbers, adler32(linkname, adler32(name)))) & 0xFFFF
    checksum = b"%06o\0 " % (_FIXED_SUM + typeflag[0] + total - 1)
    return _USTAR.pack(name, numbers, checksum, typeflag, linkname, _MAGIC, b"", dev, b"")


def _dev(e: Entry) -> bytes:
    return b"%07o\0%07o\0" % (e.devmajor, e.devminor) if e.type in "cb" else b""


def _fits(s: bytes) -> bool:
    return len(s) <= 100 and s.isascii()


def header(e: Entry) -> bytes:
    """The header block(s) of one entry: a PAX record set first when ustar cannot hold it."""
    size = e.size if e.type == "f" else 0
    sec, ns = divmod(e.mtime_ns, 1_000_000_000)
    path, link = e.path, e.linkname
    # The common entry needs no PAX record: one block, no record list built.
    if (not ns and 0 <= sec <= MAX_OCTAL_12 and e.uid <= MAX_OCTAL_8 and e.gid <= MAX_OCTAL_8
            and size <= MAX_OCTAL_12 and not e.xattrs and len(path) <= 100
            and len(link) <= 100 and path.isascii() and link.isascii()):
        return _ustar(path, e.mode & 0o7777, e.uid, e.gid, size, sec, TYPEFLAGS[e.type], link,
                      _dev(e))
    return _pax_header(e, size, sec, ns)


def _pax_header(e: Entry, size: int, sec: int, ns: int) -> bytes:
    """An entry's PAX record set (path, linkpath, mtime, uid, gid, size, xattrs, as ustar
    cannot hold them) and its ustar block."""
    records: list[bytes] = []
    if not _fits(e.path):
        records.append(_pax_record(b"path", e.path))
    if e.linkname and not _fits(e.linkname):
        records.append(_pax_record(b"linkpath", e.linkname))
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
    main = _ustar(e.path, e.mode & 0o7777, uid, gid, 0 if size > MAX_OCTAL_12 else size, mtime,
                  TYPEFLAGS[e.type], e.linkname, _dev(e))
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
    pax_hdr = _ustar(pax_name, 0o644, 0, 0, len(data), mtime, b"x", b"", b"")
    return pax_hdr + data + _padding(len(data)) + main


def _padding(size: int) -> bytes:
    return _PADS[-size % BLOCK]


class SourceFiles(SourceFds):
    """The source tars entries point into: one descriptor each (fd(), close()), and a window
    of the last read.

    Small files lie one after another in a tar, so one read of WINDOW bytes serves many.
    """

    def __init__(self) -> None:
        super().__init__(UserError)  # a source that cannot be opened: pack's one line
        self.window: tuple[int, int, memoryview] = (-1, 0, memoryview(b""))

    def piece(self, fd: int, offset: int, size: int) -> memoryview:
        """`size` bytes of `fd` from `offset` through the window (fewer where `fd` ends)."""
        wfd, start, data = self.window
        if wfd != fd or offset < start or offset + size > start + len(data):
            data = memoryview(os.pread(fd, max(size, WINDOW), offset))
            self.window = (fd, offset, data)
            start = offset
        return data[offset - start : offset - start + size]

    def small(self, ext: Extent) -> bytes:
        """The bytes of a small file stored whole, through the window."""
        piece = self.piece(self.fd(ext.source.path), ext.offset, ext.size)
        if len(piece) != ext.size:
            raise short_source(ext)
        return bytes(piece)

    def chunks(self, ext: Extent, step: int) -> Iterator[bytes | bytearray]:
        """The file's bytes, `step` at a time (its holes as zeros); CorruptTar if the source
        ends early."""
        fd = self.fd(ext.source.path)
        try:
            yield from ext.chunks(fd, step)
        except EOFError:
            raise short_source(ext) from None
        except OSError:
            if ext.fragments is None:
                raise
            raise short_source(ext) from None  # as the sparse copy always said it


class _Writer:
    """Buffered writes to a file descriptor, with zero-copy transfers for large data."""

    def __init__(self, fd: int, seekable: bool) -> None:
        self.fd = fd
        self.seekable = seekable
        self.pos = 0
        # One buffer filled and written again and again: a bytearray emptied after each write
        # is freed, and refilling it maps fresh pages, a page fault every 4 KiB written.
        self.buf = memoryview(bytearray(FLUSH_AT + SMALL + 2 * BLOCK))
        self.fill = 0
        self.files = SourceFiles()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        n = len(data)
        if self.fill + n > len(self.buf):
            self.flush()
            if n > len(self.buf):
                self._write_all(data)
                return
        self.buf[self.fill : self.fill + n] = data
        self.fill += n
        if self.fill >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        self._write_all(self.buf[: self.fill])
        self.fill = 0

    def _write_all(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as whole:
            view = whole
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.pos += n
            view.release()

    def copy(self, ext: Extent) -> None:
        """A file's bytes: small ones through the window, large ones handed to the kernel,
        sparse ones 1 MiB at a time with their holes as zeros."""
        if ext.fragments is not None:
            for data in self.files.chunks(ext, 1 << 20):
                self.write(data)
            return
        if ext.size <= SMALL:
            self.write(self.files.small(ext))
            return
        src = self.files.fd(ext.source.path)
        self.flush()
        done = 0
        while done < ext.size:
            n = self._transfer(src, ext.offset + done, ext.size - done)
            if n <= 0:
                raise short_source(ext)
            done += n
            self.pos += n

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
        self.files.close()


def short_source(ext: Extent) -> CorruptTar:
    """The error of a source that holds fewer bytes than its index says (every renderer's)."""
    path, offset, size = ext.source.path, ext.offset, ext.size
    return CorruptTar(f"{path}: ends early: {size} bytes expected at offset {offset}; "
                      f"delete it to export the image again")


def write_entries(entries: Iterable[Entry | Members], fd: int, seekable: bool,
                  progress: Callable[[int], None] | None = None) -> int:
    """Write entries as a tar to `fd`; return the number of bytes written."""
    w = _Writer(fd, seekable)
    pad = b""  # a member's padding goes out with the next header: one write call fewer each
    try:
        for e in entries:
            if isinstance(e, Members):
                pad = _write_members(w, e, pad, progress)
            else:
                pad = _write_entry(w, e, pad, progress)
        w.write(pad + b"\0" * (2 * BLOCK))
        w.flush()
    finally:
        w.close()
    return w.pos


def _write_entry(w: _Writer, e: Entry, pad: bytes,
                 progress: Callable[[int], None] | None) -> bytes:
    """One entry after the last one's padding; returns this one's padding."""
    w.write(pad + header(e))
    if e.type != "f" or not e.size:
        return b""
    body = e.body
    if isinstance(body, Extent):
        w.copy(body)
    elif body is not None:
        w.write(body)
    if progress:
        progress(e.size)
    return _padding(e.size)


def _write_members(w: _Writer, m: Members, pad: bytes,
                   progress: Callable[[int], None] | None) -> bytes:
    """A graft's members, a slice of the index at a time with its pages let go after each."""
    n = len(m.index)
    members = _MemberWriter(w, m, progress)
    for lo in range(0, n, DROP_EVERY_ENTRIES):
        pad = members.write(lo, min(lo + DROP_EVERY_ENTRIES, n), pad)
        m.index.drop_pages()
    return pad


_NS = 1_000_000_000
_F = ord("f")
# The members written from the columns alone: files, directories and symlinks.
_FLAGS = {ord(t): TYPEFLAGS[t] for t in "fdl"}


class _MemberWriter:
    """A `Members` written from its index's columns: each header straight from the member's
    fields, small files' bytes sliced from the window. What the columns cannot say alone goes
    through the member's Entry: the names the filter treats apart, hard links, devices, FIFOs,
    xattrs and sparse maps, and whatever needs a PAX record."""

    def __init__(self, w: _Writer, m: Members, progress: Callable[[int], None] | None) -> None:
        self.w, self.m, self.progress = w, m, progress
        self.cols = m.index.columns()
        self.sources, self.srcs = m.index.data_sources()
        self.extras = m.index.with_extras()

    def write(self, lo: int, hi: int, pad: bytes) -> bytes:
        """Members lo..hi-1 after `pad`; returns the last one's padding."""
        c, w, progress = self.cols, self.w, self.progress
        write, prefix, apart, extras = w.write, self.m.graft.prefix, self.m.special, self.extras
        name_at = c.name_ends[lo - 1] if lo else 0
        link_at = c.link_ends[lo - 1] if lo else 0
        names = c.names[name_at : c.name_ends[hi - 1]]
        links = c.links[link_at : c.link_ends[hi - 1]]
        srcs = self.srcs[lo:hi] if self.srcs is not None else repeat(0, hi - lo)
        n0 = l0 = 0
        for i, code, mode, uid, gid, size, mtime, n_end, l_end, src, offset in zip(
                range(lo, hi), c.types[lo:hi], c.modes[lo:hi], c.uids[lo:hi], c.gids[lo:hi],
                c.sizes[lo:hi], c.mtimes[lo:hi], c.name_ends[lo:hi], c.link_ends[lo:hi], srcs,
                c.offsets[lo:hi], strict=True):
            name, link = names[n0 : n_end - name_at], links[l0 : l_end - link_at]
            n0, l0 = n_end - name_at, l_end - link_at
            path = prefix + name
            sec, ns = divmod(mtime, _NS)
            flag = _FLAGS.get(code)
            if (flag is None or ns or name in apart or i in extras or not 0 <= sec <= MAX_OCTAL_12
                    or uid > MAX_OCTAL_8 or gid > MAX_OCTAL_8 or size > MAX_OCTAL_12
                    or len(path) > 100 or len(link) > 100 or not path.isascii()
                    or not link.isascii()):
                pad = self._apart(i, pad)
                continue
            if code != _F:
                size = 0
            write(pad)
            write(_ustar(path, mode & 0o7777, uid, gid, size, sec, flag, link, b""))
            pad = _PADS[-size % BLOCK]
            if size:
                self._body(i, src, offset, size)
                if progress:
                    progress(size)
        return pad

    def _body(self, i: int, src: int, offset: int, size: int) -> None:
        """Member i's bytes: a small file's from the window, a large one's handed on."""
        if size > SMALL:
            self.w.copy(self.m.index.extent(i))
            return
        files = self.w.files
        piece = files.piece(files.fd(self.sources[src]), offset, size)
        if len(piece) != size:
            raise short_source(self.m.index.extent(i))
        self.w.write(piece)

    def _apart(self, i: int, pad: bytes) -> bytes:
        e = self.m.entry(i)
        return pad if e is None else _write_entry(self.w, e, pad, self.progress)
