"""Stream a layer blob once: hash it, decompress it, hash the tar it holds and write that tar.

The compression is sniffed from the first bytes (gzip, zstd, else a plain tar), never taken
from a media type.  Decompression runs in the calling thread while a second thread hashes both
sides and writes the tar: igzip, sha256 and write(2) all release the GIL, so on two cores the
two halves overlap (scripts/bench_store.py measures it).  What is written goes on to a `tap`:
the store's index is scanned from it as the tar is written (tar/feed.py).
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

CHUNK = 1 << 20  # blob bytes per read
# Tar bytes per igzip call, so a gzip bomb cannot take all memory at once.  1 MiB, the size of
# a read: the pieces wait in the sink's queue and the scan's window, and at 8 MiB they were
# 20 MB of a million-member layer's ingest peak (issue 22), for no time saved.
MAX_OUT = 1 << 20
# A zstd block decodes to at most 128 KiB (RFC 8878, Block_Maximum_Size): this many blocks per
# call keep zstd's output per call within MAX_OUT too.
ZSTD_BLOCKS_PER_CALL = MAX_OUT // (128 << 10)
# libzstd's default ceiling on a frame's window (ZSTD_WINDOWLOG_LIMIT_DEFAULT = 27), which
# zstd(1) applies unless given --long or --memory: the decoder's memory is bounded by it.
ZSTD_MAX_WINDOW = 1 << 27
QUEUE_DEPTH = 4  # pieces of MAX_OUT between decoder and sink: enough to ride out a stall
THREADED = (os.cpu_count() or 1) > 1  # a second thread only pays with a second core

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_RAW, _TAR, _BOTH = range(3)


class StreamError(Exception):
    """Internal: the blob does not decode; the text says how."""


class ReadError(Exception):
    """Internal: reading the blob failed; the text says how."""


class WriteError(Exception):
    """Internal: writing the tar failed; the text says how."""


def _zstd_frame_start(head: bytes) -> bool:
    # A zstd frame, or a skippable frame (magic 0x184D2A5?, little-endian): zstd:chunked and
    # the seekable format keep their tables in those.
    return head[:4] == ZSTD_MAGIC or (head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50)


def sniff(head: bytes) -> str:
    """'gzip', 'zstd' or 'tar', from the first four bytes of a blob."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if len(head) >= 4 and _zstd_frame_start(head):
        return "zstd"
    return "tar"


class _Decoder(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> None: ...


class _Members:
    """A stream of concatenated members (gzip) or frames (zstd), each decoded by a fresh object.

    Between members, the next bytes must start another member; anything else is trailing data.
    """

    kind = ""
    magic_len = 0

    def __init__(self) -> None:
        self._member: Any = None
        self._between = b""  # bytes after a member's end, too few yet to tell what they start

    def _starts_member(self, head: bytes) -> bool:
        raise NotImplementedError

    def _new(self) -> Any:
        raise NotImplementedError

    def _decode(self, member: Any, data: bytes) -> Generator[bytes, None, bytes | None]:
        """Yield the output of `data`; return the bytes after the member's end, or None if
        the member goes on."""
        raise NotImplementedError

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            if self._member is None:
                data = self._between + data
                if len(data) < self.magic_len:
                    self._between = bytes(data)
                    return
                self._between = b""
                if not self._starts_member(data[: self.magic_len]):
                    raise StreamError(f"trailing data after the {self.kind} stream")
                self._member = self._new()
            rest = yield from self._decode(self._member, data)
            if rest is None:  # the member goes on in the next read
                return
            self._member = None
            data = rest

    def finish(self) -> None:
        if self._member is not None:
            raise StreamError(f"the {self.kind} stream ends early (truncated)")
        if self._between:
            raise StreamError(f"trailing data after the {self.kind} stream")


class _Gunzip(_Members):
    kind = "gzip"
    magic_len = 2

    def __init__(self) -> None:
        super().__init__()
        # isal is imported by the first gzip'd layer, not at start: a command that stores no
        # layer (image cat, ls, the mount) never needs it.
        from isal import isal_zlib

        self._zlib = isal_zlib

    def _starts_member(self, head: bytes) -> bool:
        return head == GZIP_MAGIC

    def _new(self) -> Any:
        return self._zlib.decompressobj(wbits=31)

    def _decode(self, member: Any, data: bytes) -> Generator[bytes, None, bytes | None]:
        d = member
        try:
            out = d.decompress(data, MAX_OUT)
            while True:
                if out:
                    yield out
                tail = d.unconsumed_tail
                if d.eof or (not tail and len(out) < MAX_OUT):
                    break
                out = d.decompress(tail, MAX_OUT)
        except self._zlib.error as e:
            raise StreamError(f"corrupt gzip data ({e})") from None
        return d.unused_data if d.eof else None


class _FrameWalk:
    """Follows one zstd frame's layout (RFC 8878, section 3.1) across reads, to tell where its
    blocks end: libzstd decodes, this only chooses how much input to give it per call.

    A block decodes to at most 128 KiB whatever its size on the wire (4 bytes for an RLE
    block), so giving the decoder input in which at most ZSTD_BLOCKS_PER_CALL blocks end bounds
    each call's output.  On input that breaks the format libzstd raises; the walk just goes on.
    """

    def __init__(self) -> None:
        self._head = bytearray()  # bytes of the header being read
        self._want = 5  # header bytes needed: the magic and the frame header descriptor first
        self._state = "frame"  # frame, frame-header, skippable, block, content, checksum, end
        self._body = 0  # bytes to pass before the next header (content, checksum, skipped)
        self._checksum = False
        self._last = False

    def cut(self, data: memoryview, blocks: int) -> int:
        """How many bytes of `data` (> 0 if any) to decode so that at most `blocks` blocks
        end in them; StreamError if the frame's window is too large."""
        pos, n = 0, len(data)
        while pos < n and self._state != "end":
            if self._body:
                step = min(self._body, n - pos)
                pos += step
                self._body -= step
                if self._body == 0 and self._after_body():
                    blocks -= 1
                    if blocks == 0:
                        return pos
                continue
            piece = data[pos : pos + self._want - len(self._head)]
            self._head += piece
            pos += len(piece)
            if len(self._head) == self._want and self._header():
                blocks -= 1
                if blocks == 0:
                    return pos
        return n

    def _after_body(self) -> bool:
        """At the end of what `_body` counted; True if a block ended."""
        if self._state != "content":
            self._state = "end"  # a checksum or a skippable frame's payload
            return False
        self._next_block()
        return True

    def _next_block(self) -> None:
        if not self._last:
            self._state, self._want = "block", 3
        elif self._checksum:
            self._state, self._body = "checksum", 4
        else:
            self._state = "end"

    def _header(self) -> bool:
        """A header is complete: read it; True if it was a block's header and the block
        (having no content bytes) ended with it."""
        head, self._head = bytes(self._head), bytearray()
        if self._state == "frame":
            if head[:4] != ZSTD_MAGIC:  # a skippable frame: its size follows the magic
                self._state, self._want, self._head = "skippable", 8, bytearray(head)
                return False
            fhd = head[4]
            single, did, fcs = fhd >> 5 & 1, fhd & 3, fhd >> 6
            self._checksum = bool(fhd >> 2 & 1)
            self._want = (5 + (1 - single) + (0, 1, 2, 4)[did]
                          + ((single, 2, 4, 8)[fcs]))
            self._state, self._head = "frame-header", bytearray(head)
            return False
        if self._state == "skippable":
            self._state, self._body = "skippable", int.from_bytes(head[4:8], "little")
            if not self._body:
                self._state = "end"
            return False
        if self._state == "frame-header":
            _check_window(head)
            self._state, self._want = "block", 3
            return False
        # A block header: bit 0 last, bits 1-2 type (1 = RLE: one byte of content), size.
        h = int.from_bytes(head, "little")
        self._last = bool(h & 1)
        self._state, self._body = "content", 1 if h >> 1 & 3 == 1 else h >> 3
        if self._body:
            return False
        self._next_block()
        return True


def _check_window(header: bytes) -> None:
    """Refuse a frame whose window (what the decoder must keep in memory) is too large."""
    fhd = header[4]
    if fhd >> 5 & 1:  # single segment: the window is the content size, stored last
        size = (1, 2, 4, 8)[fhd >> 6]
        window = int.from_bytes(header[-size:], "little") + (256 if size == 2 else 0)
    else:
        descriptor = header[5]
        base = 1 << (10 + (descriptor >> 3))
        window = base + base // 8 * (descriptor & 7)
    if window > ZSTD_MAX_WINDOW:
        raise StreamError(f"a zstd frame needs a {window}-byte window, more than the "
                          f"{ZSTD_MAX_WINDOW} bytes (128 MiB) zstd allows by default")


class _Unzstd(_Members):
    kind = "zstd"
    magic_len = 4

    def __init__(self) -> None:
        super().__init__()
        # zstandard is imported by the first zstd layer, not at start (as isal for gzip).
        import zstandard

        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)

    def _starts_member(self, head: bytes) -> bool:
        return _zstd_frame_start(head)

    def _new(self) -> Any:
        return self._dctx.decompressobj(), _FrameWalk()

    def _decode(self, member: Any, data: bytes) -> Generator[bytes, None, bytes | None]:
        d, walk = member
        view = memoryview(data)
        while view:
            n = walk.cut(view, ZSTD_BLOCKS_PER_CALL)
            try:
                out = d.decompress(view[:n])
            except self._zstd.ZstdError as e:
                raise StreamError(f"corrupt zstd data ({e})") from None
            if out:
                yield out
            if d.eof:
                return bytes(d.unused_data) + bytes(view[n:])
            view = view[n:]
        return None


class _Plain:
    def feed(self, data: bytes) -> Iterator[bytes]:
        yield data

    def finish(self) -> None:
        pass


def _decoder(kind: str) -> _Decoder:
    return {"gzip": _Gunzip, "zstd": _Unzstd}.get(kind, _Plain)()


@dataclass
class Outcome:
    """What one pass over a blob found."""

    compression: str  # gzip, zstd or tar
    blob_digest: str  # "sha256:<hex>" of the bytes read
    blob_size: int
    tar_digest: str  # of the bytes written (meaningless when `problem` is set)
    tar_size: int
    problem: str  # "" when the blob decoded cleanly
    longer: bool = False  # reading stopped past the limit: the blob is longer than that


class _Sink:
    """Hashes blob and tar bytes and writes the tar: in a thread of its own when `threaded`,
    so that it overlaps the decompression, else in the caller's.  Each piece of the tar goes on
    to `tap` once it is written."""

    def __init__(self, out_fd: int, threaded: bool,
                 tap: Callable[[bytes], None] | None = None) -> None:
        self.out_fd = out_fd
        self.tap = tap
        self.blob_hash = hashlib.sha256()
        self.tar_hash = hashlib.sha256()
        self.error: OSError | None = None
        self.stop = False  # set on the way out of an error: drain the queue, do nothing
        self._q: queue.Queue[tuple[int, bytes] | None] = queue.Queue(QUEUE_DEPTH)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="fusebundle-layer-sink",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if not self.stop:
                self._take(*item)

    def _take(self, kind: int, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            if kind != _TAR:
                self.blob_hash.update(data)
            if kind != _RAW:
                if kind == _TAR:
                    self.tar_hash.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(self.out_fd, view) :]
                if self.tap is not None:
                    self.tap(data)
        except OSError as e:
            self.error = e

    def put(self, kind: int, data: bytes) -> None:
        if self._thread is None:
            self._take(kind, data)
        else:
            self._q.put((kind, data))

    def close(self) -> None:
        """Wait for everything queued to be hashed and written."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()


def _read(src: BinaryIO, n: int) -> bytes:
    try:
        return src.read(n)
    except OSError as e:
        raise ReadError(f"cannot read the blob: {e.strerror or e}") from None


def unpack(src: BinaryIO, out_fd: int, progress: Callable[[int], None] | None = None,
           threaded: bool = THREADED, limit: int | None = None,
           tap: Callable[[bytes], None] | None = None) -> Outcome:
    """Read `src` to its end once, writing the tar it holds to `out_fd`; `tap(data)` gets each
    piece of the tar, in order, once it is written.

    Raises ReadError if reading fails, WriteError if writing does; a blob that does not decode
    is read to its end anyway (so its digest can be reported first) and named in `problem`.
    With a `limit`, reading stops at limit + 1 bytes and `longer` says the blob went on.
    """
    size = 0

    def more() -> bytes:
        want = CHUNK if limit is None else min(CHUNK, limit + 1 - size)
        return _read(src, want) if want > 0 else b""

    head = b""
    while len(head) < 4 and (piece := more()):
        head += piece
        size += len(piece)
    compression = sniff(head)
    decoder = _decoder(compression)
    plain = compression == "tar"
    sink = _Sink(out_fd, threaded, tap)
    done, size, tar_size, problem = 0, 0, 0, ""
    try:
        data = head
        while data:
            size += len(data)
            if limit is not None and size > limit:
                break  # the blob is longer than it may be: no byte past the limit is used
            if problem:
                sink.put(_RAW, data)
            elif plain:
                sink.put(_BOTH, data)
                tar_size += len(data)
            else:
                sink.put(_RAW, data)
                try:
                    for out in decoder.feed(data):
                        sink.put(_TAR, out)
                        tar_size += len(out)
                except StreamError as e:
                    problem = str(e)
            if sink.error is not None:
                break
            if progress is not None and size - done >= CHUNK:
                progress(size)
                done = size
            data = more()
        if not problem and (limit is None or size <= limit):
            try:
                decoder.finish()
            except StreamError as e:
                problem = str(e)
    except BaseException:
        sink.stop = True
        raise
    finally:
        sink.close()
    if sink.error is not None:
        raise WriteError(sink.error.strerror or str(sink.error))
    if progress is not None:
        progress(size)
    blob = "sha256:" + sink.blob_hash.hexdigest()
    tar = blob if plain else "sha256:" + sink.tar_hash.hexdigest()
    return Outcome(compression, blob, size, tar, tar_size, problem,
                   limit is not None and size > limit)
