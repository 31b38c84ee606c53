"""cpio: the tree as one gzip'd newc cpio, each entry as LinuxKit's initrd writer writes it.

LinuxKit (src/cmd/linuxkit/initrd/ and its vendored surma/gocpio) turns a tar entry into a newc
header numbered from inode 721, with nlink 2 for a directory and 1 otherwise, the archive's own
device 3:1, no checksum, and a hard link as a symlink relative to the link's directory. The
cpio is padded to 512 bytes after its trailer and gzip'd; nothing follows the gzip member.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator

from fusebundle.bundle import Entry
from fusebundle.errors import UserError
from fusebundle.pack.tarball import WINDOW, SourceFiles
from fusebundle.tar import Extent

MAGIC = b"070701"
FIRST_INO = 721  # gocpio numbers its entries from 721, the trailer included
ARCHIVE_DEV = (3, 1)  # gocpio writes every entry's c_devmajor/c_devminor as 3 and 1
TRAILER = b"TRAILER!!!"
BLOCK = 512  # gocpio pads the archive, trailer included, to a multiple of this
PATH_MAX = 4096  # linux/limits.h: init/initramfs.c skips a name longer than this, NUL counted
MAX_U32 = 0xFFFF_FFFF  # a newc field is 8 hex digits
# init/initramfs.c packs the device as MKDEV(major, minor) in a 32-bit dev_t with MINORBITS 20
MAX_MAJOR = (1 << 12) - 1
MAX_MINOR = (1 << 20) - 1
MODE_BITS = {"f": 0o100000, "d": 0o040000, "l": 0o120000, "h": 0o120000, "c": 0o020000,
             "b": 0o060000, "p": 0o010000}
# Level 1: the cpio costs the tar's work plus `gzip -1`'s (the kernel reads any level).
LEVEL = 1
# Header of a gzip member with no name and no timestamp, XFL 4 (fastest), OS 255 (unknown),
# as Go's writer makes it: the same tree gives the same bytes whenever it is packed.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
CHUNK = 1 << 20  # file data is read and compressed this much at a time
FLUSH_AT = 1 << 20  # headers and small files are compressed in batches of this size


class NotInitramfs(UserError):
    """A tree entry that a newc cpio, or the kernel's initramfs unpacker, cannot hold."""


def _shown(path: bytes) -> str:
    text = path.decode("utf-8", "backslashreplace")
    # A name over PATH_MAX would make a 4 KiB error line: its head and size name it well enough.
    return text if len(text) <= 200 else f"{text[:120]}... ({len(path)} bytes)"


def relative_link(name: bytes, target: bytes) -> bytes:
    """The symlink LinuxKit writes for a hard link: `target` relative to `name`'s directory."""
    here = [p for p in name.split(b"/")[:-1] if p not in (b"", b".")]
    there = [p for p in target.split(b"/") if p not in (b"", b".")]
    n = 0
    while n < len(here) and n < len(there) and here[n] == there[n]:
        n += 1
    return b"/".join([b".."] * (len(here) - n) + there[n:]) or b"."


def _check(e: Entry, size: int, link: bytes) -> None:
    name = _shown(e.path)
    if len(e.path) + 1 > PATH_MAX:
        raise NotInitramfs(f"{name}: a name of {len(e.path)} bytes; the kernel's initramfs "
                           f"takes at most {PATH_MAX - 1} (PATH_MAX with its NUL)")
    if link and len(link) + 1 > PATH_MAX:
        raise NotInitramfs(f"{name}: a link target of {len(link)} bytes; the kernel's "
                           f"initramfs takes at most {PATH_MAX - 1}")
    if e.type in "cb" and (e.devmajor > MAX_MAJOR or e.devminor > MAX_MINOR):
        raise NotInitramfs(f"{name}: device {e.devmajor}:{e.devminor}; the kernel's initramfs "
                           f"takes majors up to {MAX_MAJOR} and minors up to {MAX_MINOR}")
    if size > MAX_U32:
        raise NotInitramfs(f"{name}: {size} bytes; newc cpio holds files below 4 GiB")
    if e.uid > MAX_U32 or e.gid > MAX_U32:
        raise NotInitramfs(f"{name}: owner {e.uid}:{e.gid}; newc cpio holds ids below 2^32")


def newc_header(e: Entry, ino: int) -> tuple[bytes, bytes]:
    """The newc header (name and padding included) of one entry, and the body a link has."""
    link = b""
    if e.type == "l":
        link = e.linkname
    elif e.type == "h":
        link = relative_link(e.path, e.linkname)
    size = len(link) if link else (e.size if e.type == "f" else 0)
    _check(e, size, link)
    device = e.type in "cb"
    # newc's mtime is 32 unsigned bits; the tar's exact value may lie outside (before 1970)
    mtime = min(max(e.mtime_ns // 1_000_000_000, 0), MAX_U32)
    fields = (ino, MODE_BITS[e.type] | (e.mode & 0o7777), e.uid, e.gid,
              2 if e.type == "d" else 1, mtime, size, *ARCHIVE_DEV,
              e.devmajor if device else 0, e.devminor if device else 0, len(e.path) + 1, 0)
    return _assemble(fields, e.path), link


def _assemble(fields: tuple[int, ...], name: bytes) -> bytes:
    head = MAGIC + b"".join(b"%08x" % f for f in fields) + name + b"\0"
    return head + b"\0" * (-len(head) % 4)


def trailer(ino: int) -> bytes:
    """The trailer entry as gocpio writes it: the next inode, nlink 1, the archive's device."""
    return _assemble((ino, 0, 0, 0, 1, 0, 0, *ARCHIVE_DEV, 0, 0, len(TRAILER) + 1, 0), TRAILER)


class GzipStream:
    """One deterministic gzip member, written to a file descriptor as data comes."""

    def __init__(self, fd: int, level: int = LEVEL) -> None:
        self.fd = fd
        self.z = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self.crc = 0
        self.size = 0  # uncompressed bytes so far
        self.written = 0
        self._out(GZIP_HEADER)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        out = self.z.compress(data)
        if out:
            self._out(out)

    def finish(self) -> None:
        self._out(self.z.flush() + struct.pack("<II", self.crc, self.size & MAX_U32))

    def _out(self, data: bytes) -> None:
        with memoryview(data) as view:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
                self.written += n


class Sources(SourceFiles):
    """The bytes of entries, read from the cached exports and layers they point into."""

    def body_chunks(self, e: Entry) -> Iterator[bytes | bytearray]:
        """The content of a regular file, at most CHUNK bytes at a time."""
        body = e.body
        if not isinstance(body, Extent):
            if body is not None:
                yield body
        elif body.fragments is None and body.size <= WINDOW:
            yield self.small(body)
        else:
            yield from self.chunks(body, CHUNK)


class CpioWriter:
    """Entries in, a gzip'd newc cpio out: headers and small files batched, big files chunked."""

    def __init__(self, fd: int, sources: Sources,
                 progress: Callable[[int], None] | None = None) -> None:
        self.gz = GzipStream(fd)
        self.sources = sources
        self.progress = progress
        self.ino = FIRST_INO
        self.buf = bytearray()

    def add(self, e: Entry) -> None:
        """Append one entry, its content read from where the entry says."""
        head, link = newc_header(e, self.ino)
        self.ino += 1
        self.buf += head
        if link:
            self.buf += link
            self._pad(len(link))
        elif e.type == "f" and e.size:
            for chunk in self.sources.body_chunks(e):
                if len(chunk) >= FLUSH_AT:
                    self._flush()
                    self.gz.feed(chunk)
                else:
                    self.buf += chunk
            self._pad(e.size)
            if self.progress:
                self.progress(e.size)
        if len(self.buf) >= FLUSH_AT:
            self._flush()

    def _pad(self, n: int) -> None:
        self.buf += b"\0" * (-n % 4)

    def _flush(self) -> None:
        if self.buf:
            self.gz.feed(self.buf)
            self.buf.clear()

    def close(self) -> int:
        """Write the trailer, the padding and the gzip trailer; return bytes written."""
        self.buf += trailer(self.ino)
        self.buf += b"\0" * (-(self.gz.size + len(self.buf)) % BLOCK)
        self._flush()
        self.gz.finish()
        return self.gz.written


def write_cpio(entries: Iterable[Entry], fd: int, seekable: bool = True,
               progress: Callable[[int], None] | None = None) -> int:
    """Write entries as one gzip'd newc cpio to `fd`; return the number of bytes written."""
    sources = Sources()
    try:
        w = CpioWriter(fd, sources, progress)
        for e in entries:
            w.add(e)
        return w.close()
    finally:
        sources.close()
