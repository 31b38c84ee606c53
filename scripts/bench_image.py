"""The one-image part of scripts/bench (`--part image`): issue 19's commands and their peers.

The input is the bench's small-file image (write_small: 100k files, 10k with --quick) as a
gzip OCI layout holding two images: `fbbench/image:1`, the tree as one layer, and
`fbbench/image:2`, the same layer and one small top layer that changes one file (the pair
`diff` compares). The same tree is imported into the bench's private dockerd (the peer of
`image cat`) and extracted on local disk (the peer of `image export`). Rows, each the median
of --runs interleaved runs, with the CPU time (user + system, the command and its children)
beside the wall time, as the machine may be shared:

- `image cat` of one small file, layers in the store, against `docker create` + `docker cp`
  + `docker rm` of the same file;
- nothing cached (empty store), from the layout: `image cat` and `image ls -R` against
  `umoci raw unpack` of the same layout (umoci extracts everything first);
- `image ls -R --json` and `diff` of the two images, cached;
- `image export` against `tar -cf` of the tree on local disk, both to a file on the same
  disk, each fsynced with its directory (export does that itself; tar is followed by `sync`).
"""

from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NAME = "docker.io/fbbench/image"  # the layout's ref.name of both images, :1 and :2
DOCKER_REF = "fbbench/image:1"
CAT_PATH = "/tree/d000/e0/f000000.dat"  # the first file write_small makes (0-4 KiB)

M_CAT = "image cat, one file, layers stored (s)"
M_CAT_COLD = "image cat, nothing cached (s)"
M_LS_COLD = "image ls -R, nothing cached (s)"
M_LS_JSON = "image ls -R --json, cached (s)"
M_DIFF = "diff, one small top layer apart, cached (s)"
M_EXPORT = "image export (s)"
M_IMPORTS = "start-up: image cat imports (ms)"


def cpu_metric(metric: str) -> str:
    """The CPU-time row beside a wall-time row: `... (s)` -> `..., CPU (s)`."""
    return metric.removesuffix(" (s)") + ", CPU (s)"


@dataclass
class Inputs:
    layout: Path
    disk: Path  # the tree extracted on local disk
    files: int


def top_layer() -> bytes:
    """Image 2's own layer: the first file of the tree with other content (a copy-up)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        data = b"changed by the top layer\n"
        ti = tarfile.TarInfo(CAT_PATH.lstrip("/"))
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 1600000001
        t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def make_inputs(b: Any, bench: ModuleType) -> Inputs:
    """The layout of both images, the engine's copy of image 1, the tree on local disk."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.imagetools import write_oci_layout

    w: Path = b.work
    print("image inputs:", file=sys.stderr)
    tar = w / "image.rootfs.tar"
    bench.write_small(tar, b.small_files)
    layer = tar.read_bytes()
    layout = w / "image-layout"
    write_oci_layout(layout, f"{NAME}:1", [layer], {"Cmd": ["/none"]})
    write_oci_layout(layout, f"{NAME}:2", [layer, top_layer()], {"Cmd": ["/none"]})
    del layer
    b.import_image(tar, DOCKER_REF)
    disk = w / "image-disk"
    bench.drop_to(disk)
    bench.shell(f"tar -C {disk} -xf {tar}")
    tar.unlink()
    return Inputs(layout, disk, b.small_files)


def timed(bench: ModuleType, cmd: list[str], **kw: Any) -> tuple[float, float]:
    """Wall and CPU seconds of one command (user + system of it and all it waited for)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = bench.run(cmd, **kw).seconds
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _both(metric: str, wall: float, cpu: float) -> dict[str, float]:
    return {metric: wall, cpu_metric(metric): cpu}


Run = Callable[[], dict[str, float]]


def measure_image(b: Any, bench: ModuleType) -> None:
    """The `--part image` rows: cold first (they empty the store), then the cached ones."""
    inp = make_inputs(b, bench)
    store = b.work / "image-store"
    env = dict(os.environ, FUSEBUNDLE_CACHE_DIR=str(store),
               DOCKER_HOST=f"unix://{b.work}/no-engine.sock")  # the layout alone is read
    ref1, ref2 = f"oci:{inp.layout}:{NAME}:1", f"oci:{inp.layout}:{NAME}:2"
    blobs = sorted(inp.layout.glob("blobs/sha256/*"))

    def fb(*argv: str) -> list[str]:
        return [*bench.FB, *argv]

    def stored() -> list[Path]:
        return sorted(store.glob("layers/sha256/*.tar"))

    # 1. nothing cached: the store emptied, the layout's blobs written back and read once
    def cold() -> dict[str, float]:
        got: dict[str, float] = {}
        for metric, argv in ((M_CAT_COLD, ["image", "cat", "-q", ref1, CAT_PATH]),
                             (M_LS_COLD, ["image", "ls", "-R", "-q", ref1])):
            shutil.rmtree(store, ignore_errors=True)
            bench.settle(blobs)
            got |= _both(metric, *timed(bench, fb(*argv), env=env, stdout=subprocess.DEVNULL))
        return got

    def umoci() -> dict[str, float]:
        out = b.work / "umoci-rootfs"
        shutil.rmtree(out, ignore_errors=True)
        bench.settle(blobs)
        wall, cpu = timed(bench, ["umoci", "raw", "unpack", "--image",
                                  f"{inp.layout}:{NAME}:1", str(out)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(out)
        return {**_both(M_CAT_COLD, wall, cpu), **_both(M_LS_COLD, wall, cpu)}

    # every run, however slow: umoci's unpack of 100k files takes 20 s and more
    b.compare({"fusebundle": cold, "umoci": umoci}, slow=float("inf"))

    # 2. cached: both images stored and indexed once, not timed
    for ref in (ref1, ref2):
        bench.run(fb("image", "ls", "-q", ref), env=env, stdout=subprocess.DEVNULL)
    b.compare({"fusebundle": _cached(bench, M_CAT, fb("image", "cat", "-q", ref1, CAT_PATH),
                                     env, stored),
               "docker": _docker_cat(b, bench)})
    b.compare({"fusebundle": _cached(bench, M_LS_JSON, fb("image", "ls", "-R", "--json", "-q",
                                                          ref1), env, stored)})
    b.compare({"fusebundle": _cached(bench, M_DIFF, fb("diff", "-q", ref1, ref2), env, stored,
                                     ok=(0, 1))})
    b.compare(_exports(b, bench, inp, fb("image", "export", "-q", ref1), env, stored))
    _imports(b, bench, fb("image", "cat", "-q", ref1, CAT_PATH), env)


def _cached(bench: ModuleType, metric: str, argv: list[str], env: dict[str, str],
            stored: Callable[[], list[Path]], ok: tuple[int, ...] = (0,)) -> Run:
    def one() -> dict[str, float]:
        bench.settle(stored())
        if ok == (0,):
            return _both(metric, *timed(bench, argv, env=env, stdout=subprocess.DEVNULL))
        # diff exits 1 when the images differ, as they do: run() takes only 0, so a shell does
        wrapped = ["bash", "-c", '"$@"; [ $? -eq 1 ]', "diff", *argv]
        return _both(metric, *timed(bench, wrapped, env=env, stdout=subprocess.DEVNULL))
    return one


def _docker_cat(b: Any, bench: ModuleType) -> Run:
    """The one file through docker: create a container, copy the file out, remove it."""
    env = dict(os.environ, DOCKER_HOST=b.host)
    script = (f'c=$(docker create {DOCKER_REF}) && docker cp "$c:{CAT_PATH}" - > /dev/null '
              f'&& docker rm "$c" > /dev/null')
    bench.run(["bash", "-c", script], env=env)  # the first create sets up the image's layer

    def one() -> dict[str, float]:
        return {M_CAT: bench.run(["bash", "-c", script], env=env).seconds}
    return one


def _exports(b: Any, bench: ModuleType, inp: Inputs, argv: list[str], env: dict[str, str],
             stored: Callable[[], list[Path]]) -> dict[str, Run]:
    """`image export -o FILE` against `tar -cf FILE` of the tree on disk, then fsynced."""
    out_fb, out_tar = b.work / "image-export.tar", b.work / "image-tar-cf.tar"
    bench.shell(f"tar -C {inp.disk} -cf - . | wc -c")  # the tree's dentries and inodes warm

    def fusebundle() -> dict[str, float]:
        out_fb.unlink(missing_ok=True)
        bench.settle(stored())
        got = _both(M_EXPORT, *timed(bench, [*argv, "-o", str(out_fb)], env=env))
        out_fb.unlink()
        return got

    def tar_cf() -> dict[str, float]:
        out_tar.unlink(missing_ok=True)
        bench.settle([])
        cmd = f"tar -C {inp.disk} -cf {out_tar} . && sync {out_tar} {out_tar.parent}"
        got = _both(M_EXPORT, *timed(bench, ["bash", "-c", cmd]))
        out_tar.unlink()
        return got

    return {"fusebundle": fusebundle, "tar -cf": tar_cf}


def _imports(b: Any, bench: ModuleType, argv: list[str], env: dict[str, str]) -> None:
    """What `image cat` spends importing: fusebundle's own modules and all of them."""
    times: dict[str, list[float]] = {"fusebundle": [], "all": []}
    for _ in range(b.runs):
        p = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = bench.parse_importtime(p.stderr)
        times["fusebundle"].append(bench.ms(i for i in lines
                                            if i.name.split(".")[0] == "fusebundle"))
        times["all"].append(bench.ms(lines))
    for who, values in times.items():
        b.note(M_IMPORTS, who, bench.Spread.of(values))


# -- targets (issue 19), in the form of bench.TARGETS --------------------------------------
Row = dict[str, Any]
Check = Callable[[Row], bool]


def targets(num: Callable[[Row, str], float]) -> list[tuple[str, str, str, Check]]:
    """Each row's peer for the ratio, its goal as it reads, and the check.

    `num(row, peer)` is a peer's number in a row (a KeyError when it has none).
    """
    fb = "fusebundle"
    out: list[tuple[str, str, str, Check]] = [
        (M_CAT, "docker", "<= 0.25 s and <= 1/10 of docker",
         lambda r: num(r, fb) <= 0.25 and num(r, fb) <= num(r, "docker") / 10),
        (M_CAT_COLD, "umoci", "<= 1/3 of umoci", lambda r: num(r, fb) <= num(r, "umoci") / 3),
        (M_LS_COLD, "umoci", "<= 1/3 of umoci", lambda r: num(r, fb) <= num(r, "umoci") / 3),
        (M_LS_JSON, "", "<= 1.5 s", lambda r: num(r, fb) <= 1.5),
        (M_DIFF, "", "<= 1.0 s", lambda r: num(r, fb) <= 1.0),
        (M_EXPORT, "tar -cf", "<= 1.0x tar -cf", lambda r: num(r, fb) <= num(r, "tar -cf")),
    ]
    for metric, peer, *_ in list(out):
        out.append((cpu_metric(metric), peer, "", lambda r: True))
    return out
