"""The cpio writer alone: newc headers as LinuxKit writes them, the kernel's limits, gzip bytes."""

from __future__ import annotations

import array
import gzip
import os
import posixpath
import shutil
import subprocess
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusebundle.bundle.entry import Entry, directory, regular
from fusebundle.errors import CorruptTar
from fusebundle.pack.cpio import NotInitramfs, newc_header, relative_link, trailer, write_cpio
from fusebundle.tar import Extent, Source


def _write(tmp_path, entries: list[Entry]) -> bytes:
    out = tmp_path / "out.cpio.gz"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        n = write_cpio(entries, fd)
    finally:
        os.close(fd)
    blob = out.read_bytes()
    assert n == len(blob)
    return blob


def _gunzip(blob: bytes) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = d.decompress(blob) + d.flush()
    assert d.eof and d.unused_data == b""  # nothing after the member, no zero padding
    return data


def test_a_directory_header_field_by_field() -> None:
    # Written out by hand from gocpio's writer: inode 721, type|mode, uid, gid, nlink 2,
    # mtime, size 0, dev 3:1, rdev 0:0, name size with its NUL, check 0; name; pad to 4.
    e = Entry(path=b"boot", type="d", mode=0o755, uid=1, gid=2, mtime_ns=1492533000_000_000_999)
    want = (b"070701" + b"000002d1" + b"000041ed" + b"00000001" + b"00000002" + b"00000002"
            + b"58f63f08" + b"00000000" + b"00000003" + b"00000001" + b"00000000" * 2
            + b"00000005" + b"00000000" + b"boot\0" + b"\0")
    head, body = newc_header(e, 721)
    assert (head, body) == (want, b"")
    assert len(head) % 4 == 0


def test_kinds_sizes_and_devices() -> None:
    def fields(e: Entry) -> list[int]:
        head, _ = newc_header(e, 900)
        return [int(head[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]

    f = fields(Entry(path=b"a/f", type="f", mode=0o4755, size=10, body=b"x" * 10))
    assert f[1] == 0o104755 and f[4] == 1 and f[6] == 10
    sym = Entry(path=b"a/l", type="l", mode=0o777, linkname=b"../target")
    assert fields(sym)[1] == 0o120777 and fields(sym)[6] == len(b"../target")
    assert newc_header(sym, 1)[1] == b"../target"
    hard = Entry(path=b"a/b/h", type="h", mode=0o644, linkname=b"a/c/f")
    assert fields(hard)[1] == 0o120644 and newc_header(hard, 1)[1] == b"../c/f"
    c = fields(Entry(path=b"null", type="c", mode=0o666, devmajor=1, devminor=3))
    assert c[1] == 0o20666 and (c[9], c[10]) == (1, 3) and c[6] == 0
    b = fields(Entry(path=b"sda", type="b", mode=0o660, devmajor=4095, devminor=(1 << 20) - 1))
    assert b[1] == 0o60660 and (b[9], b[10]) == (4095, (1 << 20) - 1)
    p = fields(Entry(path=b"fifo", type="p", mode=0o600))
    assert p[1] == 0o10600 and (p[9], p[10]) == (0, 0)


@pytest.mark.parametrize("mtime_ns, want", [
    (1_600_000_000_999_999_999, 1_600_000_000),  # whole seconds, as Go's Time.Unix()
    (-5_000_000_000, 0),  # newc's mtime is unsigned: clamped, not wrapped
    ((1 << 40) * 1_000_000_000, 0xFFFF_FFFF),
])
def test_mtime_is_whole_seconds_within_32_bits(mtime_ns: int, want: int) -> None:
    head, _ = newc_header(Entry(path=b"f", type="f", mode=0o644, mtime_ns=mtime_ns), 1)
    assert int(head[46:54], 16) == want


def test_the_kernels_limits_are_the_edges() -> None:
    ok = [Entry(path=b"n" * 4095, type="f", mode=0o644),
          Entry(path=b"l", type="l", mode=0o777, linkname=b"t" * 4095),
          Entry(path=b"d", type="c", mode=0o600, devmajor=4095, devminor=(1 << 20) - 1),
          Entry(path=b"f", type="f", mode=0o644, size=(1 << 32) - 1),
          Entry(path=b"f", type="f", mode=0o644, uid=(1 << 32) - 1)]
    for e in ok:
        newc_header(e, 1)
    bad = {"a name of 4096 bytes": Entry(path=b"n" * 4096, type="f", mode=0o644),
           "a link target of 4096": Entry(path=b"l", type="l", mode=0o777,
                                          linkname=b"t" * 4096),
           "device 4096:0": Entry(path=b"d", type="c", mode=0o600, devmajor=4096),
           "device 0:1048576": Entry(path=b"d", type="b", mode=0o600, devminor=1 << 20),
           "4294967296 bytes": Entry(path=b"f", type="f", mode=0o644, size=1 << 32),
           "owner 4294967296:0": Entry(path=b"f", type="f", mode=0o644, uid=1 << 32)}
    for why, e in bad.items():
        with pytest.raises(NotInitramfs, match=why) as info:
            newc_header(e, 1)
        assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_a_big_device_number_on_a_regular_file_is_not_a_device() -> None:
    # (only c and b carry rdev; a stray number elsewhere is not the kernel's business)
    head, _ = newc_header(Entry(path=b"f", type="f", mode=0o644, devmajor=9999), 1)
    assert head[78:94] == b"0" * 16


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5),
       st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5))
def test_a_relative_link_resolves_to_its_target(name: list[str], target: list[str]) -> None:
    n, t = "/".join(name), "/".join(target)
    rel = relative_link(n.encode(), t.encode()).decode()
    assert not rel.startswith("/")
    assert posixpath.normpath(posixpath.join(posixpath.dirname(n), rel)) == t
    assert rel == posixpath.relpath(t, posixpath.dirname(n) or ".")  # as Go's filepath.Rel


def test_the_stream_is_one_reproducible_gzip_member(tmp_path) -> None:
    entries = [directory(b"d"), regular(b"d/f", b"hello\n", 0o600, 5, 6)]
    one, two = _write(tmp_path, entries), _write(tmp_path, entries)
    assert one == two
    assert one[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # no FNAME, MTIME 0
    data = gzip.decompress(one)
    assert _gunzip(one) == data and len(data) % 512 == 0
    end = data.index(b"TRAILER!!!\0") + 11
    assert data[end - 11 - 110: end - 11].startswith(trailer(723)[:110])
    assert not data[end:].strip(b"\0")


def test_file_data_from_every_kind_of_source(tmp_path) -> None:
    src = tmp_path / "src"
    payload = os.urandom(3 << 20)
    src.write_bytes(b"HEAD" + payload + b"tiny")
    # a sparse member: 3 bytes at offset 10 and 2 at 1 MiB + 5, stored one after another
    sparse_src = tmp_path / "sparse"
    sparse_src.write_bytes(b"ABCDE")
    frags = array.array("q", [10, 3, (1 << 20) + 5, 2])
    entries = [
        Entry(path=b"big", type="f", mode=0o644, size=len(payload),
              body=Extent(Source(str(src)), 4, len(payload))),
        Entry(path=b"tiny", type="f", mode=0o644, size=4,
              body=Extent(Source(str(src)), 4 + len(payload), 4)),
        Entry(path=b"odd", type="f", mode=0o644, size=3, body=b"xyz"),
        Entry(path=b"holes", type="f", mode=0o644, size=(2 << 20) + 1,
              body=Extent(Source(str(sparse_src)), 0, (2 << 20) + 1, frags)),
    ]
    data = _gunzip(_write(tmp_path, entries))
    assert payload in data and b"tiny" in data and b"xyz\0" in data
    holes = bytearray((2 << 20) + 1)
    holes[10:13] = b"ABC"
    holes[(1 << 20) + 5:(1 << 20) + 7] = b"DE"
    assert bytes(holes) in data
    if shutil.which("cpio"):
        out = tmp_path / "x"
        out.mkdir()
        subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=data,
                       cwd=out, check=True)
        assert (out / "big").read_bytes() == payload
        assert (out / "holes").read_bytes() == bytes(holes)
        assert (out / "odd").read_bytes() == b"xyz"


def test_a_short_source_is_reported_not_padded(tmp_path) -> None:
    src = tmp_path / "short"
    src.write_bytes(b"x" * 10)
    for size in (100, 5 << 20):
        with pytest.raises(CorruptTar, match="ends early"):
            _write(tmp_path, [Entry(path=b"f", type="f", mode=0o644, size=size,
                                    body=Extent(Source(str(src)), 0, size))])


def test_written_through_a_pipe(tmp_path) -> None:
    r, w = os.pipe()
    with open(tmp_path / "piped", "wb") as sink:
        reader = subprocess.Popen(["cat"], stdin=r, stdout=sink)
        os.close(r)
        write_cpio([regular(b"f", b"through a pipe\n")], w, False)
        os.close(w)
        assert reader.wait(timeout=30) == 0
    assert b"through a pipe\n" in _gunzip((tmp_path / "piped").read_bytes())


# -- the kernel+initrd split alone ---------------------------------------------------------
def test_the_split_puts_a_late_ucode_first_and_leaves_other_boot_files_out(tmp_path) -> None:
    from fusebundle.pack.boot import write_kernel_initrd

    ucode = b"070701-not-parsed-here" * 10
    entries = [directory(b"lib"), regular(b"lib/mod.ko", b"module"),  # a kernel tar first
               directory(b"boot"), regular(b"boot/cmdline", b"console=ttyS0"),
               regular(b"boot/kernel", b"MZkernel"), regular(b"boot/ucode.cpio", ucode),
               regular(b"boot/extra", b"left out"), regular(b"init", b"#!/bin/sh\n")]
    seen: list[int] = []
    write_kernel_initrd(entries, str(tmp_path / "vm"), seen.append)
    assert sorted(os.listdir(tmp_path)) == ["vm-cmdline", "vm-initrd.img", "vm-kernel"]
    assert (tmp_path / "vm-kernel").read_bytes() == b"MZkernel"
    assert (tmp_path / "vm-cmdline").read_bytes() == b"console=ttyS0"
    initrd = (tmp_path / "vm-initrd.img").read_bytes()
    assert initrd.startswith(ucode) and initrd[len(ucode):len(ucode) + 2] == b"\x1f\x8b"
    data = _gunzip(initrd[len(ucode):])
    names = [data[i + 110:data.index(b"\0", i + 110)] for i in _headers(data)]
    assert names == [b"lib", b"lib/mod.ko", b"boot", b"init", b"TRAILER!!!"]
    assert sum(seen) == sum(e.size for e in entries)  # the progress bar reaches its total


def _headers(data: bytes) -> list[int]:
    out, pos = [], 0
    while True:
        out.append(pos)
        namesize, size = int(data[pos + 94:pos + 102], 16), int(data[pos + 54:pos + 62], 16)
        if data[pos + 110:pos + 120] == b"TRAILER!!!":
            return out
        body = (pos + 110 + namesize + 3) & ~3
        pos = (body + size + 3) & ~3


def test_the_split_without_a_kernel_leaves_nothing(tmp_path) -> None:
    from fusebundle.errors import UserError
    from fusebundle.pack.boot import write_kernel_initrd

    with pytest.raises(UserError, match="no boot/kernel"):
        write_kernel_initrd([directory(b"etc"), regular(b"etc/motd", b"hi")], str(tmp_path / "vm"))
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match="three files"):
        write_kernel_initrd([], "-")
