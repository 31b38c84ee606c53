"""Sparse files in layers (GNU tar --sparse, every format) are served with their holes as zeros.

The layer tars are written by GNU tar from a real sparse file, put in a docker save archive
by hand, and read back through `pack` and a real mount: the bytes must be the file's.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.faulttools import cli
from support.imagetools import docker_archive
from support.mounts import HAVE_FUSE, Mounts
from support.sparse import MIB, sparse_file, sparse_layer

from fusebundle.images.flatten import MergedIndex, merge
from fusebundle.tar.index import TarIndex

FORMATS = [("gnu", None), ("pax", "0.0"), ("pax", "0.1"), ("pax", "1.0")]


@pytest.mark.parametrize(("fmt", "version"), FORMATS)
def test_a_merged_index_keeps_sparse_maps_through_save_and_load(tmp_path, fmt, version):
    layer, want = sparse_layer(tmp_path, fmt, version)
    idx = TarIndex.scan(str(layer), sparse=True)
    merged = merge([idx], ["sha256:" + "1" * 64], "img", str(tmp_path / "m.idx"))
    merged.save()
    again = MergedIndex.load(str(tmp_path / "m.idx"), [str(layer)])
    assert again is not None
    for m in (merged, again):
        i = next(k for k, e in enumerate(m) if e.name == b"data/sparse.bin")
        e = m.entry(i)
        assert e.size == len(want) and e.sparse is not None
        assert list(e.sparse) == list(idx.sparse_map(idx.find(b"data/sparse.bin")))


def _pack(tmp_path: Path, cfg: Path, save: Path) -> tarfile.TarFile:
    """pack the config from the docker save archive; the output, opened."""
    out = tmp_path / "out.tar"
    r = cli("pack", "--from", f"docker-archive:{save}", cfg, "-o", out, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    return tarfile.open(out)


@contextlib.contextmanager
def _mounted(tmp_path: Path, cfg: Path, save: Path) -> Iterator[Path]:
    """A mount of the config from the docker save archive, sharing _pack's cache."""

    def fb(*args, **kw):
        return cli(*args, cache=tmp_path / "cache", **kw)

    mounts = Mounts(fb, tmp_path)
    try:
        yield mounts.mount(cfg, "--from", f"docker-archive:{save}")
    finally:
        mounts.cleanup()


@pytest.mark.parametrize(("fmt", "version"), FORMATS)
def test_pack_and_mount_serve_sparse_files_with_their_holes(tmp_path, fmt, version):
    layer, want = sparse_layer(tmp_path, fmt, version)
    save = docker_archive(tmp_path, [layer], "fbtest/sparse:1")
    cfg = tmp_path / "sparse.yml"
    cfg.write_text("onboot:\n  - name: s\n    image: fbtest/sparse:1\n    readonly: true\n")
    with _pack(tmp_path, cfg, save) as t:
        got = t.extractfile("containers/onboot/000-s/rootfs/data/sparse.bin").read()
        plain = t.extractfile("containers/onboot/000-s/rootfs/data/plain.txt").read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(want).hexdigest()
    assert plain == b"plain\n"
    if not HAVE_FUSE:
        return
    with _mounted(tmp_path, cfg, save) as mnt:
        path = mnt / "containers/onboot/000-s/rootfs/data/sparse.bin"
        assert path.stat().st_size == len(want)
        assert path.read_bytes() == want
        with open(path, "rb") as f:  # reads that start in a hole and end in data, and back
            for pos, n in ((3 * MIB - 100, 300), (3 * MIB + 7 + 17990, 5000),
                           (8 * MIB - 5001, 100), (MIB, 4096)):
                f.seek(pos)
                assert f.read(n) == want[pos:pos + n], (pos, n)


def test_a_sparse_kernel_binary_is_served_whole(tmp_path):
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    root = tmp_path / "root"
    root.mkdir()
    want = sparse_file(root / "kernel")
    layer = tmp_path / "layer.tar"
    subprocess.run(["tar", "--sparse", "--format=pax", "--owner=0", "--group=0",
                    "--numeric-owner", "--mtime=@1600000000", "-C", str(root), "-cf",
                    str(layer), "kernel"], check=True)
    save = docker_archive(tmp_path, [layer], "fbtest/sparse-kernel:1")
    cfg = tmp_path / "kernel.yml"
    cfg.write_text("kernel:\n  image: fbtest/sparse-kernel:1\n  cmdline: console=ttyS0\n"
                   "  tar: none\n")
    with _pack(tmp_path, cfg, save) as t:
        assert t.extractfile("boot/kernel").read() == want
    if not HAVE_FUSE:
        return
    with _mounted(tmp_path, cfg, save) as mnt:
        assert (mnt / "boot/kernel").read_bytes() == want
