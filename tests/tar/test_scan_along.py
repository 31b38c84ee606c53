"""Indexing a layer while it streams into the store (tar/feed.py): the saved index and every
refusal are exactly those of a scan of the finished tar, whatever pieces the bytes arrive in and
however far the scanner falls behind the writer; and the store never reads the tar back.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import tarcorpus
from support.tarbytes import END, member, pax

from fusebundle.errors import CorruptTar
from fusebundle.sources.base import LayerRef
from fusebundle.store import BadLayer, Store
from fusebundle.tar import feed
from fusebundle.tar.feed import Abandoned, ScanAlong, TarFeed
from fusebundle.tar.index import TarIndex

PYLIB = Path("/usr/lib/python3.11")  # real files, on every Debian 12 host with python3
# Piece sizes a decoder hands on: a byte, around a block, a read of the store, igzip's most.
PIECES = [1, 100, 511, 512, 513, 4096, 65536, 1 << 20]
HANG_SECONDS = 60  # a scan of these small archives takes milliseconds: only a hang gets here


def _alarm(*_: object) -> None:
    raise TimeoutError("the scan along the stream hangs")


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def saved(index: TarIndex, where: Path) -> bytes:
    index.save(str(where))
    return where.read_bytes()


def scanned_whole(tar: Path, tmp: Path) -> bytes | str:
    """The saved index of a scan of the finished file, or its refusal."""
    try:
        return saved(TarIndex.scan(str(tar), sparse=True), tmp / "whole.idx")
    except CorruptTar as e:
        return str(e)


def scanned_along(data: bytes, tar: Path, tmp: Path, rng: random.Random) -> bytes | str:
    """The same, from a scan fed while `data` is written to `tar` in pieces (write, then push,
    as the store's writer does)."""
    tar.unlink(missing_ok=True)
    fd = os.open(tar, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with ScanAlong(fd, sparse=True) as scan:
            pos = 0
            while pos < len(data):
                piece = data[pos : pos + rng.choice(PIECES)]
                os.write(fd, piece)
                scan.push(piece)
                pos += len(piece)
            try:
                scan.save(str(tar), str(tmp / "along.idx"))  # as the store saves it
                return (tmp / "along.idx").read_bytes()
            except CorruptTar as e:
                return str(e)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return tarcorpus.build(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("window", [feed._WINDOW, 1024])
def test_the_corpus_and_its_mutants_index_the_same_along_the_stream(
        corpus: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: int) -> None:
    # A window of 1 KiB makes the scanner read most of each tar back from the file.
    monkeypatch.setattr(feed, "_WINDOW", window)
    rng = random.Random(20261206)
    tar = tmp_path / "layer.tar"
    outcomes = {"index": 0, "refused": 0}
    for source in corpus:
        data = source.read_bytes()
        for what, mutant in [("as written", data), *tarcorpus.mutations(data, rng, 12)]:
            along = scanned_along(mutant, tar, tmp_path, rng)
            assert along == scanned_whole(tar, tmp_path), f"{source.name} {what}"
            outcomes["index" if isinstance(along, bytes) else "refused"] += 1
    assert outcomes["index"] > len(corpus) and outcomes["refused"] > 10, outcomes


def test_hostile_extension_headers_are_refused_as_by_the_whole_scan(tmp_path: Path) -> None:
    # A PAX header claiming more than the tar holds, and one past the 1 MiB bound.
    rng = random.Random(1)
    for size in (4000, (1 << 20) + 1):
        info = bytearray(512)
        info[0:9] = b"PaxHeader"
        info[100:108] = b"0000644\x00"
        info[124:136] = b"%011o\x00" % size
        info[156] = ord("x")
        info[257:263] = b"ustar\x00"
        tarcorpus._fix_checksum(info)
        data = bytes(info) + b"30 path=" + b"a" * 21 + b"\n" + bytes(1024)
        tar = tmp_path / "hostile.tar"
        along = scanned_along(data, tar, tmp_path, rng)
        assert isinstance(along, str)
        assert along == scanned_whole(tar, tmp_path)


@pytest.mark.parametrize("tail_mib, refused", [(24, False), (8, True)])
def test_the_xattr_copy_budget_counts_the_whole_tar_along_the_stream(
        tmp_path: Path, tail_mib: int, refused: bool) -> None:
    # 1,000 changes of a shared 100-xattr set cost 100,000 copies: 34,464 more than the base,
    # so only a tar of 17.6 MB or more may make them, and the last member is what takes it
    # there (or not).  The scan along the stream must wait for the whole tar to know.
    sets = [(f"SCHILY.xattr.user.k{i}".encode(), b"v") for i in range(100)]
    parts = [pax(sets, b"g")]
    for i in range(1_000):
        parts.append(member(b"f%d" % i))
        parts.append(pax([(b"SCHILY.xattr.user.k0", b"%d" % i)], b"g"))
    parts.append(member(b"tail", bytes(tail_mib << 20)))
    data = b"".join(parts) + END
    tar = tmp_path / "globals.tar"
    along = scanned_along(data, tar, tmp_path, random.Random(3))
    assert along == scanned_whole(tar, tmp_path)
    assert isinstance(along, str) == refused
    if refused:
        assert "change xattrs too often" in along


def test_the_feed_serves_pieces_held_and_dropped(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed, "_WINDOW", 3000)
    data = random.Random(2).randbytes(10_000)
    with open(tmp_path / "t", "w+b", buffering=0) as f:
        tar = TarFeed(f.fileno())
        for k in range(0, len(data), 1000):
            f.write(data[k : k + 1000])
            tar.push(data[k : k + 1000])
        tar.complete()
        # The first 7000 bytes are no longer held: they come back from the file.
        assert tar.read(1500, 500) == data[500:2000]
        assert tar.read(2500, 7500) == data[7500:]  # held, across pieces, cut at the end
        assert tar.read(512, 10_000) == b""
        assert tar.at_least(20_000) == 10_000 and tar.at_least(5) == 10_000


def test_a_scanner_waiting_for_bytes_stops_when_the_writer_gives_up(tmp_path: Path) -> None:
    with open(tmp_path / "t", "w+b", buffering=0) as f:
        tar = TarFeed(f.fileno())
        got: list[BaseException] = []

        def wait() -> None:
            try:
                tar.read(512, 0)
            except Abandoned as e:
                got.append(e)

        t = threading.Thread(target=wait)
        t.start()
        tar.abandon()
        t.join(HANG_SECONDS)
        assert not t.is_alive() and len(got) == 1


# ------------------------------------------------------------------------ the store's ingest
def gnu_tar(*dirs: str) -> bytes:
    return subprocess.run(["tar", "-cf", "-", "--sort=name", "--exclude=__pycache__", "-C",
                           str(PYLIB), *dirs], capture_output=True, check=True).stdout


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_real_layer_is_indexed_as_it_streams_and_never_read_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tar = gnu_tar("email", "json", "urllib")  # about 2 MB: held whole while it streams
    blob = gzip.compress(tar, 6)
    ref = LayerRef(sha(blob), sha(tar), "application/vnd.oci.image.layer.v1.tar+gzip",
                   len(blob))

    def refused(*_: object, **__: object) -> None:
        raise AssertionError("the stored tar was read back to index it")

    with monkeypatch.context() as m:
        m.setattr(TarIndex, "scan", classmethod(refused))
        m.setattr(feed, "_pread_all", refused)
        with Store(str(tmp_path / "cache")) as store:
            path = store.ingest(ref, lambda: io.BytesIO(blob), "fbtest/along:1")
    assert Path(path).read_bytes() == tar
    assert Path(path + ".idx").read_bytes() == saved(TarIndex.scan(path, sparse=True),
                                                     tmp_path / "whole.idx")
    with Store(str(tmp_path / "cache")) as store:
        index = store.layer_index(ref.diff_id)
        i = index.find(b"json/decoder.py")
        assert i is not None and index.entry(i).size == (PYLIB / "json/decoder.py").stat().st_size


def test_a_layer_whose_tar_is_corrupt_is_refused_with_the_scan_s_words(tmp_path: Path) -> None:
    tar = bytearray(gnu_tar("json"))
    tar[148:156] = b"0000000\x00"  # the first header's checksum
    blob = gzip.compress(bytes(tar), 6)
    ref = LayerRef(sha(blob), sha(bytes(tar)), "application/vnd.oci.image.layer.v1.tar+gzip",
                   len(blob))
    with Store(str(tmp_path / "cache")) as store, pytest.raises(BadLayer) as e:
        store.ingest(ref, lambda: io.BytesIO(blob), "fbtest/bad:1")
    assert str(e.value) == (f"image fbtest/bad:1: layer {ref.digest}: not a valid tar: bad "
                            "header checksum at offset 0")
    layers = tmp_path / "cache" / "layers" / "sha256"
    assert sorted(os.listdir(layers)) == []
    assert all(t.name != "fusebundle-scan-along" for t in threading.enumerate())


# ------------------------------------------------------------------------ layers at once
@pytest.mark.parametrize("cpus", ["0", "all"])
def test_layers_ingested_at_once_are_bounded_by_the_cores_granted(cpus: str) -> None:
    granted = sorted(os.sched_getaffinity(0))
    cpu_list = str(granted[0]) if cpus == "0" else ",".join(map(str, granted))
    out = subprocess.run(["taskset", "-c", cpu_list, sys.executable, "-c",
                          "from fusebundle.images.layered import layer_workers as w; print(w())"],
                         capture_output=True, text=True, check=True).stdout
    assert int(out) == (1 if cpus == "0" else min(4, len(granted)))
