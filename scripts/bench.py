#!/usr/bin/env python3
"""fusebundle against ratarmount, archivemount and plain tar/cat, measured in one run.

Run through scripts/bench, which installs the peers and starts a private dockerd. Inputs are
generated deterministically and go through the real path: imported into the engine, exported by
fusebundle into its cache, and exported once more (`docker export`) for the peers, as their
users would. Every timed run of a mount starts on a fresh mount, with the source tars written
back and read once (the state a user has); the peers' runs are interleaved (A, B, A, B, ...),
and every cell is the median of --runs runs with the lowest and highest beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_real.py lies beside
import bench_image  # noqa: E402
import bench_real  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FB = [str(REPO / ".venv/bin/python"), "-m", "fusebundle"]
SCALE_DIR = REPO / ".bench" / "scale"


# ------------------------------------------------------------------------------ inputs
def write_small(path: Path, files: int) -> int:
    """`files` files of 0-4 KiB in nested directories, deterministic; returns the entry count.

    The count includes `tree/`, which the tar leaves implied, so it is what `find` of the
    image's tree prints, less the root.
    """
    rnd = random.Random(20261128)
    entries = 1
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as t:
        made: set[str] = set()
        for i in range(files):
            d = f"tree/d{i // 1000:03d}/e{(i // 100) % 10}"
            for part in (f"tree/d{i // 1000:03d}", d) if d not in made else ():
                if part not in made:
                    ti = tarfile.TarInfo(part)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1600000000
                    t.addfile(ti)
                    made.add(part)
                    entries += 1
            size = rnd.randint(0, 4096)
            ti = tarfile.TarInfo(f"{d}/f{i:06d}.dat")
            ti.size, ti.mode, ti.mtime = size, 0o644, 1600000000
            t.addfile(ti, io.BytesIO(rnd.randbytes(size)))
            entries += 1
    return entries


def write_large(path: Path, size: int) -> None:
    """One file of `size` bytes of incompressible data."""
    block = random.Random(7).randbytes(1 << 20)

    class Source(io.RawIOBase):
        left = size

        def readable(self) -> bool:
            return True

        def readinto(self, b: memoryview) -> int:  # type: ignore[override]
            n = min(len(b), self.left, len(block))
            b[:n] = block[:n]
            self.left -= n
            return n

    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("big")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        t.addfile(ti)
        ti = tarfile.TarInfo("big/blob.bin")
        ti.size, ti.mode = size, 0o644
        t.addfile(ti, io.BufferedReader(Source(), 1 << 20))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _put_json(blobs: Path, doc: dict[str, object]) -> tuple[str, int]:
    data = json.dumps(doc, sort_keys=True).encode()
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return "sha256:" + hexdigest, len(data)


def write_linked_layout(root: Path, ref_name: str, layer: Path, diff_hex: str) -> None:
    """An OCI layout of one image whose only layer is `layer` itself, uncompressed, hard-linked.

    No copy of a 2.5 GB tar: the blob is the layer tar the peers mount, under its digest.
    """
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    os.link(layer, blobs / diff_hex)
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": ["/none"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_hex]}}
    config_digest, config_size = _put_json(blobs, config)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": "sha256:" + diff_hex, "size": layer.stat().st_size}]}
    manifest_digest, manifest_size = _put_json(blobs, manifest)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest_size, "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"org.opencontainers.image.ref.name": ref_name}}]}
    (root / "index.json").write_text(json.dumps(index, indent=2))


# Bump when write_small or write_linked_layout changes what they write: stamps of another
# format are not trusted, and the input is made again.
SCALE_FORMAT = 1


@dataclass
class ScaleInput:
    files: int
    entries: int
    tar: Path  # the layer tar, as the peers mount it
    layout: Path  # an OCI layout whose layer blob is that same file
    ref: str  # the image's name in the YAML


def scale_input(files: int, where: Path = SCALE_DIR) -> ScaleInput:
    """The small-file image of `files` files, made once under `where` and reused while its stamp
    (format, count, size, mtime, inode) still matches."""
    tar, stamp = where / f"small-{files}.tar", where / f"small-{files}.json"
    layout, ref = where / f"layout-{files}", f"fbbench/scale-{files}:1"
    with contextlib.suppress(OSError, ValueError, KeyError):
        s = json.loads(stamp.read_text())
        st = tar.stat()
        blob = layout / "blobs" / "sha256" / s["sha256"]
        if (s["format"], s["files"], s["size"], s["mtime_ns"]) == (
                SCALE_FORMAT, files, st.st_size, st.st_mtime_ns) and \
                blob.stat().st_ino == st.st_ino and (layout / "index.json").is_file():
            return ScaleInput(files, int(s["entries"]), tar, layout, ref)
    print(f"  generating {files} files into {tar}", file=sys.stderr, flush=True)
    where.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    shutil.rmtree(layout, ignore_errors=True)
    Path(str(tar) + ".index.sqlite").unlink(missing_ok=True)
    part = where / f".small-{files}.tar.part"
    entries = write_small(part, files)
    part.rename(tar)
    diff_hex = sha256_file(tar)
    write_linked_layout(layout, "docker.io/" + ref, tar, diff_hex)
    st = tar.stat()
    stamp.write_text(json.dumps({"format": SCALE_FORMAT, "files": files, "entries": entries,
                                 "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                 "sha256": diff_hex}))
    return ScaleInput(files, entries, tar, layout, ref)


# A walk slower than this (seconds) on its first run is not repeated, and its cell says
# "(1 run)": archivemount's tar of 10k files, ratarmount's of 1M.
SLOW_ONCE = 20.0
SCALE_SLOW_ONCE = 60.0


# ------------------------------------------------------------------------------ helpers
class Spread(float):
    """A median that remembers the lowest and highest run (its spread) and how many ran."""

    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = list(values)
        m = cls(statistics.median(values))
        m.lo, m.hi, m.n = min(values), max(values), len(values)
        return m

    def _like(self, value: float, lo: float, hi: float) -> Spread:
        m = Spread(value)
        m.lo, m.hi, m.n = lo, hi, self.n
        return m

    def __rtruediv__(self, other: float) -> Spread:  # a rate from a time: the bounds swap
        return self._like(other / float(self), other / self.hi, other / self.lo)

    def __add__(self, other: float) -> Spread:  # a time plus a constant (the export)
        return self._like(float(self) + other, self.lo + other, self.hi + other)

    def scaled(self, k: float) -> Spread:
        """The same runs in another unit (KiB to MiB)."""
        return self._like(float(self) * k, self.lo * k, self.hi * k)

    def shown(self) -> str:
        if self.n == 1:
            return f"{float(self):.3f} (1 run)"
        return f"{float(self):.3f} ({self.lo:.3f}–{self.hi:.3f})"


@dataclass
class Timed:
    seconds: float
    rss_kb: int = 0


def run(cmd: list[str], **kw: object) -> Timed:
    """Run a command to completion; its wall time and peak RSS.

    The RSS comes from GNU time: wait4's ru_maxrss would count the pages of this Python
    process that the child holds between fork and exec.
    """
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], check=False,
                           **kw)  # type: ignore[call-overload]
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}")
        return Timed(dt, int(rss.read().split()[-1]))


def shell(cmd: str) -> Timed:
    return run(["bash", "-c", cmd], stdout=subprocess.DEVNULL)


def wait_mounted(mnt: Path, proc: subprocess.Popen | None, timeout: float = 1800) -> None:
    deadline = time.time() + timeout
    while not os.path.ismount(mnt):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {mnt} exited with {proc.returncode}")
        if time.time() > deadline:
            raise RuntimeError(f"{mnt} did not come up")
        time.sleep(0.002)


def unmount(mnt: Path, proc: subprocess.Popen | None = None) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def proc_kb(pid: int, key: str) -> int:
    """A `VmHWM`/`VmRSS`/`RssAnon` line of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def drop_to(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def settle(paths: Iterable[Path]) -> None:
    """Write back what is dirty and read `paths` once: the page cache a user's sources are in."""
    subprocess.run(["sync"], check=True)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(_SETTLE_BUF):
                pass


_SETTLE_BUF = bytearray(1 << 20)


# -- start-up: python -X importtime --------------------------------------------------------
@dataclass
class Import:
    depth: int
    name: str
    self_us: int
    cumulative_us: int


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def parse_importtime(stderr: str) -> list[Import]:
    """The lines of `-X importtime`, in the order printed (a module after what it imports)."""
    out = []
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            out.append(Import((len(m[3]) - 1) // 2, m[4], int(m[1]), int(m[2])))
    return out


def imports_under(lines: list[Import], roots: set[str]) -> list[Import]:
    """The imports of `roots` and of everything they imported first (their subtrees)."""
    picked: set[int] = set()
    for i, imp in enumerate(lines):
        if imp.name in roots:
            picked.add(i)
            j = i - 1
            while j >= 0 and lines[j].depth > imp.depth:  # children print before the parent
                picked.add(j)
                j -= 1
    return [lines[i] for i in sorted(picked)]


def ms(lines: Iterable[Import]) -> float:
    return sum(i.self_us for i in lines) / 1000


# ------------------------------------------------------------------------------ servers
@dataclass
class Server:
    """One FUSE server under test: how to mount a source at a mount point in the foreground."""

    name: str
    command: Callable[[Path], list[str]]  # argv that serves at the mount point, foreground
    root: str  # the image's tree, relative to the mount point
    large_file: str
    sources: Callable[[], list[Path]]  # the files it serves from, to write back and warm
    env: dict[str, str] | None = None
    log: Path | None = None  # where its stderr goes (else nowhere)

    def start(self, mnt: Path) -> subprocess.Popen:
        with open(self.log, "w") if self.log else contextlib.nullcontext() as err:
            return subprocess.Popen(self.command(mnt), env=self.env, stdout=subprocess.DEVNULL,
                                    stderr=err if err else subprocess.DEVNULL)


@dataclass
class Listing:
    seconds: float  # mount started -> the image's top directory listed
    hwm_kb: int  # the server's peak RSS by then
    idle_kb: int  # its RSS a moment later, nothing asked
    idle_anon_kb: int  # the part of it that is not pages of files (mapped indexes)


Run = Callable[[], dict[str, float]]  # one run of a peer: metric -> value


@dataclass
class Bench:
    work: Path
    runs: int
    small_files: int
    large_size: int
    host: str
    ratarmount: str
    results: dict[str, dict[str, float | str]] = field(default_factory=dict)

    def note(self, metric: str, who: str, value: float | str) -> None:
        self.results.setdefault(metric, {})[who] = value
        shown = value.shown() if isinstance(value, Spread) else (
            f"{value:.3f}" if isinstance(value, float) else value)
        print(f"  {metric:<44} {who:<16} {shown}", file=sys.stderr, flush=True)

    def compare(self, peers: dict[str, Run], runs: int | None = None,
                slow: float = SLOW_ONCE) -> None:
        """Run each peer's measurement in turn (A, B, C, A, B, C, ...) and note every metric.

        Interleaving spreads a drift of the shared machine over all peers alike. A peer whose
        first run took longer than `slow` seconds runs once ("(1 run)").
        """
        values: dict[str, dict[str, list[float]]] = {}
        once: set[str] = set()
        for r in range(runs or self.runs):
            for who, one in peers.items():
                if who in once:
                    continue
                t0 = time.perf_counter()
                for metric, v in one().items():
                    values.setdefault(metric, {}).setdefault(who, []).append(v)
                if r == 0 and time.perf_counter() - t0 > slow:
                    once.add(who)
        for metric, by in values.items():
            for who, vs in by.items():
                self.note(metric, who, Spread.of(vs))

    # -- engine ---------------------------------------------------------------------------
    def docker(self):  # noqa: ANN201 - the SDK's client
        import docker

        return docker.DockerClient(base_url=self.host, version="auto")

    def import_image(self, tar: Path, ref: str) -> None:
        repo, tag = ref.rsplit(":", 1)
        self.docker().api.import_image(src=str(tar), repository=repo, tag=tag,
                                       changes=['CMD ["/none"]'])

    def docker_export(self, ref: str, out: Path) -> float:
        api = self.docker().api
        t0 = time.perf_counter()
        cid = api.create_container(ref, command=["/dev/null"])["Id"]
        try:
            with open(out, "wb") as f:
                for chunk in api.export(cid, chunk_size=1 << 20):
                    f.write(chunk)
        finally:
            api.remove_container(cid, force=True)
        return time.perf_counter() - t0

    # -- the three mounters -----------------------------------------------------------------
    def fb_server(self, cfg: Path, cache: Path, sources: list[str] | None = None,
                  env: dict[str, str] | None = None) -> Server:
        """fusebundle serving `cfg` from `cache`; `--from` each of `sources` if given."""
        froms = [a for s in sources or [] for a in ("--from", s)]

        def tars() -> list[Path]:  # the engine exports and the store's layers it serves from
            return sorted([*cache.glob("exports/*.tar"), *cache.glob("layers/sha256/*.tar")])

        return Server("fusebundle", lambda mnt: [*FB, "mount", "-f", *froms, str(cfg), str(mnt)],
                      "containers/onboot/000-small/lower",
                      "containers/onboot/001-large/lower/big/blob.bin", tars,
                      env or dict(os.environ, DOCKER_HOST=self.host,
                                  FUSEBUNDLE_CACHE_DIR=str(cache)))

    def rat_server(self, tar: Path) -> Server:
        return Server("ratarmount", lambda mnt: [self.ratarmount, "-f", str(tar), str(mnt)],
                      ".", "big/blob.bin", lambda: [tar])

    def am_server(self, tar: Path) -> Server:
        return Server("archivemount",
                      lambda mnt: ["archivemount", "-f", "-o", "ro,readonly", str(tar), str(mnt)],
                      ".", "big/blob.bin", lambda: [tar])

    @contextlib.contextmanager
    def mounted(self, server: Server) -> Iterator[tuple[Path, subprocess.Popen]]:
        """A fresh mount of `server`, its sources written back and warm first (not timed)."""
        settle(server.sources())
        mnt = self.work / f"mnt-{server.name}"
        drop_to(mnt)
        proc = server.start(mnt)
        try:
            wait_mounted(mnt, proc)
            yield mnt, proc
        finally:
            unmount(mnt, proc)

    def listing(self, server: Server, idle: float = 0.0) -> Listing:
        """Mount and list the image's top directory: the time to a browsable tree.

        With `idle`, the server's RSS is read again that many seconds later.
        """
        settle(server.sources())
        mnt = self.work / f"mnt-{server.name}"
        drop_to(mnt)
        t0 = time.perf_counter()
        proc = server.start(mnt)
        try:
            wait_mounted(mnt, proc)
            os.listdir(mnt / server.root)
            seconds = time.perf_counter() - t0
            hwm = proc_kb(proc.pid, "VmHWM")
            if idle:
                time.sleep(idle)
            return Listing(seconds, hwm, proc_kb(proc.pid, "VmRSS"),
                           proc_kb(proc.pid, "RssAnon"))
        finally:
            unmount(mnt, proc)

    def first_listing(self, server: Server) -> float:
        return self.listing(server).seconds

    # -- what is run on a fresh mount ---------------------------------------------------------
    def finds(self, s: Server, metric: str = "find") -> Run:
        """Two `find`s of the tree on one fresh mount: the first walk, and the second."""
        def one() -> dict[str, float]:
            with self.mounted(s) as (mnt, _):
                first = shell(f"find {mnt / s.root} > /dev/null").seconds
                second = shell(f"find {mnt / s.root} > /dev/null").seconds
            return {f"{metric}, first walk of a mount (s)": first,
                    f"{metric}, second walk, same mount (s)": second}
        return one

    def ls_lr(self, s: Server, metric: str) -> Run:
        def one() -> dict[str, float]:
            with self.mounted(s) as (mnt, _):
                return {metric: shell(f"ls -lR {mnt / s.root} > /dev/null").seconds}
        return one

    def tar_walk(self, s: Server, metric: str) -> Run:
        """`tar -cf` of the tree through a fresh mount, and the server's RSS after it."""
        def one() -> dict[str, float]:
            with self.mounted(s) as (mnt, proc):
                t = shell(f"tar -C {mnt / s.root} -cf - . | wc -c").seconds
                return {metric: t,
                        "server peak RSS, tar walk (MiB)": proc_kb(proc.pid, "VmHWM") / 1024,
                        "server RSS after the tar walk (MiB)": proc_kb(proc.pid, "VmRSS") / 1024,
                        "server RSS after the tar walk, anonymous (MiB)":
                            proc_kb(proc.pid, "RssAnon") / 1024}
        return one

    def remount(self, s: Server) -> Run:
        def one() -> dict[str, float]:
            got = self.listing(s, idle=1.0)
            return {"remount, index saved (s)": got.seconds,
                    "server RSS once loaded, idle (MB)": got.idle_kb * 1024 / 1e6,
                    "server RSS once loaded, idle, anonymous (MB)":
                        got.idle_anon_kb * 1024 / 1e6}
        return one

    # -- measurements -----------------------------------------------------------------------
    def median(self, f: Callable[[], float]) -> Spread:
        return Spread.of([f() for _ in range(self.runs)])

    def engine_images(self) -> Path:
        """The small and the large image in the engine, and the config naming both."""
        w = self.work
        print("inputs:", file=sys.stderr)
        write_small(w / "small.rootfs.tar", self.small_files)
        write_large(w / "large.rootfs.tar", self.large_size)
        self.import_image(w / "small.rootfs.tar", "fbbench/small:1")
        self.import_image(w / "large.rootfs.tar", "fbbench/large:1")
        (w / "small.rootfs.tar").unlink()
        (w / "large.rootfs.tar").unlink()
        cfg = w / "bench.yml"
        cfg.write_text("onboot:\n  - name: small\n    image: fbbench/small:1\n"
                       "  - name: large\n    image: fbbench/large:1\n")
        return cfg

    def measure(self) -> None:
        w = self.work
        cfg = self.engine_images()
        small_tar, large_tar = w / "small.tar", w / "large.tar"
        export_small = self.median(lambda: self.docker_export("fbbench/small:1", small_tar))
        self.docker_export("fbbench/large:1", large_tar)
        self.note("docker export, small image (s)", "docker", export_small)
        cache = w / "cache"
        fb = self.fb_server(cfg, cache)
        rat_small, am_small = self.rat_server(small_tar), self.am_server(small_tar)
        rat_large, am_large = self.rat_server(large_tar), self.am_server(large_tar)
        rat_index = Path(str(small_tar) + ".index.sqlite")

        # 1. image -> browsable tree with nothing cached: the peers' share of the export is
        # its median, added to each of their runs.
        def fb_cold() -> dict[str, float]:
            shutil.rmtree(cache, ignore_errors=True)
            return {"tree, nothing cached (s)": self.first_listing(fb)}

        def rat_cold() -> dict[str, float]:
            rat_index.unlink(missing_ok=True)
            return {"tree, nothing cached (s)": export_small + self.first_listing(rat_small)}

        def am_cold() -> dict[str, float]:
            return {"tree, nothing cached (s)": export_small + self.first_listing(am_small)}

        self.compare({"fusebundle": fb_cold, "ratarmount": rat_cold, "archivemount": am_cold})
        # From here on every image is exported and indexed, for fusebundle and the peers: no
        # timed run below builds an index.
        env = dict(os.environ, DOCKER_HOST=self.host, FUSEBUNDLE_CACHE_DIR=str(cache))
        run([*FB, "pack", "-q", str(cfg), "-o", "-"], env=env, stdout=subprocess.DEVNULL)
        for s in (rat_small, rat_large):
            self.first_listing(s)
        with self.mounted(fb) as (mnt, _):  # the first mount after an export builds its tree
            os.listdir(mnt / fb.root)
            os.stat(mnt / fb.large_file)

        # 2. remount with everything saved, then walks of the small tree, each on a fresh mount
        self.compare({"fusebundle": self.remount(fb), "ratarmount": self.remount(rat_small)})
        self.compare({s.name: self.finds(s, "find, small image")
                      for s in (fb, rat_small, am_small)})
        self.compare({s.name: self.ls_lr(s, "ls -lR, small image (s)")
                      for s in (fb, rat_small, am_small)})

        # 3. cat of the large file through each mount, and of the tar itself (the limit)
        gb = self.large_size / 1e9

        def cat_limit() -> dict[str, float]:
            settle([large_tar])
            return {"cat large file (GB/s)": gb / shell(f"cat {large_tar} > /dev/null").seconds}

        def cat(s: Server) -> Run:
            def one() -> dict[str, float]:
                with self.mounted(s) as (mnt, _):
                    t = shell(f"cat {mnt / s.large_file} > /dev/null").seconds
                return {"cat large file (GB/s)": gb / t}
            return one

        self.compare({"limit (tar)": cat_limit, "fusebundle": cat(fb),
                      "ratarmount": cat(rat_large)})
        # archivemount slows down as it goes (each read starts from the archive's head): it is
        # given the first 64 MiB only, once, which flatters it.
        with self.mounted(am_large) as (mnt, _):
            part = 64 << 20
            t = shell(f"head -c {part} {mnt / am_large.large_file} > /dev/null").seconds
        self.note("cat large file (GB/s)", "archivemount", Spread.of([part / 1e9 / t]))

        # 4. tar of the small tree through each mount, and the server's RSS after it
        extracted = w / "extracted-small"
        drop_to(extracted)
        shell(f"tar -C {extracted} -xf {small_tar}")
        shell(f"tar -C {extracted} -cf - . | wc -c")  # warm: the dentries and inodes on disk

        def tar_disk() -> dict[str, float]:
            settle([])
            t = shell(f"tar -C {extracted} -cf - . | wc -c").seconds
            return {"tar -cf small tree (s)": t}

        walks = {"limit (disk)": tar_disk,
                 "fusebundle": self.tar_walk(fb, "tar -cf small tree (s)"),
                 "ratarmount": self.tar_walk(rat_small, "tar -cf small tree (s)")}
        if self.small_files <= 20000:  # archivemount's walk of 100k files takes over an hour
            walks["archivemount"] = self.tar_walk(am_small, "tar -cf small tree (s)")
        else:
            self.note("tar -cf small tree (s)", "archivemount", "skipped (> 1 h)")
        self.compare(walks)
        shutil.rmtree(extracted)

        # 5. pack of both images against tar -cf of the extracted tree
        out = w / "pack.tar"
        run([*FB, "pack", "-q", str(cfg), "-o", str(out)], env=env)
        tree = w / "extracted-pack"
        drop_to(tree)
        shell(f"tar -C {tree} -xf {out}")

        def pack() -> dict[str, float]:
            settle(fb.sources())
            p = run([*FB, "pack", "-q", str(cfg), "-o", str(out)], env=env)
            return {"pack both images (s)": p.seconds, "pack peak RSS (MB)": p.rss_kb * 1024 / 1e6}

        def tar_cf() -> dict[str, float]:
            settle([])
            p = run(["tar", "-C", str(tree), "-cf", str(w / "tar-cf.tar"), "."])
            return {"pack both images (s)": p.seconds, "pack peak RSS (MB)": p.rss_kb * 1024 / 1e6}

        self.compare({"fusebundle": pack, "tar -cf": tar_cf})
        shutil.rmtree(tree)
        out.unlink()
        self.compare(self.pack_cpio(cfg, env, fb), slow=float("inf"))

        # 6. start-up: what the commands import
        self.measure_startup(fb, env, [["pack", "-q", str(cfg), "-o", "-"]])

    def pack_cpio(self, cfg: Path, env: dict[str, str], fb: Server) -> dict[str, Run]:
        """`pack --format cpio` against `pack` to tar plus `gzip -1` of that tar: the cpio is
        the tar's work plus compression, so the pair is its natural bound."""
        w = self.work
        metric = "pack --format cpio, both images (s)"

        def cpio() -> dict[str, float]:
            settle(fb.sources())
            p = run([*FB, "pack", "-q", "--format", "cpio", str(cfg), "-o",
                     str(w / "pack.cpio.gz")], env=env)
            return {metric: p.seconds}

        def tar_gzip() -> dict[str, float]:
            settle(fb.sources())
            p = run([*FB, "pack", "-q", str(cfg), "-o", str(w / "pack.tar")], env=env)
            g = shell(f"gzip -1 -c {w / 'pack.tar'} > {w / 'pack.tar.gz'}")
            return {metric: p.seconds + g.seconds}

        return {"fusebundle": cpio, "pack + gzip -1": tar_gzip}

    def measure_cpio(self) -> None:
        """Only the cpio row (`--part cpio`): the engine's images, one pack to fill the cache."""
        cfg = self.engine_images()
        cache = self.work / "cache"
        env = dict(os.environ, DOCKER_HOST=self.host, FUSEBUNDLE_CACHE_DIR=str(cache))
        run([*FB, "pack", "-q", str(cfg), "-o", "-"], env=env, stdout=subprocess.DEVNULL)
        self.compare(self.pack_cpio(cfg, env, self.fb_server(cfg, cache)), slow=float("inf"))

    def measure_startup(self, fb: Server, env: dict[str, str], runs: list[list[str]]) -> None:
        """Commands that do not mount import neither pyfuse3 nor trio; what the mount imports.

        `runs` are extra real commands (a pack) checked beside the `--help`s.
        """
        heavy = {"pyfuse3", "trio"}
        offenders = []
        for argv in (["pack", "--help"], ["pull", "--help"], ["config", "--help"],
                     ["cache", "ls"], *runs):
            p = subprocess.run([FB[0], "-X", "importtime", *FB[1:], *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               check=False)
            names = {i.name for i in parse_importtime(p.stderr)}
            if p.returncode != 0 or not names:
                offenders.append(f"{argv[0]} failed")
            elif names & heavy:
                offenders.append(" ".join(argv[:2]))
        self.note("start-up: non-mount commands import pyfuse3/trio", "fusebundle",
                  "no" if not offenders else "yes: " + ", ".join(offenders))
        # The mount path, as a real mount: the server's imports until it answers.
        log = self.work / "importtime.log"
        def with_importtime(mnt: Path) -> list[str]:
            argv = fb.command(mnt)
            return [argv[0], "-X", "importtime", *argv[1:]]

        traced = dataclasses.replace(fb, command=with_importtime, log=log)
        times: dict[str, list[float]] = {}
        for _ in range(self.runs):
            self.first_listing(traced)
            lines = parse_importtime(log.read_text())
            ours = [i for i in lines if i.name.split(".")[0] == "fusebundle"]
            for who, value in (("pyfuse3 + trio", ms(imports_under(lines, heavy))),
                               ("fusebundle", ms(ours)), ("all", ms(lines))):
                times.setdefault(who, []).append(value)
        for who, values in times.items():
            self.note("start-up: mount imports (ms)", who, Spread.of(values))
    # -- engine-free sources -------------------------------------------------------------
    def measure_sources(self) -> None:
        """An OCI layout with the small image as one gzip layer and as five, no engine."""
        sys.path.insert(0, str(REPO / "tests"))
        from support.imagetools import write_oci_layout

        w = self.work
        print("sources inputs:", file=sys.stderr)
        one = w / "small.rootfs.tar"
        write_small(one, self.small_files)
        parts = split_layers(one, 5)
        layout1, layout5 = w / "layout-1", w / "layout-5"
        write_oci_layout(layout1, "docker.io/fbbench/small:1", [one.read_bytes()],
                         {"Cmd": ["/none"]})
        write_oci_layout(layout5, "docker.io/fbbench/small:5", parts, {"Cmd": ["/none"]})
        blob = max((layout1 / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
        gz = w / "small.tar.gz"  # what a ratarmount user would mount: the layer blob itself
        shutil.copyfile(blob, gz)
        one.unlink()
        cfg1, cfg5 = w / "src1.yml", w / "src5.yml"
        cfg1.write_text("onboot:\n  - name: small\n    image: fbbench/small:1\n")
        cfg5.write_text("onboot:\n  - name: small\n    image: fbbench/small:5\n")
        store = w / "store"
        dead = f"unix://{w}/no-engine.sock"

        def fb_src(cfg: Path, layout: Path) -> Server:
            env = dict(os.environ, DOCKER_HOST=dead, FUSEBUNDLE_CACHE_DIR=str(store))
            s = self.fb_server(cfg, store, [f"oci:{layout}"], env)
            return dataclasses.replace(s, sources=lambda: [*layout.glob("blobs/sha256/*"),
                                                           *store.glob("layers/sha256/*.tar")])

        fb1, fb5 = fb_src(cfg1, layout1), fb_src(cfg5, layout5)
        rat = self.rat_server(gz)
        rat_index = Path(str(gz) + ".index.sqlite")
        shell(f"sync; cat {gz} {layout5}/blobs/sha256/* > /dev/null")

        def fb_cold() -> dict[str, float]:
            shutil.rmtree(store, ignore_errors=True)
            return {"layout -> tree, nothing cached (s)": self.first_listing(fb1)}

        def rat_cold() -> dict[str, float]:
            rat_index.unlink(missing_ok=True)
            return {"layout -> tree, nothing cached (s)": self.first_listing(rat)}

        self.compare({"fusebundle": fb_cold, "ratarmount": rat_cold})

        # Decompression alone: the store's ingest of the blob against gzip -dc of it.
        mib = os.path.getsize(blob) / (1 << 20)
        self.note("gunzip the layer (MiB/s of blob)", "gzip -dc",
                  mib / self.median(lambda: shell(f"gzip -dc {gz} > /dev/null").seconds))
        ingest = [sys.executable, str(REPO / "scripts" / "bench_store.py"), "--ingest",
                  str(gz)]
        if (REPO / "scripts" / "bench_store.py").exists():
            # The first call computes the blob's digests beside it: not timed.
            subprocess.run(ingest, capture_output=True, check=True, cwd=REPO)

            def one_ingest() -> float:  # the seconds Store.ingest took, as it prints them
                done = subprocess.run(ingest, capture_output=True, text=True, check=True,
                                      cwd=REPO)
                return float(done.stdout.split()[-1])

            self.note("gunzip the layer (MiB/s of blob)", "fusebundle",
                      mib / self.median(one_ingest))

        # Five layers against one: the same tree, mount and find, the store warm.
        env = dict(os.environ, DOCKER_HOST=dead, FUSEBUNDLE_CACHE_DIR=str(store))
        for cfg, layout in ((cfg1, layout1), (cfg5, layout5)):
            run([*FB, "pull", "-q", "--from", f"oci:{layout}", str(cfg)], env=env,
                stdout=subprocess.DEVNULL)

        def mount_find(s: Server) -> float:
            settle(s.sources())
            mnt = self.work / "mnt-fusebundle"
            drop_to(mnt)
            t0 = time.perf_counter()
            proc = s.start(mnt)
            try:
                wait_mounted(mnt, proc)
                shell(f"find {mnt / s.root} > /dev/null")
                return time.perf_counter() - t0
            finally:
                unmount(mnt, proc)

        mount_find(fb1)  # the first mount after a pull builds and saves the tree arrays
        mount_find(fb5)
        # Interleaved, and more runs than elsewhere: a find of 100k entries varies by +-25 %
        # from one mount to the next, more than the difference measured here.
        times: dict[str, list[float]] = {"1 layer": [], "5 layers": []}
        for _ in range(max(self.runs, 7)):
            times["1 layer"].append(mount_find(fb1))
            times["5 layers"].append(mount_find(fb5))
        for label, values in times.items():
            self.note("mount + find, layered (s)", label, Spread.of(values))

        # The registry: the small image and a 5-layer one pushed to a local docker-registry,
        # pulled by fusebundle, by docker into a fresh engine, and by skopeo into a layout.
        if not shutil.which("docker-registry"):
            self.note("registry pull, small image (s)", "fusebundle", "no docker-registry")
            return
        try:
            self.docker().api.inspect_image("fbbench/small:1")
        except Exception:  # the mount part did not run: import the same tree
            write_small(w / "small.rootfs.tar", self.small_files)
            self.import_image(w / "small.rootfs.tar", "fbbench/small:1")
            (w / "small.rootfs.tar").unlink()
        out = w / "registry.json"
        run([sys.executable, str(REPO / "scripts" / "bench_registry.py"), "--runs",
             str(self.runs), "--json", str(out), "fbbench/small:1", "5-layers"],
            env=dict(os.environ, DOCKER_HOST=self.host), stdout=subprocess.DEVNULL)
        def spread(r: dict[str, float], key: str) -> Spread:
            m = Spread(r[key])
            m.lo, m.hi = r.get(key + "_lo", r[key]), r.get(key + "_hi", r[key])
            m.n = self.runs
            return m

        for name, r in json.loads(out.read_text()).items():
            metric = f"registry pull, {'small image' if 'small' in name else '5 layers'} (s)"
            self.note(metric, "fusebundle", spread(r, "fusebundle"))
            self.note(metric, "docker pull", spread(r, "docker_pull"))
            self.note(metric, "skopeo", spread(r, "skopeo"))
            self.note(f"registry pull into a full store, {name} (s)", "fusebundle",
                      spread(r, "fusebundle_stored"))

    # -- --scale: fusebundle's own costs against the tree's size -------------------------------
    def measure_scale(self, sizes: list[int]) -> None:
        """Small-file images of each size, served from an OCI layout (no engine, no export).

        The layout's only layer is the very tar ratarmount mounts (hard-linked), uncompressed:
        what is measured is the index, the tree and the walks, not a decompressor.
        """
        for files in sizes:
            label = scale_label(files)
            print(f"scale {label}:", file=sys.stderr, flush=True)
            inp = scale_input(files)
            self.measure_scale_one(label, inp)

    def measure_scale_one(self, label: str, inp: ScaleInput) -> None:
        w = self.work
        store = w / f"store-{label}"
        cfg = w / f"scale-{label}.yml"
        cfg.write_text(f"onboot:\n  - name: small\n    image: {inp.ref}\n")
        env = dict(os.environ, DOCKER_HOST=f"unix://{w}/no-engine.sock",
                   FUSEBUNDLE_CACHE_DIR=str(store))
        source = f"oci:{inp.layout}"
        fb = self.fb_server(cfg, store, [source], env)
        stored = fb.sources
        fb = dataclasses.replace(fb, sources=lambda: [*stored(), inp.tar])  # the layout's blob
        rat = self.rat_server(inp.tar)
        rat_index = Path(str(inp.tar) + ".index.sqlite")

        def note(metric: str, who: str, value: float | str) -> None:
            self.note(f"{label}: {metric}", who, value)

        def compare(peers: dict[str, Run], runs: int | None = None) -> None:
            wrapped = {who: _prefixed(label, one) for who, one in peers.items()}
            self.compare(wrapped, runs, slow=SCALE_SLOW_ONCE)

        note("entries in the tree", "input", f"{inp.entries} ({inp.tar.stat().st_size >> 20} MiB)")
        # 1. First access with nothing stored, once each: fusebundle ingests the layer (a copy,
        # both hashes), indexes it and builds the tree; ratarmount builds its SQLite index.
        shutil.rmtree(store, ignore_errors=True)
        rat_index.unlink(missing_ok=True)

        def first_access(s: Server) -> Run:
            def one() -> dict[str, float]:
                got = self.listing(s)
                return {"first access, nothing indexed (s)": got.seconds,
                        "server peak RSS, first access (MB)": got.hwm_kb * 1024 / 1e6}
            return one

        compare({"fusebundle": first_access(fb), "ratarmount": first_access(rat)}, runs=1)
        # The tree alone: the layer stays stored and indexed, the merged index and its tree
        # arrays (merged/, README "The store and the cache") are made again by the mount.
        shutil.rmtree(store / "merged")
        got = self.listing(fb)
        note("tree build only, layer indexed (s)", "fusebundle", Spread.of([got.seconds]))
        note("server peak RSS, tree build only (MB)", "fusebundle",
             Spread.of([got.hwm_kb * 1024 / 1e6]))
        for s in (fb, rat):  # a second mount of each: whatever the first saved is used
            self.first_listing(s)
        fb_disk = sum(p.stat().st_size for p in index_files(store))
        rat_disk = rat_index.stat().st_size
        note("index + tree arrays on disk (B/entry)", "fusebundle", fb_disk / inp.entries)
        note("index + tree arrays on disk (B/entry)", "ratarmount", rat_disk / inp.entries)
        note("index + tree arrays on disk (MiB)", "fusebundle", fb_disk / 2**20)
        note("index + tree arrays on disk (MiB)", "ratarmount", rat_disk / 2**20)
        print("    " + ", ".join(f"{p.relative_to(store)} {p.stat().st_size}"
                                 for p in index_files(store)), file=sys.stderr)

        # 2. remount, the idle server, the walks: interleaved, a fresh mount each
        compare({"fusebundle": self.remount(fb), "ratarmount": self.remount(rat)})
        compare({"fusebundle": self.finds(fb), "ratarmount": self.finds(rat)})
        compare({"fusebundle": self.tar_walk(fb, "tar -cf walk (s)"),
                 "ratarmount": self.tar_walk(rat, "tar -cf walk (s)")})

        # 3. pack of the image to /dev/null, with the layer stored and with an empty store
        empty = w / f"store-{label}-empty"
        empty_env = dict(env, FUSEBUNDLE_CACHE_DIR=str(empty))
        pack = [*FB, "pack", "-q", "--from", source, str(cfg), "-o", "-"]

        def pack_stored() -> dict[str, float]:
            settle(fb.sources())
            p = run(pack, env=env, stdout=subprocess.DEVNULL)
            return {"pack (s), layer stored": p.seconds,
                    "pack peak RSS (MB), layer stored": p.rss_kb * 1024 / 1e6}

        def pack_empty() -> dict[str, float]:
            shutil.rmtree(empty, ignore_errors=True)
            settle([inp.tar])
            p = run(pack, env=empty_env, stdout=subprocess.DEVNULL)
            return {"pack (s), empty store": p.seconds,
                    "pack peak RSS (MB), empty store": p.rss_kb * 1024 / 1e6}

        compare({"fusebundle": pack_stored})
        compare({"fusebundle": pack_empty})
        shutil.rmtree(empty, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)


def split_layers(tar: Path, n: int) -> list[bytes]:
    """The tree of `tar` spread over n layer tars (each with the directories it needs)."""
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                   for m in t.getmembers()]
    files = [m for m in members if not m[0].isdir()]
    dirs = {m[0].name: m for m in members if m[0].isdir()}
    out = []
    for k in range(n):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
            chunk = files[k * len(files) // n:(k + 1) * len(files) // n]
            needed = sorted({"/".join(m.name.split("/")[:i]) for m, _ in chunk
                             for i in range(1, m.name.count("/") + 1)})
            for d in needed:
                if d in dirs:  # write_small leaves tree/ itself implied
                    layer.addfile(dirs[d][0])
            for m, data in chunk:
                layer.addfile(m, io.BytesIO(data) if data is not None else None)
        out.append(buf.getvalue())
    return out


def scale_label(files: int) -> str:
    for unit, name in ((1_000_000, "M"), (1000, "k")):
        if files >= unit and files % unit == 0:
            return f"{files // unit}{name}"
    return str(files)


def _prefixed(label: str, one: Run) -> Run:
    return lambda: {f"{label}: {k}": v for k, v in one().items()}


def index_files(store: Path) -> list[Path]:
    """What fusebundle keeps about its layers and images besides the layers themselves:
    the layer indexes, the merged index and its tree arrays (records and locks left out)."""
    return sorted(p for p in store.rglob("*") if p.is_file()
                  and not p.name.endswith(".tar") and not p.name.startswith(".")
                  and p.relative_to(store).parts[0] not in ("images", "locks"))


# ------------------------------------------------------------------------------ report
Row = dict[str, float | str]


def _v(r: Row, who: str) -> float:
    v = r[who]
    if not isinstance(v, float):
        raise KeyError(who)
    return v


def _fb(r: Row) -> float:
    return _v(r, "fusebundle")


# metric (without a scale run's "1M: " prefix), peer for the ratio, the target as it reads,
# check(row) -> met (a KeyError when a cell it needs is missing).
TARGETS: list[tuple[str, str, str, Callable[[Row], bool]]] = [
    ("tree, nothing cached (s)", "ratarmount", "<= 1/3 of ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 3),
    ("remount, index saved (s)", "ratarmount", "<= 0.7x ratarmount",
     lambda r: _fb(r) <= 0.7 * _v(r, "ratarmount")),
    ("server RSS once loaded, idle (MB)", "ratarmount", "<= 64 MB", lambda r: _fb(r) <= 64),
    ("find, small image, first walk of a mount (s)", "ratarmount", "<= 1/2 ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 2),
    ("find, small image, second walk, same mount (s)", "ratarmount", "", lambda r: True),
    ("ls -lR, small image (s)", "ratarmount", "", lambda r: True),
    ("cat large file (GB/s)", "ratarmount", ">= 3x ratarmount, >= 60 % of limit",
     lambda r: _fb(r) >= 3 * _v(r, "ratarmount") and _fb(r) >= 0.6 * _v(r, "limit (tar)")),
    ("tar -cf small tree (s)", "ratarmount", "<= 1/10 of ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 10),
    ("server peak RSS, tar walk (MiB)", "ratarmount", "<= 60 MiB",
     lambda r: _fb(r) <= 60),
    ("server RSS after the tar walk (MiB)", "ratarmount", "", lambda r: True),
    ("pack both images (s)", "tar -cf", "<= 1.5x tar -cf",
     lambda r: _fb(r) <= 1.5 * _v(r, "tar -cf")),
    ("pack peak RSS (MB)", "tar -cf", "<= 100 MB", lambda r: _fb(r) <= 100),
    ("pack --format cpio, both images (s)", "pack + gzip -1", "<= 1.2x pack + gzip -1",
     lambda r: _fb(r) <= 1.2 * _v(r, "pack + gzip -1")),
    ("start-up: non-mount commands import pyfuse3/trio", "", "no",
     lambda r: r["fusebundle"] == "no"),
    ("start-up: mount imports (ms)", "", "", lambda r: True),
    ("layout -> tree, nothing cached (s)", "ratarmount", "<= 1/3 of ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 3),
    ("gunzip the layer (MiB/s of blob)", "gzip -dc", ">= 1.0x gzip -dc",
     lambda r: _fb(r) >= _v(r, "gzip -dc")),
    ("mount + find, layered (s)", "1 layer", "5 layers <= 1.3x 1 layer",
     lambda r: _v(r, "5 layers") <= 1.3 * _v(r, "1 layer")),
    ("registry pull, small image (s)", "docker pull", "<= 1.0x docker pull",
     lambda r: _fb(r) <= _v(r, "docker pull")),
    ("registry pull, 5 layers (s)", "docker pull", "<= 1.0x docker pull",
     lambda r: _fb(r) <= _v(r, "docker pull")),
]

TARGETS += bench_real.targets(_v)
TARGETS += bench_image.targets(_v)

# The scale rows' own targets, where they differ from the default run's.
SCALE_TARGETS: list[tuple[str, str, str, Callable[[Row], bool]]] = [
    ("server peak RSS, first access (MB)", "ratarmount", "<= 150 MB", lambda r: _fb(r) <= 150),
    ("server peak RSS, tree build only (MB)", "", "<= 150 MB", lambda r: _fb(r) <= 150),
    ("server RSS once loaded, idle (MB)", "ratarmount", "<= 64 MB", lambda r: _fb(r) <= 64),
    ("server peak RSS, tar walk (MiB)", "ratarmount", "<= 1/4 ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 4),
    ("server RSS after the tar walk (MiB)", "ratarmount", "", lambda r: True),
    ("find, first walk of a mount (s)", "ratarmount", "<= 1/2 ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 2),
    ("find, second walk, same mount (s)", "ratarmount", "", lambda r: True),
    ("remount, index saved (s)", "ratarmount", "<= 1/2 ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 2),
    ("tar -cf walk (s)", "ratarmount", "<= 1/10 ratarmount",
     lambda r: _fb(r) <= _v(r, "ratarmount") / 10),
    ("pack peak RSS (MB), layer stored", "", "<= 100 MB", lambda r: _fb(r) <= 100),
    ("pack peak RSS (MB), empty store", "", "<= 100 MB", lambda r: _fb(r) <= 100),
    ("index + tree arrays on disk (B/entry)", "ratarmount", "<= 64 B an entry",
     lambda r: _fb(r) <= 64),
]

_SCALED = re.compile(r"^(\d+[kM]?): (.*)$")


def target_of(metric: str) -> tuple[str, str, Callable[[Row], bool]] | None:
    """(peer, target text, check) of a row, if it has any."""
    m = _SCALED.match(metric)
    table, name = (SCALE_TARGETS + TARGETS, m[2]) if m else (TARGETS, metric)
    return next(((t[1], t[2], t[3]) for t in table if t[0] == name), None)


def met(metric: str, r: Row) -> str:
    t = target_of(metric)
    if t is None or not t[1]:
        return ""
    try:
        return "yes" if t[2](r) else "NO"
    except (KeyError, TypeError, ValueError):
        return "?"


def ratio(metric: str, r: Row) -> str:
    t = target_of(metric)
    peer = t[0] if t else "ratarmount"
    mine = r.get("5 layers") if peer == "1 layer" else r.get("fusebundle")
    other = r.get(peer)
    if isinstance(mine, float) and isinstance(other, float) and other:
        return f"{mine / other:.2f}"
    return ""


def cell(v: float | str) -> str:
    if isinstance(v, Spread):
        return v.shown()
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def report(results: dict[str, Row]) -> str:
    """A markdown table: a row per metric, median (lowest–highest run) in each peer's cell."""
    cols = ["fusebundle", "fusebundle (no preload)", "ratarmount", "archivemount", "podman",
            "tar -xf", "limit (tar)", "limit (disk)", "tar -cf", "pack + gzip -1", "docker",
            "umoci", "gzip -dc", "1 layer", "5 layers", "docker pull", "skopeo", "pyfuse3 + trio",
            "all", "input"]
    cols = [c for c in cols if any(c in r for r in results.values())]
    lines = ["| metric | " + " | ".join(cols) + " | fusebundle / peer | target | met |",
             "|---" * (len(cols) + 4) + "|"]
    for metric, r in results.items():
        t = target_of(metric)
        cells = [cell(r.get(c, "")) for c in cols]
        lines.append(f"| {metric} | " + " | ".join(cells) +
                     f" | {ratio(metric, r)} | {t[1] if t else ''} | {met(metric, r)} |")
    return "\n".join(lines)


def as_json(results: dict[str, Row]) -> dict[str, dict[str, object]]:
    def one(v: float | str) -> object:
        if isinstance(v, Spread):
            return {"median": float(v), "min": v.lo, "max": v.hi, "runs": v.n}
        return v
    return {m: {who: one(v) for who, v in r.items()} for m, r in results.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="10k files and 256 MiB, 3 runs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--part", choices=("all", "mount", "sources", "cpio", "real", "image"),
                    help="mount: the engine-export mounts; sources: OCI layouts, no engine; "
                         "cpio: only pack --format cpio against pack + gzip -1; real: a Debian "
                         "image built with mmdebstrap and docker build, idle and busy; image: "
                         "image cat/ls/export and diff against docker, umoci and tar "
                         "(default: all, or none with --scale)")
    ap.add_argument("--scale", action="store_true",
                    help="fusebundle's costs at 10k, 100k and 1M small files (inputs kept in "
                         ".bench/scale/); only this unless --part is given")
    ap.add_argument("--scale-sizes", metavar="N,N,...",
                    help="the image sizes of --scale, in files (default 10000,100000,1000000)")
    args = ap.parse_args()
    sizes = [int(n) for n in (args.scale_sizes or "10000,100000,1000000").split(",")]
    part = args.part or ("none" if args.scale or args.scale_sizes else "all")
    host = os.environ.get("DOCKER_HOST", "")
    ratarmount = os.environ.get("RATARMOUNT", "ratarmount")
    with tempfile.TemporaryDirectory(prefix="fbbench.", dir="/var/tmp") as tmp:
        b = Bench(work=Path(tmp), runs=args.runs,
                  small_files=10_000 if args.quick else 100_000,
                  large_size=(256 << 20) if args.quick else (1 << 30),
                  host=host, ratarmount=ratarmount)
        try:
            if part in ("all", "mount"):
                b.measure()
            if part in ("all", "sources"):
                b.measure_sources()
            if part == "cpio":
                b.measure_cpio()
            if part in ("all", "real"):
                bench_real.measure_real(b, sys.modules[__name__])
                b.results.update(bench_real.derived(b.results))
            if part in ("all", "image"):
                bench_image.measure_image(b, sys.modules[__name__])
            if args.scale or args.scale_sizes:
                b.measure_scale(sizes)
        finally:
            for m in Path(tmp).glob("mnt-*"):
                unmount(m)
    inputs = []
    if part == "real":
        inputs.append("a Debian image of 7 layers (mmdebstrap + docker build)")
    elif part == "image":
        inputs.append(f"one image of {b.small_files} files (a gzip OCI layout)")
    elif part != "none":
        inputs.append(f"{'quick' if args.quick else 'full'} inputs ({b.small_files} files, "
                      f"{b.large_size >> 20} MiB)")
    if args.scale or args.scale_sizes:
        inputs.append("scale " + ", ".join(scale_label(n) for n in sizes))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
          f"{'; '.join(inputs)}, median of {args.runs} runs, each on a fresh mount\n")
    print("(cells: median (lowest–highest run); a walk slower than "
          f"{SLOW_ONCE:.0f} s ({SCALE_SLOW_ONCE:.0f} s at scale) on its first run: 1 run)\n")
    print(report(b.results))
    if args.json:
        Path(args.json).write_text(json.dumps(as_json(b.results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
