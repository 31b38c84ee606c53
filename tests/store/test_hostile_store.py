"""Hostile layouts, blobs and archives against the store (issue 17: defects 2, 4, 8 and 9).

Every input is made here byte by byte (layouts, zstd frames, sparse files, tars), the CLI runs
as a real process under an address-space limit, and each case asserts the one line, the exit
status, the peak memory, that nothing is left in the store and that `cache ls` still works.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fakeregistry import FakeRegistry, Image, layer_tar, make_image, sha256
from support.faulttools import env_for, one_line
from support.measured import Measured, run_measured

from fusebundle.sources.base import LayerRef, Platform
from fusebundle.sources.oci import OCILayout
from fusebundle.store import Store

REF = "fbtest/hostile:1"
TAR = "application/vnd.oci.image.layer.v1.tar"
ZST = TAR + "+zstd"
GZ = TAR + "+gzip"
MEM_LIMIT = 1 << 30  # address space of each run: far below what the old zstd path took
RSS_BOUND = 256 << 20  # bounded runs peak near 110 MiB, as gzip bombs; unbounded took GiBs
ROOT = os.geteuid() == 0


SMALL_TAR = layer_tar({"etc/hello": b"hello\n"})


def put(layout: Path, data: bytes) -> str:
    d = layout / "blobs" / "sha256"
    d.mkdir(parents=True, exist_ok=True)
    (d / sha256(data)[7:]).write_bytes(data)
    return sha256(data)


def write_layout(layout: Path, layers: list[dict], diff_ids: list[str],
                 names: list[str] | None = None) -> None:
    """An OCI layout of one image whose layer descriptors are given as they are (any size,
    none); `names` gives index.json one descriptor per name, all for that image."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_bytes(b'{"imageLayoutVersion":"1.0.0"}')
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": put(layout, config), "size": len(config)},
        "layers": layers}).encode()
    digest = put(layout, manifest)
    descs = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
              "size": len(manifest),
              "annotations": {"org.opencontainers.image.ref.name": n}}
             for n in names or [REF]]
    (layout / "index.json").write_bytes(
        json.dumps({"schemaVersion": 2, "manifests": descs}).encode())


def one_layer(layout: Path, blob: bytes, tar: bytes, media: str = GZ, **desc: object) -> str:
    """A layout whose one layer is `blob` (holding `tar`), its descriptor edited by `desc`
    (a value of None drops the key); the blob's digest."""
    d: dict[str, object] = {"mediaType": media, "digest": put(layout, blob), "size": len(blob)}
    d.update(desc)
    write_layout(layout, [{k: v for k, v in d.items() if v is not None}], [sha256(tar)])
    return str(d["digest"])


def config(tmp: Path) -> Path:
    p = tmp / "hostile.yml"
    p.write_text(f"onboot:\n  - name: h\n    image: {REF}\n")
    return p


def run(tmp: Path, *args: str | os.PathLike, cache: Path, timeout: int = 120) -> Measured:
    """The CLI as a process limited to MEM_LIMIT of address space and `timeout` seconds, its
    peak RSS measured."""
    return run_measured([*map(os.fspath, args)], env_for(cache), memory=MEM_LIMIT,
                        timeout=timeout, scratch=tmp)


def pull(tmp: Path, source: str, cache: Path, *extra: str) -> Measured:
    return run(tmp, "pull", config(tmp), "--from", source, *extra, cache=cache)


def store_is_empty(cache: Path, tmp: Path) -> None:
    """No layer, no temporary, no record; and `cache ls` still lists the store."""
    left = [str(p.relative_to(cache)) for p in cache.rglob("*")
            if p.is_file() and p.parent.name != "locks"]
    assert left == [], left
    ls = run(tmp, "cache", "ls", cache=cache)
    assert ls.returncode == 0, ls.stderr


def fails(r: Measured, *words: str) -> str:
    line = one_line(r.stderr)
    assert r.returncode == 1, r.stderr
    for w in words:
        assert w in line, line
    return line


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                   check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# -- defect 2: zstd bombs ------------------------------------------------------------------------
def zstd_rle_bomb(blocks: int, window_descriptor: int = 0x38) -> bytes:
    """One zstd frame of `blocks` RLE blocks of 128 KiB of zeros each: 4 bytes per block on
    the wire (RFC 8878); the default window descriptor says 128 KiB."""
    head = b"\x28\xb5\x2f\xfd" + bytes([0x00, window_descriptor])
    block = ((1 << 1) | (131072 << 3)).to_bytes(3, "little") + b"\0"
    last = (1 | (1 << 1) | (131072 << 3)).to_bytes(3, "little") + b"\0"
    return head + block * (blocks - 1) + last


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs")
def test_zstd_bomb_of_gibs_is_bounded_and_one_line(tmp_path: Path) -> None:
    bomb = zstd_rle_bomb(51_200)  # 200 KiB that inflate to 6.25 GiB
    assert len(bomb) < 205_000
    layout = tmp_path / "layout"
    one_layer(layout, bomb, SMALL_TAR, ZST)
    with tmpfs(tmp_path / "cache", "64m") as cache:
        r = pull(tmp_path, f"oci:{layout}", cache)
        fails(r, f"layer {sha256(bomb)}", "No space left on device")
        assert r.rss < RSS_BOUND, r.rss
        store_is_empty(cache, tmp_path)


def test_zstd_bomb_with_a_wrong_diff_id_is_read_in_bounded_memory(tmp_path: Path) -> None:
    bomb = zstd_rle_bomb(8_192)  # 32 KiB that inflate to 1 GiB, in one call before
    layout = tmp_path / "layout"
    one_layer(layout, bomb, SMALL_TAR, ZST)
    cache = tmp_path / "cache"
    r = pull(tmp_path, f"oci:{layout}", cache)
    fails(r, f"layer {sha256(bomb)}", "diff_id mismatch: the zstd blob holds a tar hashing to "
          + sha256(bytes(1 << 30)))
    assert r.rss < RSS_BOUND, r.rss
    store_is_empty(cache, tmp_path)


def test_zstd_frame_with_too_large_a_window_is_refused(tmp_path: Path) -> None:
    # Window descriptor 0x90: exponent 18, 1 << 28 bytes, twice what zstd allows by default.
    bomb = zstd_rle_bomb(4, window_descriptor=0x90)
    layout = tmp_path / "layout"
    one_layer(layout, bomb, SMALL_TAR, ZST)
    cache = tmp_path / "cache"
    fails(pull(tmp_path, f"oci:{layout}", cache),
          "a zstd frame needs a 268435456-byte window, more than the 134217728 bytes")
    store_is_empty(cache, tmp_path)


def test_large_compressible_zstd_layer_still_works(tmp_path: Path) -> None:
    tar = layer_tar({"disk.img": bytes(384 << 20), "etc/hello": b"hello\n"})
    blob = subprocess.run(["zstd", "-q", "-3", "-c"], input=tar, capture_output=True,
                          check=True).stdout
    assert len(blob) < len(tar) // 1000
    layout = tmp_path / "layout"
    one_layer(layout, blob, tar, ZST)
    cache = tmp_path / "cache"
    r = pull(tmp_path, f"oci:{layout}", cache)
    assert r.returncode == 0, r.stderr
    assert r.rss < RSS_BOUND, r.rss
    stored = cache / "layers" / "sha256" / (sha256(tar)[7:] + ".tar")
    assert stored.stat().st_size == len(tar)
    del tar


def _decode_zstd(blob: bytes) -> list[bytes]:
    from fusebundle.store import stream

    decoder = stream._decoder("zstd")
    outs = [out for i in range(0, len(blob), stream.CHUNK)
            for out in decoder.feed(blob[i : i + stream.CHUNK])]
    decoder.finish()
    return outs


@pytest.mark.parametrize("opts", [["-1", "--no-check"], ["-3", "--check"], ["-19"],
                                  ["-3", "--long=27"], ["-3", "--no-check", "FILE"]])
def test_zstd_frames_of_every_kind_decode_exactly_in_bounded_pieces(tmp_path: Path,
                                                                    opts: list[str]) -> None:
    # The frame walk must follow real frames (checksum or not, content size in the header
    # or not, long windows, several frames): the bytes come out exact, 8 MiB at most a call.
    from fusebundle.store.stream import MAX_OUT

    data = bytes(24 << 20) + os.urandom(3 << 20) + b"text line\n" * 300_000
    src = tmp_path / "data"
    src.write_bytes(data)
    cmd = ["zstd", "-q", "-c", *[o for o in opts if o != "FILE"]]
    if "FILE" in opts:  # from a file, the frame header holds the content size
        blob = subprocess.run([*cmd, str(src)], capture_output=True, check=True).stdout
    else:
        blob = subprocess.run(cmd, input=data, capture_output=True, check=True).stdout
    tiny = tmp_path / "tiny"  # a second frame: from a small file, a single-segment one
    tiny.write_bytes(b"tiny")
    small = subprocess.run(["zstd", "-q", "-c", str(tiny)], capture_output=True,
                           check=True).stdout
    assert small[4] & 0x20, "not a single-segment frame"
    outs = _decode_zstd(blob + small)
    assert b"".join(outs) == data + b"tiny"
    assert max(map(len, outs)) <= MAX_OUT


# -- defect 4: sizes ------------------------------------------------------------------------------
@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs")
def test_sparse_64_gib_blob_behind_a_1024_byte_descriptor(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "16m") as small:
        layout, cache = small / "layout", small / "cache"
        digest = one_layer(layout, SMALL_TAR, SMALL_TAR, TAR, size=1024)
        blob = layout / "blobs" / "sha256" / digest[7:]
        with open(blob, "r+b") as f:
            f.truncate(64 << 30)
        assert blob.stat().st_blocks * 512 < (1 << 20)
        fails(pull(tmp_path, f"oci:{layout}", cache),
              f"layer {digest}", "unexpected blob size: longer than the 1024 bytes")
        store_is_empty(cache, tmp_path)


@pytest.mark.parametrize("delta", [-1, 1])
def test_right_digest_wrong_size_is_refused(tmp_path: Path, delta: int) -> None:
    layout = tmp_path / "layout"
    digest = one_layer(layout, SMALL_TAR, SMALL_TAR, TAR, size=len(SMALL_TAR) + delta)
    words = ("unexpected blob size: longer than" if delta < 0 else
             f"unexpected blob size: {len(SMALL_TAR)} bytes, its descriptor says "
             f"{len(SMALL_TAR) + 1}")
    cache = tmp_path / "cache"
    fails(pull(tmp_path, f"oci:{layout}", cache), f"layer {digest}", words)
    store_is_empty(cache, tmp_path)


def save_archive(layout: Path, out: Path) -> Path:
    """A Docker >= 25 `docker save` tar: the layout's files and a manifest.json."""
    with tarfile.open(out, "w") as t:
        for p in sorted(layout.rglob("*")):
            t.add(p, str(p.relative_to(layout)), recursive=False)
    return out


SIZE_CASES = {"no size": (None, "has no size"), "a string": ("12", "has a bad size '12'"),
              "negative": (-1, "has a bad size -1"), "a float": (1.5, "has a bad size 1.5"),
              "a bool": (True, "has a bad size True")}


@pytest.mark.parametrize("case", list(SIZE_CASES))
@pytest.mark.parametrize("kind", ["oci", "docker-archive"])
def test_layer_descriptor_without_a_proper_size_is_one_line(tmp_path: Path, case: str,
                                                             kind: str) -> None:
    size, words = SIZE_CASES[case]
    layout = tmp_path / "layout"
    digest = one_layer(layout, SMALL_TAR, SMALL_TAR, TAR, size=size)
    source = (f"oci:{layout}" if kind == "oci"
              else f"docker-archive:{save_archive(layout, tmp_path / 'save.tar')}")
    cache = tmp_path / "cache"
    fails(pull(tmp_path, source, cache), f"layer {digest} {words}")
    store_is_empty(cache, tmp_path)


def test_registry_layer_without_a_size_is_one_line(tmp_path: Path) -> None:
    image = make_image([{"etc/hello": b"hello\n"}])
    doc = json.loads(image.manifest)
    del doc["layers"][0]["size"]
    bad = Image(json.dumps(doc).encode(), image.config, image.layers, image.diff_ids)
    reg = FakeRegistry().start()
    try:
        reg.put("fb/nosize", "1", bad)
        ref = f"{reg.address}/fb/nosize:1"
        cfg = tmp_path / "reg.yml"
        cfg.write_text(f"onboot:\n  - name: h\n    image: {ref}\n")
        cache = tmp_path / "cache"
        r = run(tmp_path, "pull", cfg, "--from", "registry", "--insecure-registry",
                reg.address, cache=cache)
        fails(r, f"layer {sha256(image.layers[0])} has no size")
        assert not [s for s in reg.log if "/blobs/" + sha256(image.layers[0]) in s.path]
        store_is_empty(cache, tmp_path)
    finally:
        reg.stop()


def test_store_and_registry_refuse_a_layer_of_unknown_size(tmp_path: Path) -> None:
    # An image record written before sizes were required may hold a layer without one.
    from fusebundle.errors import UserError
    from fusebundle.sources.registry import Registry

    ref = LayerRef(sha256(SMALL_TAR), sha256(SMALL_TAR), TAR)
    with Store(str(tmp_path / "cache")) as store, pytest.raises(UserError) as e:
        store.ingest(ref, lambda: io.BytesIO(SMALL_TAR), "t")
    assert str(e.value) == (f"image t: layer {ref.digest}: its descriptor gives no size; "
                            "pull the image again (--pull)")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()
                and p.parent.name != "locks"]
    reg = FakeRegistry().start()
    try:
        image = _image_of(SMALL_TAR, SMALL_TAR)
        image.name = f"{reg.address}/fb/app:1"
        with Registry() as client, pytest.raises(UserError, match=r"fb/app: blob sha256:\w+ "
                                                 "has no size$"):
            client.open_blob(image, ref)
        assert reg.log == []
    finally:
        reg.stop()


# -- defect 8: non-regular blobs, temporaries 0600 ------------------------------------------------
def _replace_blob(layout: Path, digest: str, kind: str, secret: Path) -> None:
    blob = layout / "blobs" / "sha256" / digest[7:]
    blob.unlink()
    if kind == "symlink":
        blob.symlink_to(secret)
    elif kind == "FIFO":
        os.mkfifo(blob)
    else:
        blob.mkdir()


@pytest.mark.parametrize("kind", ["symlink", "FIFO", "directory"])
def test_non_regular_blob_in_a_layout_is_refused(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret.tar"
    secret.write_bytes(SMALL_TAR)
    secret.chmod(0o600)
    layout = tmp_path / "layout"
    digest = one_layer(layout, SMALL_TAR, SMALL_TAR, TAR)
    _replace_blob(layout, digest, kind, secret)
    cache = tmp_path / "cache"
    fails(pull(tmp_path, f"oci:{layout}", cache),
          f"{layout}/blobs/sha256/{digest[7:]} is a {kind}, not a regular file")
    store_is_empty(cache, tmp_path)


@pytest.mark.parametrize("kind", ["symlink", "directory", "FIFO"])
def test_non_regular_blob_in_a_save_archive_is_refused(tmp_path: Path, kind: str) -> None:
    layout = tmp_path / "layout"
    digest = one_layer(layout, SMALL_TAR, SMALL_TAR, TAR)
    member = f"blobs/sha256/{digest[7:]}"
    save = save_archive(layout, tmp_path / "save.tar")
    with tarfile.open(save, "a") as t:  # a later member of the same name wins
        info = tarfile.TarInfo(member)
        info.type = {"symlink": tarfile.SYMTYPE, "directory": tarfile.DIRTYPE,
                     "FIFO": tarfile.FIFOTYPE}[kind]
        info.linkname = "../../oci-layout" if kind == "symlink" else ""
        t.addfile(info)
    cache = tmp_path / "cache"
    fails(pull(tmp_path, f"docker-archive:{save}", cache),
          f"docker-archive:{save}: member {member} is a {kind}, not a regular file")
    store_is_empty(cache, tmp_path)


class _Watching(io.RawIOBase):
    """The blob's bytes, noting the modes of the store's temporaries while they stream."""

    def __init__(self, data: bytes, layers: Path) -> None:
        self._f = io.BytesIO(data)
        self._layers = layers
        self.modes: list[int] = []

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        self.modes += [stat.S_IMODE(p.stat().st_mode) for p in self._layers.glob(".*.part")]
        return self._f.readinto(b)


def test_store_temporaries_are_0600_until_verified(tmp_path: Path) -> None:
    import gzip

    tar = layer_tar({f"f{i}": os.urandom(300_000) for i in range(8)})
    blob = gzip.compress(tar, mtime=0)
    layers = tmp_path / "layers" / "sha256"
    watch = _Watching(blob, layers)
    with Store(str(tmp_path)) as store:
        path = store.ingest(LayerRef(sha256(blob), sha256(tar), GZ, len(blob)),
                            lambda: io.BufferedReader(watch, 1 << 20), "t")
        modes_of = {p.name: stat.S_IMODE(p.stat().st_mode) for p in layers.iterdir()}
        store.put_image(_image_of(blob, tar))
    assert watch.modes and set(watch.modes) == {0o600}, watch.modes
    name = os.path.basename(path)
    assert modes_of == {name: 0o644, name + ".idx": 0o644}
    records = list((tmp_path / "images").iterdir())
    assert [stat.S_IMODE(p.stat().st_mode) for p in records] == [0o644]


def _image_of(blob: bytes, tar: bytes):  # noqa: ANN202
    from fusebundle.sources.base import ResolvedImage

    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": [sha256(tar)]}}).encode()
    return ResolvedImage(REF, "docker.io/" + REF, "oci:x", cfg, "linux/amd64",
                         [LayerRef(sha256(blob), sha256(tar), GZ, len(blob))])


# -- defect 9: lookup in a large layout ------------------------------------------------------
def test_lookup_among_10000_images_is_fast(tmp_path: Path) -> None:
    # Every image of the layout resolved: a pass over index.json per lookup made this
    # quadratic (10,000 images gave no answer in minutes); indexed once, it takes seconds.
    layout = tmp_path / "layout"
    names = [f"fbtest/img{i}:1" for i in range(10_000)]
    blob = put(layout, SMALL_TAR)
    write_layout(layout, [{"mediaType": TAR, "digest": blob, "size": len(SMALL_TAR)}],
                 [sha256(SMALL_TAR)], names)
    source = OCILayout(str(layout))
    amd64 = Platform.parse("linux/amd64")
    end = time.monotonic() + 20
    for n, name in enumerate([*names, "docker.io/fbtest/img0:1"]):
        got = source.resolve(name, amd64)
        assert got.ref == name and got.layers[0].digest == blob
        assert time.monotonic() < end, f"20 s for {n + 1} lookups: not O(1) after the first"
