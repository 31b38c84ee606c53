"""The layer store: blobs made here with GNU tar, gzip(1) and zstd(1) from real files, ingested
once, verified on both digests, shared by diff_id, held against `cache prune` by other live
processes; and `cache ls` / `cache prune` through the CLI.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from fusebundle.errors import UserError
from fusebundle.sources.base import LayerRef, ResolvedImage
from fusebundle.store import BadLayer, Store, StoreError, locks
from fusebundle.store.stream import WriteError, unpack

REPO = Path(__file__).resolve().parents[2]
GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
ZST = "application/vnd.oci.image.layer.v1.tar+zstd"
TAR = "application/vnd.oci.image.layer.v1.tar"
WHAT = "fbtest/img:1"
PYLIB = Path("/usr/lib/python3.11")  # real files, on every Debian 12 host with python3


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run_tool(cmd: list[str], data: bytes) -> bytes:
    return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def gzip_(data: bytes) -> bytes:
    return run_tool(["gzip", "-6", "-n", "-c"], data)


def zstd_(data: bytes) -> bytes:
    return run_tool(["zstd", "-q", "-3", "-c"], data)


@pytest.fixture(scope="module")
def layer_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A tar of real files (two stdlib packages), written by GNU tar."""
    out = tmp_path_factory.mktemp("tar") / "layer.tar"
    subprocess.run(["tar", "-cf", str(out), "--sort=name", "--exclude=__pycache__",
                    "-C", str(PYLIB), "email", "json"], check=True)
    return out.read_bytes()


@pytest.fixture(scope="module")
def other_tar(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("tar2") / "other.tar"
    subprocess.run(["tar", "-cf", str(out), "--sort=name", "--exclude=__pycache__",
                    "-C", str(PYLIB), "urllib"], check=True)
    return out.read_bytes()


def layer(blob: bytes, tar: bytes, media: str = GZ, **kw: str) -> LayerRef:
    return LayerRef(kw.get("digest", sha(blob)), kw.get("diff_id", sha(tar)), media, len(blob))


def opener(blob: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(blob)


def never() -> BinaryIO:
    raise AssertionError("open_blob called for a layer that is stored")


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def image(name: str, layers: list[LayerRef], platform: str = "linux/amd64",
          config: bytes = b'{"architecture": "amd64", "os": "linux"}',
          manifest: str = "", source: str = "oci:/tmp/layout") -> ResolvedImage:
    return ResolvedImage(ref=name.split("/")[-1], name=name, source=source, config_bytes=config,
                         platform=platform, layers=layers, manifest_digest=manifest)


# ------------------------------------------------------------------------------ good blobs
def _blobs(tar: bytes) -> dict[str, bytes]:
    third = len(tar) // 3
    # A skippable frame (magic 0x184D2A5E) as the seekable format ends with one.
    skippable = (0x184D2A5E).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"seek!!"
    return {
        "gzip": gzip_(tar),
        "gzip, two members": gzip_(tar[:third]) + gzip_(tar[third:]),
        "zstd": zstd_(tar),
        "zstd, three frames": zstd_(tar[:third]) + zstd_(tar[third : 2 * third])
        + zstd_(tar[2 * third :]),
        "zstd + skippable frame": zstd_(tar) + skippable,
        "plain tar": tar,
    }


KINDS = ["gzip", "gzip, two members", "zstd", "zstd, three frames", "zstd + skippable frame",
         "plain tar"]


@pytest.mark.parametrize("kind", KINDS)
def test_ingest_stores_the_exact_tar_and_its_index(tmp_path: Path, layer_tar: bytes,
                                                   kind: str) -> None:
    blob = _blobs(layer_tar)[kind]
    ref = layer(blob, layer_tar)
    store = Store(str(tmp_path))
    path = store.ingest(ref, opener(blob), WHAT)
    assert path == str(tmp_path / "layers" / "sha256" / (sha(layer_tar)[7:] + ".tar"))
    assert Path(path).read_bytes() == layer_tar
    assert Path(path + ".idx").is_file()
    assert store.ingested == 1 and store.has_layer(ref.diff_id)
    idx = store.layer_index(ref.diff_id)
    i = idx.find(b"json/decoder.py")
    assert i is not None
    assert idx.entry(i).size == (PYLIB / "json/decoder.py").stat().st_size
    # Stored: neither this store nor another one reads the blob again.
    assert store.ingest(ref, never, WHAT) == path
    assert store.ingested == 1
    again = Store(str(tmp_path))
    assert again.ingest(ref, never, WHAT) == path and again.ingested == 0
    assert files_under(tmp_path / "layers") == [f"sha256/{sha(layer_tar)[7:]}.tar",
                                                f"sha256/{sha(layer_tar)[7:]}.tar.idx"]
    store.close()
    again.close()


@pytest.mark.parametrize("kind, media", [("plain tar", GZ), ("zstd", GZ), ("gzip", TAR),
                                         ("gzip", ZST)])
def test_compression_is_sniffed_not_taken_from_the_media_type(tmp_path: Path, layer_tar: bytes,
                                                              kind: str, media: str) -> None:
    blob = _blobs(layer_tar)[kind]
    with Store(str(tmp_path)) as store:
        path = store.ingest(layer(blob, layer_tar, media), opener(blob), WHAT)
        assert Path(path).read_bytes() == layer_tar


def test_progress_counts_blob_bytes(tmp_path: Path, other_tar: bytes) -> None:
    blob = other_tar  # plain: bigger than one read
    seen: list[int] = []
    with Store(str(tmp_path)) as store:
        store.ingest(layer(blob, other_tar, TAR), opener(blob), WHAT, seen.append)
    assert seen and seen[-1] == len(blob) and seen == sorted(seen)


@pytest.mark.parametrize("threaded", [False, True])
def test_the_pass_over_a_blob_in_one_thread_or_two(tmp_path: Path, layer_tar: bytes,
                                                   threaded: bool) -> None:
    blob = _blobs(layer_tar)["gzip, two members"]
    out = tmp_path / "out.tar"
    with open(out, "wb") as f:
        got = unpack(io.BytesIO(blob), f.fileno(), threaded=threaded)
    assert (got.compression, got.blob_digest, got.blob_size, got.problem) == (
        "gzip", sha(blob), len(blob), "")
    assert (got.tar_digest, got.tar_size) == (sha(layer_tar), len(layer_tar))
    assert out.read_bytes() == layer_tar


def test_a_failed_write_is_reported_as_such(tmp_path: Path, layer_tar: bytes) -> None:
    (tmp_path / "ro").write_bytes(b"")
    with open(tmp_path / "ro", "rb") as f, pytest.raises(WriteError, match="Bad file descriptor"):
        unpack(io.BytesIO(gzip_(layer_tar)), f.fileno())


# ------------------------------------------------------------------------------ bad blobs
def _flip(blob: bytes, at: int) -> bytes:
    b = bytearray(blob)
    b[at] ^= 0x55
    return bytes(b)


def _bad_cases(tar: bytes) -> dict[str, tuple[bytes, LayerRef, str]]:
    gz, zs = gzip_(tar), zstd_(tar)
    mid = len(gz) // 2
    junk = os.urandom(4096)
    return {
        "byte flipped, manifest digest of the good blob":
            (_flip(gz, mid), layer(gz, tar), "blob digest mismatch"),
        "byte flipped in the gzip stream, digest of what is read":
            (_flip(gz, mid), layer(_flip(gz, mid), tar), "corrupt gzip data"),
        "byte flipped in the zstd stream":
            (_flip(zs, len(zs) // 2), layer(_flip(zs, len(zs) // 2), tar), "corrupt zstd data"),
        "wrong diff_id": (gz, layer(gz, tar, diff_id=sha(tar + b"x")), "diff_id mismatch"),
        "truncated gzip": (gz[:mid], layer(gz[:mid], tar), "gzip stream ends early"),
        "truncated zstd": (zs[:-7], layer(zs[:-7], tar), "zstd stream ends early"),
        "trailing garbage after gzip":
            (gz + b"garbage", layer(gz + b"garbage", tar), "trailing data after the gzip"),
        "zero padding after gzip": (gz + bytes(512), layer(gz + bytes(512), tar),
                                    "trailing data after the gzip"),
        "trailing garbage after zstd":
            (zs + b"garbage", layer(zs + b"garbage", tar), "trailing data after the zstd"),
        "not a tar, digests right": (junk, layer(junk, junk, TAR), "not a valid tar"),
    }


BAD = ["byte flipped, manifest digest of the good blob",
       "byte flipped in the gzip stream, digest of what is read", "byte flipped in the zstd stream",
       "wrong diff_id", "truncated gzip", "truncated zstd", "trailing garbage after gzip",
       "zero padding after gzip", "trailing garbage after zstd", "not a tar, digests right"]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_blob_is_one_line_and_leaves_nothing(tmp_path: Path, layer_tar: bytes,
                                                   case: str) -> None:
    blob, ref, words = _bad_cases(layer_tar)[case]
    store = Store(str(tmp_path))
    with pytest.raises(BadLayer) as e:
        store.ingest(ref, opener(blob), WHAT)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"image {WHAT}: layer {ref.digest}: "), msg
    assert words in msg, msg
    assert files_under(tmp_path / "layers") == []
    assert store.ingested == 0 and not store.has_layer(ref.diff_id)
    store.close()


def test_digest_mismatch_says_the_sizes(tmp_path: Path, layer_tar: bytes) -> None:
    gz = gzip_(layer_tar)
    ref = LayerRef(sha(gz), sha(layer_tar), GZ, len(gz))
    with Store(str(tmp_path)) as store, pytest.raises(BadLayer, match=(
            rf"blob digest mismatch: its bytes hash to {sha(gz[:-1])} "
            rf"\({len(gz) - 1} bytes, the manifest says {len(gz)}\)")):
        store.ingest(ref, opener(gz[:-1]), WHAT)


@pytest.mark.parametrize("diff_id", ["sha256:abc", "sha512:" + "0" * 128,
                                     "sha256:../../../../etc/passwd" + "0" * 40])
def test_malformed_digests_are_refused_before_any_path_is_made(tmp_path: Path,
                                                               diff_id: str) -> None:
    ref = LayerRef("sha256:" + "0" * 64, diff_id, GZ)
    with Store(str(tmp_path)) as store, pytest.raises(StoreError, match="expected sha256:<64"):
        store.ingest(ref, never, WHAT)
    assert not (tmp_path / "layers").exists()


def test_an_unusable_cache_dir_is_one_line(tmp_path: Path, other_tar: bytes) -> None:
    (tmp_path / "file").write_text("not a directory")
    gz = gzip_(other_tar)
    with Store(str(tmp_path / "file")) as store, pytest.raises(StoreError) as e:
        store.ingest(layer(gz, other_tar), opener(gz), WHAT)
    assert str(e.value) == f"cache directory {tmp_path / 'file' / 'locks'}: Not a directory"


class _FailingReader(io.RawIOBase):
    """Gives `good` bytes, then fails as `fail` says."""

    def __init__(self, data: bytes, good: int, fail: BaseException, chunk: int = 1 << 16) -> None:
        self.data, self.good, self.fail, self.chunk, self.pos = data, good, fail, chunk, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.pos >= self.good:
            raise self.fail
        out = self.data[self.pos : self.pos + min(n, self.chunk, self.good - self.pos)]
        self.pos += len(out)
        return out


def test_a_read_error_is_one_line_and_leaves_nothing(tmp_path: Path, other_tar: bytes) -> None:
    gz = gzip_(other_tar)
    ref = layer(gz, other_tar)
    store = Store(str(tmp_path))
    with pytest.raises(BadLayer, match=rf"^image {WHAT}: layer {ref.digest}: cannot read the "
                                       "blob: Input/output error$"):
        store.ingest(ref, lambda: _FailingReader(gz, len(gz) // 2,
                                                 OSError(errno.EIO, os.strerror(errno.EIO))),
                     WHAT)

    def missing() -> BinaryIO:
        return open(tmp_path / "no-such-blob", "rb")

    with pytest.raises(BadLayer, match="cannot read the blob: No such file or directory"):
        store.ingest(ref, missing, WHAT)
    assert files_under(tmp_path / "layers") == []
    store.close()


def test_a_source_error_passes_through_and_leaves_nothing(tmp_path: Path) -> None:
    class Gone(UserError):
        pass

    def gone() -> BinaryIO:
        raise Gone("oci:/x: blob sha256:... is not in the layout")

    with Store(str(tmp_path)) as store, pytest.raises(Gone, match="is not in the layout"):
        store.ingest(LayerRef("sha256:" + "1" * 64, "sha256:" + "2" * 64, GZ), gone, WHAT)
    assert files_under(tmp_path / "layers") == []


def test_keyboard_interrupt_mid_blob_leaves_nothing(tmp_path: Path, other_tar: bytes) -> None:
    gz = gzip_(other_tar)
    store = Store(str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        store.ingest(layer(gz, other_tar),
                     lambda: _FailingReader(gz, len(gz) // 2, KeyboardInterrupt()), WHAT)
    assert files_under(tmp_path / "layers") == []
    store.close()


# ------------------------------------------------------------------------------ other processes
CHILD = textwrap.dedent("""
    import io, json, os, signal, sys, time
    from fusebundle.cli.commands import _on_sigterm
    from fusebundle.sources.base import LayerRef
    from fusebundle.store import Store

    root, blob_path, digest, diff_id, mode = sys.argv[1:6]
    signal.signal(signal.SIGTERM, _on_sigterm)
    with open(blob_path, "rb") as f:
        blob = f.read()
    opened = 0

    class Slow(io.RawIOBase):  # a slow source: 16 KiB every 20 ms
        pos = 0
        def readable(self):
            return True
        def read(self, n=-1):
            time.sleep(0.02)
            out = blob[self.pos:self.pos + 16384]
            self.pos += len(out)
            return out

    def open_blob():
        global opened
        opened += 1
        return Slow()

    store = Store(root)
    ref = LayerRef(digest, diff_id, "application/vnd.oci.image.layer.v1.tar+gzip", len(blob))
    if mode == "hold":
        store.hold([diff_id])
    else:
        if mode == "race":  # start together with the other child
            open(os.path.join(root, f"ready.{os.getpid()}"), "w").close()
            while len([n for n in os.listdir(root) if n.startswith("ready.")]) < 2:
                time.sleep(0.001)
        start = time.time()
        store.ingest(ref, open_blob, "fbtest/race:1")
        end = time.time()
    print(json.dumps({"ingested": store.ingested, "opened": opened,
                      **({} if mode == "hold" else {"start": start, "end": end})}), flush=True)
    if mode != "race":
        sys.stdin.read()  # hold the layer until the test closes our stdin
    store.close()
""")


def _child(root: Path, blob: Path, ref: LayerRef, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(blob), ref.digest,
                             ref.diff_id, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_wanting_one_layer_decompress_it_once(tmp_path: Path,
                                                            other_tar: bytes) -> None:
    gz = gzip_(other_tar)
    (tmp_path / "blob").write_bytes(gz)
    ref = layer(gz, other_tar)
    root = tmp_path / "cache"
    root.mkdir()
    procs = [_child(root, tmp_path / "blob", ref, "race") for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert sorted(r["ingested"] for r in results) == [0, 1]
    assert sum(r["opened"] for r in results) == 1  # the loser never opened the blob
    # They did overlap: each had called ingest before the other's returned.
    assert max(r["start"] for r in results) < min(r["end"] for r in results)
    stored = root / "layers" / "sha256" / (ref.diff_id[7:] + ".tar")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == ref.diff_id[7:]
    assert files_under(root / "layers") == [f"sha256/{stored.name}", f"sha256/{stored.name}.idx"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_ingest_leaves_nothing(tmp_path: Path, layer_tar: bytes, sig: int) -> None:
    gz = gzip_(layer_tar)  # ~20 reads of 16 KiB at 20 ms each: time to catch it midway
    (tmp_path / "blob").write_bytes(gz)
    ref = layer(gz, layer_tar)
    root = tmp_path / "cache"
    p = _child(root, tmp_path / "blob", ref, "ingest")
    layers = root / "layers" / "sha256"
    deadline = time.monotonic() + 30
    while not (layers.is_dir() and any(n.endswith(".part") for n in os.listdir(layers))):
        assert time.monotonic() < deadline and p.poll() is None, p.stderr.read() if p.stderr \
            else ""
        time.sleep(0.002)
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert "KeyboardInterrupt" in err or "_Terminated" in err, err
    assert files_under(root / "layers") == []


def test_prune_keeps_a_layer_another_live_process_holds(tmp_path: Path, other_tar: bytes) -> None:
    gz = gzip_(other_tar)
    (tmp_path / "blob").write_bytes(gz)
    ref = layer(gz, other_tar)
    root = tmp_path / "cache"
    # A pull in progress: it has stored the layer but not yet written its image record.
    p = _child(root, tmp_path / "blob", ref, "ingest")
    assert p.stdout is not None
    assert json.loads(p.stdout.readline())["ingested"] == 1
    tar = root / "layers" / "sha256" / (ref.diff_id[7:] + ".tar")
    size = tar.stat().st_size + Path(str(tar) + ".idx").stat().st_size
    store = Store(str(root))
    report = store.prune()
    assert [(x.diff_id, x.size) for x in report.in_use] == [(ref.diff_id, size)]
    assert report.removed == [] and tar.exists()
    # A process that only holds it (a mount, say) protects it just as well.
    h = _child(root, tmp_path / "blob", ref, "hold")
    assert h.stdout is not None and json.loads(h.stdout.readline())["ingested"] == 0
    p.communicate(input="", timeout=30)
    assert p.returncode == 0
    assert [x.diff_id for x in store.prune().in_use] == [ref.diff_id] and tar.exists()
    h.communicate(input="", timeout=30)
    assert h.returncode == 0
    report = store.prune()
    assert [(x.diff_id, x.size) for x in report.removed] == [(ref.diff_id, size)]
    assert report.in_use == [] and report.freed == size
    assert files_under(root / "layers") == []
    assert files_under(root / "locks") == []  # no lock files left for a removed layer


# ------------------------------------------------------------------------------ records, prune
def _store_with(tmp_path: Path, *tars: bytes) -> tuple[Store, list[LayerRef]]:
    store = Store(str(tmp_path))
    refs = []
    for t in tars:
        gz = gzip_(t)
        refs.append(layer(gz, t))
        store.ingest(refs[-1], opener(gz), WHAT)
    return store, refs


def test_a_layer_two_images_share_is_stored_once(tmp_path: Path, layer_tar: bytes) -> None:
    gz, zs = gzip_(layer_tar), zstd_(layer_tar)
    a, b = layer(gz, layer_tar), layer(zs, layer_tar, ZST)  # two blobs, one diff_id
    with Store(str(tmp_path)) as store:
        store.ingest(a, opener(gz), "fbtest/a:1")
        store.ingest(b, never, "fbtest/b:1")
        store.put_image(image("docker.io/fbtest/a:1", [a]))
        store.put_image(image("docker.io/fbtest/b:1", [b]))
        assert store.ingested == 1
        (info,) = store.layers()
        assert info.used_by == ["docker.io/fbtest/a:1", "docker.io/fbtest/b:1"]
    on_disk = sum(p.stat().st_size for p in (tmp_path / "layers").rglob("*") if p.is_file())
    tar = tmp_path / "layers" / "sha256" / (a.diff_id[7:] + ".tar")
    assert on_disk == len(layer_tar) + Path(str(tar) + ".idx").stat().st_size
    assert info.size == on_disk


def test_records_keep_the_config_bytes_and_are_found_by_name_or_digest(tmp_path: Path,
                                                                      other_tar: bytes) -> None:
    store, refs = _store_with(tmp_path, other_tar)
    config = b'{"os":"linux",  "architecture":"arm64",\n"config":{"Cmd":["sh"]}}'  # not canonical
    manifest = "sha256:" + "ab" * 32
    im = image("docker.io/library/alpine:3.19", refs, "linux/arm64", config, manifest)
    store.put_image(im)
    got = Store(str(tmp_path)).find_image("docker.io/library/alpine:3.19", "linux/arm64")
    assert got == im and got is not None and got.config_bytes == config
    assert got.config_digest == sha(config)
    assert store.find_image("docker.io/library/alpine:3.19", "linux/amd64") is None
    assert store.find_image("docker.io/library/alpine:3.18", "linux/arm64") is None
    by_digest = store.find_image(f"docker.io/library/alpine@{manifest}", "linux/arm64")
    assert by_digest == im
    assert store.find_image(f"docker.io/library/alpine@sha256:{'cd' * 32}", "linux/arm64") is None
    (rec,) = store.images()
    assert rec.image == im and rec.stored.endswith("Z")
    store.close()


@pytest.mark.parametrize("damage", ["truncated", "config edited"])
def test_a_corrupt_record_is_warned_about_by_path_and_pruned(tmp_path: Path, other_tar: bytes,
                                                            damage: str) -> None:
    warnings: list[str] = []
    store, refs = _store_with(tmp_path, other_tar)
    store.close()
    store = Store(str(tmp_path), warn=warnings.append)
    store.put_image(image("docker.io/fbtest/c:1", refs))
    (path,) = (tmp_path / "images").glob("*.json")
    text = path.read_text()
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    else:
        doc = json.loads(text)
        doc["config"] = "eyJvcyI6ImxpbnV4In0="  # {"os":"linux"}: not the recorded digest
        path.write_text(json.dumps(doc))
    assert store.find_image("docker.io/fbtest/c:1", "linux/amd64") is None
    assert len(warnings) == 1 and str(path) in warnings[0], warnings
    report = store.prune()
    assert len(warnings) == 1  # prune reports it instead
    assert [p for p, _ in report.bad_records] == [str(path)]
    assert not path.exists()
    assert [x.diff_id for x in report.removed] == [refs[0].diff_id]  # no record uses it now
    store.close()


def test_prune_drops_what_no_record_uses_and_stale_temp_files(tmp_path: Path, layer_tar: bytes,
                                                              other_tar: bytes) -> None:
    store, (a, b) = _store_with(tmp_path, layer_tar, other_tar)
    store.close()  # nothing held from here on
    store = Store(str(tmp_path))
    store.put_image(image("docker.io/fbtest/x:1", [a, b]))
    layers = tmp_path / "layers" / "sha256"
    stale = layers / f".{'e' * 64}.k1ll3d.part"  # a process killed mid-ingest
    stale.write_bytes(b"x" * 1000)
    stale_record = tmp_path / "images" / ".0123.json.k1ll3d.tmp"
    stale_record.write_bytes(b"{" * 10)
    report = store.prune()
    assert report.removed == [] and report.kept == 2
    assert [(Path(p).name, n) for p, n in report.temps] == [(stale.name, 1000),
                                                            (stale_record.name, 10)]
    # The image moves on to a new version with one layer: the other one is garbage now.
    store.put_image(image("docker.io/fbtest/x:1", [a]))
    size_b = sum(p.stat().st_size for p in layers.glob(b.diff_id[7:] + ".tar*"))
    report = store.prune()
    assert [(x.diff_id, x.size) for x in report.removed] == [(b.diff_id, size_b)]
    assert report.kept == 1 and report.freed == size_b
    assert files_under(layers) == [f"{a.diff_id[7:]}.tar", f"{a.diff_id[7:]}.tar.idx"]
    store.close()


# ------------------------------------------------------------------------------ the CLI
def fb(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fusebundle", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def test_cache_ls_and_prune_through_the_cli(tmp_path: Path, layer_tar: bytes,
                                            other_tar: bytes) -> None:
    root = tmp_path / "cache"
    store, (a, b) = _store_with(root, layer_tar, other_tar)
    manifest = "sha256:" + "5e" * 32
    store.put_image(image("docker.io/library/alpine:latest", [a], manifest=manifest,
                          source="oci:/srv/layout"))
    store.close()
    layers = root / "layers" / "sha256"
    size = {r.diff_id: sum(p.stat().st_size for p in layers.glob(r.diff_id[7:] + ".tar*"))
            for r in (a, b)}

    r = fb("cache", "ls", "--cache-dir", str(root))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "MANIFEST", "PLATFORM", "LAYERS", "SIZE", "STORED",
                                "(UTC)", "SOURCE"]
    row = lines[1].split()
    assert row[:4] == ["docker.io/library/alpine:latest", "sha256:" + "5e" * 6, "linux/amd64",
                       "1/1"]
    assert row[-1] == "oci:/srv/layout"
    assert lines[2] == ""
    assert lines[3].split() == ["LAYER", "SIZE", "USED", "BY"]
    body = {ln.split()[0]: ln for ln in lines[4:6]}
    assert body[a.diff_id[:19]].endswith("docker.io/library/alpine:latest")
    assert body[b.diff_id[:19]].endswith("  -")
    assert lines[6] == ""
    total = size[a.diff_id] + size[b.diff_id]
    assert lines[7].startswith("1 image, 2 layers, ") and f"({total} bytes) in {root}" in lines[7]
    assert lines[8].startswith("1 layer (") and "used by no image" in lines[8]
    assert len(lines) == 9
    # The column of a layer's size lines up under its header, and says KiB.
    col = lines[3].index("SIZE")
    assert body[b.diff_id[:19]][col:].split()[1] == "KiB"

    whole = fb("cache", "ls", "--no-trunc", "--cache-dir", str(root)).stdout
    assert manifest in whole and a.diff_id in whole and b.diff_id in whole

    r = fb("cache", "prune", "--cache-dir", str(root))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"removed layer {b.diff_id}  ")
    assert lines[1] == (f"freed {lines[0].split('  ')[1]} ({size[b.diff_id]} bytes); kept 1 "
                        "layer used by stored images")
    assert len(lines) == 2
    assert sorted(p.name for p in layers.iterdir()) == [f"{a.diff_id[7:]}.tar",
                                                        f"{a.diff_id[7:]}.tar.idx"]


def test_cache_ls_of_an_empty_cache(tmp_path: Path) -> None:
    r = fb("cache", "ls", "--cache-dir", str(tmp_path / "none"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["no images", "", "no layers", "",
                                     f"0 images, 0 layers, 0 B (0 bytes) in {tmp_path / 'none'}"]
    r = fb("cache", "prune", "--cache-dir", str(tmp_path / "none"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "freed 0 B (0 bytes); kept 0 layers used by stored images\n"


def test_cache_without_a_verb_is_one_line(tmp_path: Path) -> None:
    r = fb("cache")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_cache_ls_warns_once_of_a_corrupt_record(tmp_path: Path, other_tar: bytes) -> None:
    store, refs = _store_with(tmp_path, other_tar)
    store.put_image(image("docker.io/fbtest/c:1", refs))
    store.close()
    (path,) = (tmp_path / "images").glob("*.json")
    path.write_text("{")
    r = fb("cache", "ls", "--cache-dir", str(tmp_path))
    assert r.returncode == 0
    assert r.stderr.splitlines() == [
        f"fusebundle: warning: ignoring the corrupt image record {path}: not JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"]
    assert r.stdout.startswith("no images\n")
    assert f"{refs[0].diff_id[:19]}  " in r.stdout


def test_a_lock_waited_on_while_prune_deletes_its_file_lands_on_the_new_file(
        tmp_path: Path) -> None:
    path = str(tmp_path / "x.use")
    pruner = locks.take(path)  # as prune holds it while deleting the layer
    assert pruner is not None
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(locks.take(path, shared=True)))
    waiter.start()
    time.sleep(0.2)  # the waiter has opened the old file and blocks on it
    assert waiter.is_alive()
    os.unlink(path)
    locks.release(pruner)
    waiter.join(10)
    (fd,) = got
    assert fd is not None
    assert os.fstat(fd).st_ino == os.stat(path).st_ino  # a lock on a file prune can still see
    assert locks.take(path, wait=False) is None  # and it excludes the next prune
    locks.release(fd)


def test_threads_of_one_store_ingest_at_once(tmp_path: Path, layer_tar: bytes,
                                             other_tar: bytes) -> None:
    blobs = {t: gzip_(t) for t in (layer_tar, other_tar)}
    opened: list[bytes] = []

    def slow(blob: bytes) -> Callable[[], BinaryIO]:
        def open_blob() -> BinaryIO:
            opened.append(blob)
            time.sleep(0.2)  # the twin thread asks for the same layer meanwhile
            return io.BytesIO(blob)
        return open_blob

    store = Store(str(tmp_path))
    jobs = [(layer(blobs[t], t), slow(blobs[t])) for t in (layer_tar, other_tar) * 2]
    threads = [threading.Thread(target=store.ingest, args=(ref, f, WHAT)) for ref, f in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert store.ingested == 2 and sorted(opened) == sorted(blobs.values())
    for t in (layer_tar, other_tar):
        assert Path(store.layer_path(sha(t))).read_bytes() == t
    # Both held: a prune elsewhere keeps them although no record uses them.
    assert sorted(x.diff_id for x in Store(str(tmp_path)).prune().in_use) == sorted(
        sha(t) for t in (layer_tar, other_tar))
    store.close()
    assert len(Store(str(tmp_path)).prune().removed) == 2


def test_prune_drops_merged_indexes_of_images_no_record_has(tmp_path: Path,
                                                            other_tar: bytes) -> None:
    store, refs = _store_with(tmp_path, other_tar)
    kept = image("docker.io/fbtest/m:1", refs)
    store.put_image(kept)
    merged = tmp_path / "merged"  # where layered.py keeps them, by config digest
    merged.mkdir()
    mine = merged / (kept.config_digest[7:] + ".idx")
    mine.write_bytes(b"m" * 100)
    orphan = merged / ("0" * 64 + ".idx")
    orphan.write_bytes(b"o" * 300)
    fresh_temp = merged / f".{'1' * 64}.idx.abc.part"  # being written right now, perhaps
    fresh_temp.write_bytes(b"t")
    old_temp = merged / f".{'2' * 64}.idx.def.part"
    old_temp.write_bytes(b"tt")
    os.utime(old_temp, (time.time() - 7200, time.time() - 7200))
    report = store.prune()
    assert report.merged == [(str(orphan), 300)]
    assert report.temps == [(str(old_temp), 2)]
    assert report.removed == [] and report.freed == 302
    assert sorted(p.name for p in merged.iterdir()) == sorted([mine.name, fresh_temp.name])
    store.close()
