"""The real-image part of scripts/bench (`--part real`): a Debian image as users have them.

The image is Debian bookworm minbase with python3, perl, git and vim (mmdebstrap, from the
apt sources this machine already uses), imported into the bench's private dockerd, and six
`docker build` layers on top that do what real images do: a COPY of packages then their
install and removal (whiteouts of the copied files), a dpkg purge (whiteouts across /usr),
the man pages deleted (1,480 files, a whiteout each), copy-ups (chmod and touch of lower files), and
a directory removed and made again in one step (an opaque directory). The base and the
packages are cached under .bench/real/; the image is built again in each run's engine.

Peers, on the same image, each timed run from the state a user has (fresh mount, sources
written back and read once): fusebundle from a gzip OCI layout with its layers stored,
fusebundle with the sibling preload off (`PRELOAD_THREADS = 0`, the A/B of issue 22),
ratarmount on the `docker export` tar, podman's own overlay mount (`podman pull oci:` +
`podman image mount`: the kernel's walk, the limit a FUSE mount is held against), and the
export extracted on local disk. Every walk runs on an idle machine, with one
`nice -n 19` busy loop, and with two.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REAL_DIR = REPO / ".bench" / "real"
BASE_REF, REF = "fbreal/base:1", "fbreal/real:1"
PACKAGES = "python3,perl,git,vim"  # the base, as issue 22's image
EXTRA_DEBS = ("less", "file", "libmagic1", "libmagic-mgc")  # installed by a layer, offline
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")  # the apt sources this machine uses
ROOT = "containers/onboot/000-real/lower"  # the image's tree in the bundle

# Each RUN is a layer; together with the base and the COPY, seven layers.
DOCKERFILE = """\
FROM fbreal/base:1
COPY debs /tmp/debs
RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs
RUN dpkg --purge vim vim-runtime
RUN find /usr/share/man -type f -delete
RUN chmod 0700 /usr/bin/perl && touch /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0
RUN rm -rf /usr/share/locale && mkdir -p /usr/share/locale/C && echo real > /usr/share/locale/C/x
"""

# A walk: its metric and the shell command over the tree at {root}.
WALKS: dict[str, str] = {
    "find": "find {root} | wc -l",
    "tar -cf": "tar -C {root} -cf - . | wc -c",
    "du -s": "du -s {root}",
    "grep -r": "grep -r -D skip -q fbZZnomatchZZ {root} || [ $? -eq 1 ]",
    "ls -lR": "ls -lR {root} > /dev/null",
}
STATES = {"idle": 0, "1 busy loop": 1, "2 busy loops": 2}

# Runs the fusebundle CLI with the sibling preload off, wherever the constant lives.
NO_PRELOAD = """\
import runpy, sys
import fusebundle.fs
hit = [m for n, m in list(sys.modules.items())
       if n.startswith("fusebundle.fs") and hasattr(m, "PRELOAD_THREADS")]
if not hit:
    sys.exit("bench: PRELOAD_THREADS not found in fusebundle.fs")
for m in hit:
    m.PRELOAD_THREADS = 0
sys.argv = ["fusebundle", *sys.argv[1:]]
runpy.run_module("fusebundle", run_name="__main__", alter_sys=True)
"""


def sh(cmd: list[str], **kw: Any) -> str:
    """Run a setup command; its stdout. A failure ends the bench with the command's stderr."""
    p = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout


def base_tar() -> Path:
    """Debian bookworm minbase plus PACKAGES, made once with mmdebstrap."""
    out = REAL_DIR / "base.tar"
    if not out.exists():
        REAL_DIR.mkdir(parents=True, exist_ok=True)
        part = REAL_DIR / ".base.tar.part"
        print("real: mmdebstrap bookworm (once, cached in .bench/real)", file=sys.stderr)
        sh(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={PACKAGES}",
            "--format=tar", "bookworm", str(part), str(SOURCES)])
        part.rename(out)
    return out


def debs() -> Path:
    """The packages a layer installs, downloaded once (apt-get download, no dependencies)."""
    where = REAL_DIR / "debs"
    if not any(where.glob("*.deb")):
        where.mkdir(parents=True, exist_ok=True)
        sh(["apt-get", "download", *EXTRA_DEBS], cwd=where)
    return where


def build_image(host: str, work: Path) -> None:
    """The base imported and the layers of DOCKERFILE built in the bench's engine."""
    env = dict(os.environ, DOCKER_HOST=host, DOCKER_BUILDKIT="0")
    sh(["docker", "import", str(base_tar()), BASE_REF], env=env)
    ctx = work / "real-ctx"
    shutil.rmtree(ctx, ignore_errors=True)
    shutil.copytree(debs(), ctx / "debs")
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    sh(["docker", "build", "-q", "--network", "none", "-t", REF, str(ctx)], env=env)
    shutil.rmtree(ctx)


def gzip_layout(host: str, work: Path) -> Path:
    """The image as a gzip OCI layout, as LinuxKit's cache or `skopeo copy` would hold it."""
    save, layout = work / "real-save.tar", work / "real-layout"
    sh(["docker", "save", "-o", str(save), REF], env=dict(os.environ, DOCKER_HOST=host))
    shutil.rmtree(layout, ignore_errors=True)
    sh(["skopeo", "copy", "-q", "--dest-compress", "--dest-compress-format", "gzip",
        f"docker-archive:{save}", f"oci:{layout}:{REF}"])
    save.unlink()
    return layout


@contextlib.contextmanager
def busy(loops: int) -> Iterator[None]:
    """`loops` processes spinning at nice 19 for the length of the block, stopped by PID."""
    procs = [subprocess.Popen(["nice", "-n", "19", "sh", "-c", "while :; do :; done"])
             for _ in range(loops)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


class Podman:
    """podman with its own storage under the bench's work dir (overlay, the kernel's)."""

    def __init__(self, work: Path, layout: Path) -> None:
        self.root = work / "podman"
        # podman names an oci: image after its path, and refuses a name with capitals (as
        # mktemp makes them): the layout is given through a lowercase symlink.
        self.layout = Path(f"/var/tmp/fbreal-layout-{os.getpid()}")
        self.layout.unlink(missing_ok=True)
        self.layout.symlink_to(layout)
        self.image = ""

    def _cmd(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.root / "root"), "--runroot",
                str(self.root / "run"), "--storage-driver", "overlay", *args]

    def pull_and_mount(self) -> Path:
        """Pull the layout into empty storage and mount the image: podman's first access."""
        self.image = sh(self._cmd("pull", "-q", f"oci:{self.layout}:{REF}")).strip()
        return Path(sh(self._cmd("image", "mount", self.image)).strip())

    def mount(self) -> Path:
        return Path(sh(self._cmd("image", "mount", self.image)).strip())

    def unmount(self) -> None:
        subprocess.run(self._cmd("image", "unmount", "--all", "--force"),
                       capture_output=True, check=False)

    def reset(self) -> None:
        """Everything podman stored removed (its mounts first)."""
        self.unmount()
        subprocess.run(self._cmd("system", "reset", "--force"), capture_output=True,
                       check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def close(self) -> None:
        self.reset()
        self.layout.unlink(missing_ok=True)


def measure_real(b: Any, bench: ModuleType) -> None:
    """The `--part real` rows: first access and five walks, three machine states."""
    w: Path = b.work
    print("real inputs:", file=sys.stderr)
    build_image(b.host, w)
    layout = gzip_layout(b.host, w)
    export = w / "real-export.tar"
    b.docker_export(REF, export)
    disk = w / "real-disk"
    bench.drop_to(disk)
    bench.shell(f"tar -C {disk} -xf {export}")
    cfg = w / "real.yml"
    cfg.write_text(f"onboot:\n  - name: real\n    image: {REF}\n")
    cache = w / "real-cache"
    env = dict(os.environ, FUSEBUNDLE_CACHE_DIR=str(cache))
    fb = b.fb_server(cfg, cache, sources=[f"oci:{layout}"], env=env)
    fb = bench.dataclasses.replace(fb, root=ROOT)
    no_pre = bench.dataclasses.replace(
        fb, name="fusebundle (no preload)",
        command=lambda mnt: [bench.FB[0], "-c", NO_PRELOAD, "mount", "-f", "--from",
                             f"oci:{layout}", str(cfg), str(mnt)])
    rat = bench.dataclasses.replace(b.rat_server(export), root=".")
    pod = Podman(w, layout)
    try:
        _first_access(b, bench, fb, rat, pod, layout, export, cache)
        _walks(b, bench, fb, no_pre, rat, pod, disk)
    finally:
        pod.close()


def _first_access(b: Any, bench: ModuleType, fb: Any, rat: Any, pod: Podman, layout: Path,
                  export: Path, cache: Path) -> None:
    """Gzip layout -> browsable tree with nothing cached, against podman and ratarmount."""
    gz = export.with_suffix(".tar.gz")  # what a ratarmount user would mount
    with open(export, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    rat_gz = bench.dataclasses.replace(rat, command=lambda mnt: [b.ratarmount, "-f", str(gz),
                                                                  str(mnt)],
                                       sources=lambda: [gz])
    metric = "real: layout -> tree, nothing cached (s)"

    def fb_cold() -> dict[str, float]:
        shutil.rmtree(cache, ignore_errors=True)
        return {metric: b.first_listing(fb)}

    def rat_cold() -> dict[str, float]:
        Path(str(gz) + ".index.sqlite").unlink(missing_ok=True)
        return {metric: b.first_listing(rat_gz)}

    def pod_cold() -> dict[str, float]:
        pod.reset()
        bench.settle(sorted(layout.rglob("sha256/*")))
        t = bench.time.perf_counter()
        os.listdir(pod.pull_and_mount())
        return {metric: bench.time.perf_counter() - t}

    def untar() -> dict[str, float]:
        out = export.parent / "real-untar"
        bench.drop_to(out)
        bench.settle([export])
        t = bench.shell(f"tar -C {out} -xf {export}").seconds
        shutil.rmtree(out)
        return {metric: t}

    b.compare({"fusebundle": fb_cold, "ratarmount": rat_cold, "podman": pod_cold,
               "tar -xf": untar})
    b.first_listing(rat)  # ratarmount's index of the plain export, made before any walk
    gz.unlink()


def _walks(b: Any, bench: ModuleType, fb: Any, no_pre: Any, rat: Any, pod: Podman,
           disk: Path) -> None:
    """Each walk on a fresh mount of each peer, interleaved, in each machine state."""
    for state, loops in STATES.items():
        with busy(loops):
            for walk, cmd in WALKS.items():
                metric = f"real: {walk} (s), {state}"
                peers: dict[str, Callable[[], dict[str, float]]] = {
                    s.name: _fuse_walk(b, bench, s, cmd, metric) for s in (fb, no_pre, rat)}
                peers["podman"] = _podman_walk(bench, pod, cmd, metric)
                peers["limit (disk)"] = _disk_walk(bench, disk, cmd, metric)
                b.compare(peers)


def _fuse_walk(b: Any, bench: ModuleType, s: Any, cmd: str, metric: str
               ) -> Callable[[], dict[str, float]]:
    def one() -> dict[str, float]:
        with b.mounted(s) as (mnt, _):
            return {metric: bench.shell(cmd.format(root=shlex.quote(str(mnt / s.root)))).seconds}
    return one


def _podman_walk(bench: ModuleType, pod: Podman, cmd: str, metric: str
                 ) -> Callable[[], dict[str, float]]:
    def one() -> dict[str, float]:
        pod.unmount()
        root = pod.mount()
        try:
            return {metric: bench.shell(cmd.format(root=shlex.quote(str(root)))).seconds}
        finally:
            pod.unmount()
    return one


def _disk_walk(bench: ModuleType, disk: Path, cmd: str, metric: str
               ) -> Callable[[], dict[str, float]]:
    def one() -> dict[str, float]:
        bench.settle([])
        return {metric: bench.shell(cmd.format(root=shlex.quote(str(disk)))).seconds}
    return one


# -- targets (issue 22), in the form of bench.TARGETS --------------------------------------
Row = dict[str, Any]
Check = Callable[[Row], bool]


def _over_disk(k: float, num: Callable[[Row, str], float]) -> Check:
    return lambda r: num(r, "fusebundle") <= k * num(r, "limit (disk)")


def targets(num: Callable[[Row, str], float]) -> list[tuple[str, str, str, Check]]:
    """Each real-image row's peer for the ratio, its goal as it reads, and the check.

    `num(row, peer)` is a peer's number in a row (a KeyError when it has none).
    """
    out: list[tuple[str, str, str, Check]] = [
        ("real: layout -> tree, nothing cached (s)", "ratarmount",
         "<= 1/3 of ratarmount and of podman",
         lambda r: num(r, "fusebundle") <= min(num(r, "ratarmount"), num(r, "podman")) / 3),
    ]
    for state in STATES:
        for walk in WALKS:
            k = {"tar -cf": 3.0, "grep -r": 3.0, "find": 5.0}.get(walk)
            out.append((f"real: {walk} (s), {state}", "limit (disk)",
                        f"<= {k:g}x local disk" if k else "", _over_disk(k or 0, num)))
    for walk in WALKS:
        for state in ("1 busy loop", "2 busy loops"):
            out.append((f"real: {walk}, {state} / idle", "", "<= 1.5",
                        lambda r: num(r, "fusebundle") <= 1.5))
        out.append((f"real: {walk}, preload on / off, worst state", "", "<= 1.0 (never slower)",
                    lambda r: num(r, "fusebundle") <= 1.0))
    return out


def derived(results: dict[str, Row]) -> dict[str, Row]:
    """The ratio rows of the goals: a walk under load over idle, preload on over off."""
    out: dict[str, Row] = {}
    for walk in WALKS:
        rows = {state: results.get(f"real: {walk} (s), {state}", {}) for state in STATES}
        idle = rows["idle"].get("fusebundle")
        for state in ("1 busy loop", "2 busy loops"):
            got = rows[state].get("fusebundle")
            if isinstance(idle, float) and isinstance(got, float) and idle:
                out[f"real: {walk}, {state} / idle"] = {"fusebundle": round(got / idle, 3)}
        worst = [r["fusebundle"] / r["fusebundle (no preload)"] for r in rows.values()
                 if isinstance(r.get("fusebundle"), float)
                 and isinstance(r.get("fusebundle (no preload)"), float)]
        if worst:
            out[f"real: {walk}, preload on / off, worst state"] = {
                "fusebundle": round(max(worst), 3)}
    return out
