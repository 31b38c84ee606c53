#!/usr/bin/env python3
"""An interleaved A/B of `pack` on two checkouts, beside `tar -cf` of the extracted tree.

The inputs are the two images of `scripts/bench --part mount`: the 100k small-file tree
(scale_input) and one 1 GiB file, as OCI layouts (each stored layer is hashed again by every
pack), or with --engine imported into the engine at DOCKER_HOST, whose exports the store keeps
as `--part mount` packs them (no hash). Each checkout packs a config naming both with its own
store (filled by one untimed pack), to a file, fsynced as pack does; `tar -cf` writes the
tree that output extracts to, then `sync`s it, and once more without the sync, as
`scripts/bench --part mount` times it. The commands alternate, each run after the sources are
written back and read once; each cell is the median (lowest-highest) of the runs, wall and CPU
(user + system), since the machine may be shared. The two packs' outputs must be
byte-identical (cmp), or the run stops.

    scripts/bench_pack_ab.py A_REPO B_REPO [--runs N] [--work DIR] [--scale-dir DIR] [--engine]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LARGE_SIZE = 1 << 30  # the mount part's large image: one 1 GiB file
LARGE_REF = "fbbench/pack-large:1"


def large_layout(work: Path) -> Path:
    """The 1 GiB image as an OCI layout, made once under `work`."""
    layout = work / "layout-large"
    if (layout / "index.json").is_file():
        return layout
    shutil.rmtree(layout, ignore_errors=True)
    tar = work / "large.tar"
    bench.write_large(tar, LARGE_SIZE)
    bench.write_linked_layout(layout, "docker.io/" + LARGE_REF, tar, bench.sha256_file(tar))
    return layout


def engine_refs(work: Path, small: Path) -> tuple[str, str]:
    """The two images imported into the engine at DOCKER_HOST (as bench's engine_images)."""
    import docker

    api = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="auto").api
    refs = ("fbbench/small:1", "fbbench/large:1")
    large = work / "large.tar"
    if not large.is_file():
        bench.write_large(large, LARGE_SIZE)
    for tar, ref in zip((small, large), refs, strict=True):
        repo, tag = ref.rsplit(":", 1)
        api.import_image(src=str(tar), repository=repo, tag=tag, changes=['CMD ["/none"]'])
    return refs


def timed(cmd: list[str], env: dict[str, str] | None = None,
          cwd: Path | None = None) -> tuple[float, float, float]:
    """Wall, user and system seconds (of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def shown(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="checkout A (with its .venv), e.g. main")
    p.add_argument("b", type=Path, help="checkout B (with its .venv), e.g. this branch")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--work", type=Path, default=REPO / ".bench" / "pack-ab")
    p.add_argument("--scale-dir", type=Path, default=bench.SCALE_DIR)
    p.add_argument("--engine", action="store_true", help="the images from DOCKER_HOST's engine")
    args = p.parse_args()
    w = args.work / ("engine" if args.engine else "layouts")
    w.mkdir(parents=True, exist_ok=True)
    small = bench.scale_input(100000, args.scale_dir)
    if args.engine:
        refs, sources, engine = engine_refs(args.work, small.tar), [], os.environ["DOCKER_HOST"]
    else:
        refs = (small.ref, LARGE_REF)
        sources = ["--from", f"oci:{small.layout}", "--from", f"oci:{large_layout(args.work)}"]
        engine = f"unix://{w}/no-engine.sock"
    cfg = w / "pack.yml"
    cfg.write_text(f"onboot:\n  - name: small\n    image: {refs[0]}\n"
                   f"  - name: large\n    image: {refs[1]}\n")

    def packer(name: str, checkout: Path) -> tuple[Callable[[], tuple[float, float, float]], Path]:
        store, out = w / f"store-{name}", w / f"pack-{name}.tar"
        # A worktree's .venv may hold an editable install of another checkout, and `python -m`
        # puts its working directory first: run in the checkout, with it on PYTHONPATH.
        env = dict(os.environ, FUSEBUNDLE_CACHE_DIR=str(store), DOCKER_HOST=engine,
                   PYTHONPATH=str(checkout.resolve()))
        python = str(checkout / ".venv/bin/python")
        where = subprocess.run([python, "-c", "import fusebundle; print(fusebundle.__file__)"],
                               env=env, cwd=checkout, check=True, capture_output=True,
                               text=True).stdout
        if not Path(where.strip()).is_relative_to(checkout.resolve()):
            raise SystemExit(f"{checkout}: its python imports fusebundle from {where.strip()}")
        cmd = [python, "-m", "fusebundle", "pack", "-q", *sources, str(cfg), "-o", str(out)]
        subprocess.run(cmd, env=env, cwd=checkout, check=True)  # fills the store, untimed

        def one() -> tuple[float, float, float]:
            bench.settle([*store.rglob("*.tar"), *([] if args.engine else [small.tar])])
            return timed(cmd, env, checkout)
        return one, out

    pack_a, out_a = packer("a", args.a)
    pack_b, out_b = packer("b", args.b)
    if subprocess.run(["cmp", str(out_a), str(out_b)]).returncode:
        print("the two packs differ", file=sys.stderr)
        return 1
    tree, tar_out = w / "extracted", w / "tar-cf.tar"
    bench.drop_to(tree)
    subprocess.run(["tar", "-C", str(tree), "-xf", str(out_b)], check=True)
    bench.shell(f"tar -C {tree} -cf - . | wc -c")  # the tree's dentries and inodes warm

    def tar_cf() -> tuple[float, float, float]:
        bench.settle([])
        return timed(["bash", "-c", f"tar -C {tree} -cf {tar_out} . && sync {tar_out} {w}"])

    def tar_cf_unsynced() -> tuple[float, float, float]:  # as `--part mount` times it
        bench.settle([])
        return timed(["tar", "-C", str(tree), "-cf", str(tar_out), "."])

    contestants = (("A", pack_a), ("B", pack_b), ("tar -cf", tar_cf),
                   ("tar -cf, no sync", tar_cf_unsynced))
    runs: dict[str, list[tuple[float, float, float]]] = {who: [] for who, _ in contestants}
    for i in range(args.runs):
        for who, one in contestants:
            runs[who].append(one())
            wall, user, system = runs[who][-1]
            print(f"run {i + 1} {who}: wall {wall:.2f} s, cpu {user + system:.2f} s "
                  f"(user {user:.2f}, sys {system:.2f})", file=sys.stderr)
    if not args.runs:
        return 0  # the inputs and stores only
    print(f"pack of both images, {args.runs} interleaved runs: median (lowest-highest)")
    for who, got in runs.items():
        label = {"A": f"A {args.a}", "B": f"B {args.b}"}.get(who, who)
        print(f"  {label}: wall {shown([g[0] for g in got])} s, "
              f"cpu {shown([g[1] + g[2] for g in got])} s, user {shown([g[1] for g in got])} s, "
              f"sys {shown([g[2] for g in got])} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
