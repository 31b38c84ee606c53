"""A corpus of real tar archives, and mutations of them, for testing the tar reader.

The archives come from the two writers a layer is most often made with: Python's tarfile
(USTAR, GNU and PAX formats) and the GNU tar binary (every --format it knows, with --sparse
and --xattrs), over a tree holding what images hold: files of assorted sizes, long names,
deep directories, symlinks, hard links, FIFOs, devices and extended attributes.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

GNU_FORMATS = ("gnu", "oldgnu", "pax", "posix", "ustar", "v7")
TARFILE_FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT,
                   "pax": tarfile.PAX_FORMAT}  # fmt: skip

# Header fields: (offset, width) and values worth trying in them.
FIELDS = {
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
    "mtime": (136, 12), "typeflag": (156, 1), "linkname": (157, 100), "magic": (257, 8),
    "devmajor": (329, 8), "devminor": (337, 8), "prefix": (345, 155),
}  # fmt: skip
FIELD_VALUES = [
    b"", b"\x00", b"0", b" ", b"7" * 12, b"77777777777\x00", b"\x80" + bytes(6) + b"\x01",
    b"\xff" * 12, b"\x80" + b"\xff" * 11, b"+1", b"-1", b"0o17", b"1_0", b"1 2", b"9",
    b"../../etc/passwd", b"/", b".", b"./", b"a//b/./c", b"a\x00b", b"ustar\x0000", b"ustar  \x00",
    b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"g", b"x", b"L", b"K", b"S", b"M", b"V",
    b"\x00", b"00000001000\x00", b"00000000777\x00", b"00004000000\x00",
]  # fmt: skip


def _tree(root: Path, rng: random.Random) -> None:
    """A small root filesystem with the awkward cases in it."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    (root / "empty").write_bytes(b"")
    for size in (1, 511, 512, 513, 4096, 70_000):
        (root / f"size-{size}").write_bytes(rng.randbytes(size))
    deep = root.joinpath(*[f"level{i:02d}-directory" for i in range(12)])  # ~200 bytes
    deep.mkdir(parents=True)
    (deep / ("long-file-name-" * 8)).write_bytes(b"deep")
    (root / ("n" * 120)).write_bytes(b"a name over 100 bytes")
    (root / "ünïcødé-文件").write_bytes("ü".encode())
    os.symlink("etc/passwd", root / "link")
    os.symlink("t/" * 70, root / "long-link")
    os.link(root / "etc/passwd", root / "hard")
    os.mkfifo(root / "fifo")
    if os.geteuid() == 0:
        os.mknod(root / "null", 0o20666, os.makedev(1, 3))
        os.mknod(root / "sda", 0o60660, os.makedev(8, 0))
    os.chmod(root / "size-1", 0o4755)
    with contextlib.suppress(OSError):  # a filesystem without user xattrs: none then
        os.setxattr(root / "size-512", "user.comment", b"plain")
        os.setxattr(root / "size-512", "user.binary", bytes(range(256)))
    with open(root / "sparse", "wb") as f:
        f.truncate(256 << 10)
        f.seek(128 << 10)
        f.write(b"island in the middle")
    with open(root / "sparse-many", "wb") as f:  # more fragments than an 'S' header holds
        for i in range(12):
            f.seek(i * (8 << 10))
            f.write(rng.randbytes(100 + i))
        f.truncate(12 * (8 << 10) + 5000)


def _tarfile_archive(path: Path, fmt: int, rng: random.Random) -> None:
    with tarfile.open(path, "w", format=fmt) as tf:
        for i in range(12):
            name = "/".join(f"dir{j}" for j in range(rng.randrange(1, 4))) + f"/file{i}"
            if fmt != tarfile.USTAR_FORMAT and i % 4 == 0:
                name += "/" + "x" * 150
            ti = tarfile.TarInfo(name)
            data = rng.randbytes(rng.choice([0, 1, 100, 512, 1000, 20_000]))
            ti.size = len(data)
            ti.mtime = rng.randrange(0, 2**33)
            ti.uid, ti.gid = rng.randrange(0, 65536), rng.randrange(0, 65536)
            ti.mode = rng.choice([0o644, 0o755, 0o4755, 0o1777])
            if fmt == tarfile.PAX_FORMAT and i % 3 == 0:
                ti.pax_headers = {"SCHILY.xattr.user.i": str(i), "mtime": f"{ti.mtime}.25"}
            tf.addfile(ti, io.BytesIO(data))
        for kind, link in ((tarfile.SYMTYPE, "dir0/file0"), (tarfile.LNKTYPE, "dir0/file1")):
            ti = tarfile.TarInfo(f"link-{kind.decode()}")
            ti.type, ti.linkname = kind, link
            tf.addfile(ti)
        ti = tarfile.TarInfo("dev/tty")
        ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 5, 0
        tf.addfile(ti)


def build(directory: Path, seed: int = 0) -> list[Path]:
    """Write the corpus into *directory*; returns the archives (GNU tar ones if installed)."""
    rng = random.Random(seed)
    out = []
    for label, fmt in TARFILE_FORMATS.items():
        path = directory / f"tarfile-{label}.tar"
        _tarfile_archive(path, fmt, rng)
        out.append(path)
    if shutil.which("tar") is None:
        return out
    root = directory / "tree"
    _tree(root, rng)
    for fmt in GNU_FORMATS:
        for extra in ([], ["--sparse"], ["--xattrs"], ["--sparse", "--sparse-version=0.0"],
                      ["--sparse", "--sparse-version=0.1"]):
            if extra == ["--xattrs"] and fmt not in ("pax", "posix"):
                continue
            if len(extra) == 2 and fmt != "pax":  # --sparse-version is for PAX archives
                continue
            flags = "".join(extra).replace("--", "-").replace("=", "")
            path = directory / f"gnutar-{fmt}{flags}.tar"
            # ustar and v7 cannot hold every name: tar says so (exit 2) and writes the rest.
            subprocess.run(
                ["tar", f"--format={fmt}", *extra, "-cf", str(path), "-C", str(root), "."],
                capture_output=True,
                check=False,
            )
            if path.exists():
                out.append(path)
    return out


def _fix_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % (sum(block) & 0o777777)


def _headers(data: bytes) -> list[int]:
    """Offsets of the blocks that look like headers (a valid checksum)."""
    found = []
    for off in range(0, len(data) - 511, 512):
        blk = data[off : off + 512]
        if not any(blk):
            continue
        try:
            chk = int(blk[148:156].split(b"\x00")[0].strip() or b"-1", 8)
        except ValueError:
            continue
        if chk == sum(blk[:148]) + sum(blk[156:]) + 256:
            found.append(off)
    return found


def mutations(data: bytes, rng: random.Random, count: int) -> Iterator[tuple[str, bytes]]:
    """*count* damaged versions of *data*, each with a word on what was done to it."""
    headers = _headers(data) or [0]
    for i in range(count):
        kind = i % 5
        buf = bytearray(data)
        if kind == 0:  # a cut anywhere, or near a block boundary
            cut = rng.randrange(len(buf) + 1)
            if rng.random() < 0.5:
                cut = max(0, min(len(buf), cut - cut % 512 + rng.choice([-1, 0, 1, 100, 511])))
            yield f"cut@{cut}", bytes(buf[:cut])
        elif kind == 1:  # random bytes flipped, checksums left as they are
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            yield "flip", bytes(buf)
        elif kind == 2:  # one header field set to an awkward value, checksum fixed
            off = rng.choice(headers)
            field = rng.choice(list(FIELDS))
            start, width = FIELDS[field]
            value = rng.choice(FIELD_VALUES)[:width]
            block = bytearray(buf[off : off + 512])
            block[start : start + width] = value.ljust(width, b"\x00")
            _fix_checksum(block)
            buf[off : off + 512] = block
            yield f"field {field}@{off}={value!r}", bytes(buf)
        elif kind == 3:  # bytes changed inside a header (a name, a number), checksum fixed
            off = rng.choice(headers)
            block = bytearray(buf[off : off + 512])
            for _ in range(rng.randrange(1, 4)):
                block[rng.randrange(512)] = rng.randrange(256)
            _fix_checksum(block)
            buf[off : off + 512] = block
            yield f"header bytes@{off}", bytes(buf)
        else:  # bytes changed just after a header: PAX records and long names live there
            off = rng.choice(headers) + 512
            for _ in range(rng.randrange(1, 3)):
                pos = min(len(buf) - 1, off + rng.randrange(64))
                buf[pos] = rng.choice(b"0123456789 =\n\x00/.x")
            yield f"payload@{off}", bytes(buf)


def repeated_extensions(data: bytes) -> bool:
    """True if some member has two long names, long links or PAX headers before it.

    GNU tar, bsdtar, Go and the index use the last of each; tarfile's nesting makes the first
    long name win, so tarfile is no reference for such archives.
    """
    seen: set[int] = set()
    for off in _headers(data):
        kind = data[off + 156]
        kind = ord("x") if kind == ord("X") else kind
        if kind in b"LKx":
            if kind in seen:
                return True
            seen.add(kind)
        else:
            seen.clear()
    return False
