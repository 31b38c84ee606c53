#!/usr/bin/env python3
"""How fast the layer store turns a compressed layer into a verified tar, against gzip -dc.

    .venv/bin/python scripts/bench_store.py [--blob LAYER.tar.gz] [--runs 3] [--json FILE]
    .venv/bin/python scripts/bench_store.py --ingest LAYER.tar.gz   # one ingest, for timing

--ingest runs one Store.ingest of the blob into an empty store (removed afterwards) and prints
its wall-clock seconds; the caller may time the whole process instead.  The digests it needs
are kept beside the blob in BLOB.digests.json, computed on first use (not timed).

Without --blob, a tar of real files from /usr/lib/<multiarch> (about --size MiB) is made with
GNU tar and compressed with `gzip -6` (gzip's default level); both are kept under --work for
the next run.  The same tar compressed with `zstd -3` measures the zstd path.  Rates are of the
uncompressed tar (MiB/s of output), medians of --runs runs, the page cache warm.  Every Python
row hashes both sides with sha256, as ingest does: the blob against its digest, the tar against
its diff_id.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from isal import isal_zlib  # noqa: E402

from fusebundle.sources.base import LayerRef  # noqa: E402
from fusebundle.store import Store  # noqa: E402
from fusebundle.store.stream import CHUNK, unpack  # noqa: E402

MiB = 1 << 20
DEFAULT_SRC = next(d for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                               "/usr/lib") if os.path.isdir(d))


def make_tar(out: Path, size: int, src: str) -> None:
    """A tar of the first `size` bytes' worth of regular files under `src`, in name order."""
    chosen, total = [], 0
    for top, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(top, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.islink(p) or not os.path.isfile(p) or not os.access(p, os.R_OK):
                continue
            chosen.append(p.lstrip("/"))
            total += st.st_size
            if total >= size:
                break
        if total >= size:
            break
    listing = out.with_suffix(".list")
    listing.write_text("\n".join(chosen) + "\n")
    subprocess.run(["tar", "-cf", str(out), "-C", "/", "--no-recursion", "-T", str(listing)],
                   check=True)
    listing.unlink()


def compressed(tar: Path, cmd: list[str], suffix: str) -> Path:
    out = tar.with_name(tar.name + suffix)
    if not out.exists():
        tmp = out.with_name(out.name + ".part")
        with open(tmp, "wb") as f:
            subprocess.run([*cmd, str(tar)], stdout=f, check=True)
        tmp.rename(out)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def timed(f: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (ours and our children's) of one call."""

    def cpu() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), \
            resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    f()
    return time.perf_counter() - t0, cpu() - c0


def tool_to_null(cmd: list[str], blob: Path) -> Callable[[], object]:
    return lambda: subprocess.run([*cmd, str(blob)], stdout=subprocess.DEVNULL, check=True)


def python_stream(blob: Path, module: object, hashes: bool = True) -> Callable[[], object]:
    """Read 1 MiB at a time, hash it, inflate it, hash the output: one thread."""

    def run() -> None:
        h_blob, h_tar = hashlib.sha256(), hashlib.sha256()
        d = module.decompressobj(wbits=31)  # type: ignore[attr-defined]
        with open(blob, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                out = d.decompress(chunk)
                if hashes:
                    h_blob.update(chunk)
                    h_tar.update(out)
        assert d.eof

    return run


def store_unpack(blob: Path, threaded: bool) -> Callable[[], object]:
    """The store's own pass (sniff, inflate, hash both sides) into /dev/null."""

    def run() -> None:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            with open(blob, "rb", buffering=0) as f:
                assert not unpack(f, fd, threaded=threaded).problem
        finally:
            os.close(fd)

    return run


def store_ingest(blob: Path, ref: LayerRef, work: Path) -> Callable[[], object]:
    """Store.ingest into an empty store: verified, written, fsynced, indexed, renamed."""

    def run() -> None:
        root = Path(tempfile.mkdtemp(dir=work, prefix="store."))
        try:
            with Store(str(root)) as store:
                store.ingest(ref, lambda: open(blob, "rb", buffering=0), "bench")  # noqa: SIM115
                assert store.ingested == 1
        finally:
            shutil.rmtree(root)

    return run


def blob_digests(blob: Path) -> LayerRef:
    """The blob's digest and diff_id, from BLOB.digests.json or computed (and saved) now."""
    saved = blob.with_name(blob.name + ".digests.json")
    st = blob.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError, KeyError):
        doc = json.loads(saved.read_text())
        if doc["key"] == key:
            return LayerRef(doc["digest"], doc["diff_id"], doc["media_type"], st.st_size)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        with open(blob, "rb", buffering=0) as f:
            got = unpack(f, fd)
    finally:
        os.close(fd)
    if got.problem:
        raise SystemExit(f"bench_store: {blob}: {got.problem}")
    media = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
             "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}.get(
        got.compression, "application/vnd.oci.image.layer.v1.tar")
    with contextlib.suppress(OSError):
        saved.write_text(json.dumps({"key": key, "digest": got.blob_digest,
                                     "diff_id": got.tar_digest, "media_type": media}) + "\n")
    return LayerRef(got.blob_digest, got.tar_digest, media, st.st_size)


def ingest_once(blob: Path) -> int:
    """--ingest: one ingest into a new, empty store; print its seconds."""
    ref = blob_digests(blob)
    work = Path(tempfile.mkdtemp(prefix="fusebundle-bench-ingest."))
    try:
        seconds, _ = timed(store_ingest(blob, ref, work))
    finally:
        shutil.rmtree(work)
    print(f"{seconds:.3f}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ingest", type=Path, metavar="BLOB",
                    help="time one Store.ingest of BLOB and print its seconds (nothing else)")
    ap.add_argument("--blob", type=Path, help="a gzip'd layer tar to use instead of a made one")
    ap.add_argument("--size", type=int, default=640, metavar="MiB",
                    help="uncompressed size of the made tar (default 640)")
    ap.add_argument("--from", dest="src", default=DEFAULT_SRC, metavar="DIR",
                    help=f"files for the made tar (default {DEFAULT_SRC}: shared libraries, "
                         "which gzip -6 shrinks about 3x)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fusebundle-bench-store"),
                    help="where made inputs are kept between runs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if args.ingest:
        return ingest_once(args.ingest)
    args.work.mkdir(parents=True, exist_ok=True)

    if args.blob:
        gz = args.blob
        tar = args.work / (gz.name + ".tar")
        with open(tar, "wb") as f:
            subprocess.run(["gzip", "-dc", str(gz)], stdout=f, check=True)
    else:
        tar = args.work / f"usrlib-{args.size}.tar"
        if not tar.exists():
            print(f"making {tar} from {args.src} ...", file=sys.stderr)
            make_tar(tar, args.size * MiB, args.src)
        print("compressing (gzip -6, zstd -3) if not done yet ...", file=sys.stderr)
        gz = compressed(tar, ["gzip", "-6", "-n", "-c"], ".gz")
    zst = compressed(tar, ["zstd", "-q", "-3", "-c"], ".zst")
    tar_size = tar.stat().st_size
    diff_id = sha256_file(tar)
    gz_ref = LayerRef(sha256_file(gz), diff_id, "application/vnd.oci.image.layer.v1.tar+gzip")
    zst_ref = LayerRef(sha256_file(zst), diff_id, "application/vnd.oci.image.layer.v1.tar+zstd")

    rows: list[tuple[str, Callable[[], object]]] = [
        ("gzip -dc > /dev/null", tool_to_null(["gzip", "-dc"], gz)),
        ("zlib + 2x sha256, 1 thread", python_stream(gz, zlib)),
        ("isal alone, no hashing (its limit)", python_stream(gz, isal_zlib, hashes=False)),
        ("isal + 2x sha256, 1 thread", python_stream(gz, isal_zlib)),
        ("store pass (isal), 1 thread", store_unpack(gz, False)),
        ("store pass (isal), 2 threads", store_unpack(gz, True)),
        ("Store.ingest gzip (+write, fsync, index)", store_ingest(gz, gz_ref, args.work)),
        ("zstd -dc > /dev/null", tool_to_null(["zstd", "-q", "-dc"], zst)),
        ("store pass (zstd), 2 threads", store_unpack(zst, True)),
        ("Store.ingest zstd (+write, fsync, index)", store_ingest(zst, zst_ref, args.work)),
    ]
    for path in (gz, zst, tar):  # warm the page cache
        sha256_file(path)
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name, f in rows:
        runs = [timed(f) for _ in range(args.runs)]
        wall[name] = statistics.median(w for w, _ in runs)
        cpu[name] = statistics.median(c for _, c in runs)

    base = wall["gzip -dc > /dev/null"]
    print(f"tar {tar_size / MiB:.1f} MiB; gzip blob {gz.stat().st_size / MiB:.1f} MiB "
          f"({tar_size / gz.stat().st_size:.2f}x), zstd blob {zst.stat().st_size / MiB:.1f} MiB; "
          f"median of {args.runs}; MiB/s of tar; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    width = max(len(n) for n, _ in rows)
    print(f"{'':{width}}  {'wall s':>7}  {'MiB/s':>6}  {'vs gzip -dc':>11}  {'CPU s':>6}")
    for name, _ in rows:
        w = wall[name]
        print(f"{name:{width}}  {w:7.2f}  {tar_size / MiB / w:6.0f}  {base / w:10.2f}x  "
              f"{cpu[name]:6.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "tar_bytes": tar_size, "gzip_bytes": gz.stat().st_size,
            "zstd_bytes": zst.stat().st_size, "runs": args.runs,
            "wall_seconds": wall, "cpu_seconds": cpu}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
