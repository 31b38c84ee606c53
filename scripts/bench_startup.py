#!/usr/bin/env python3
"""The mount's start-up, A against B: from starting `mount -f` to the image's top directory
listed.

Issue 22's "remount, index saved" measures this with engine images under a private dockerd;
this times the same path on the demo image of an OCI layout, so it needs no engine and runs
anywhere.  Every variant is a `fusebundle` executable (e.g. main's venv and a branch's); the
runs are interleaved (A B A B ...), the store is filled once before the first timed run, and
each cell is the median with the lowest and highest beside it; each later variant's
differences from the first, pair by pair, as well.  Usage:

    scripts/bench_startup.py [--runs N] [--listed DIR] [--config CONFIG.yml] NAME=FUSEBUNDLE ...

With --config, the config's images come from the engine at $DOCKER_HOST, exported into the
cache by the untimed first run: the bench's own remount.

Also prints the modules and RSS of `import fusebundle.cli.commands, fusebundle.fs.serve` under
each variant's python (the mount path's imports before it reads the config).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REF = "docker.io/fusebundle-demo/hello:1"
# The image's top directory, as `scripts/bench --part mount` lists its image's: the image is
# resolved, its saved index opened and its graft built before this answers.
LISTED = "containers/onboot/000-hello/lower"
# Generous against a hang only: a start-up takes well under a second.
READY_TIMEOUT = 60.0
IMPORTS = ("import resource, sys, fusebundle.cli.commands, fusebundle.fs.serve; "
           "print(len(sys.modules), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def write_layout(path: Path) -> None:
    """The demo image (tests/support/imagetools) as an OCI layout at `path`."""
    sys.path.insert(0, str(REPO / "tests"))
    from support.imagetools import DEMO_CONFIG, demo_layers, write_oci_layout
    write_oci_layout(str(path), REF, demo_layers(), DEMO_CONFIG)


def one_start(fb: str, config: list[str], mnt: Path, env: dict[str, str],
              listed: str = LISTED) -> tuple[float, float]:
    """Seconds from starting the server of `config` (the config and its flags) to
    `ls MNT/<listed>` answered, and the CPU seconds the server used in all (a shared machine's
    load stretches the first, hardly the second)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([fb, "mount", "-f", "-q", *config, str(mnt)], env=env, cwd="/",
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{fb} exited with {proc.returncode} before the listing")
            try:
                os.listdir(mnt / listed)
                seconds = time.perf_counter() - t0
                break
            except OSError:
                if time.perf_counter() - t0 > READY_TIMEOUT:
                    raise RuntimeError(f"{fb}: no listing after {READY_TIMEOUT:g} s") from None
                time.sleep(0.001)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0  # reaped here, for its rusage
    return seconds, usage.ru_utime + usage.ru_stime


def imports(fb: str, env: dict[str, str]) -> tuple[int, int]:
    """(modules, max RSS in KiB) of the mount path's imports under `fb`'s python."""
    python = str(Path(fb).parent / "python")
    # From /, so that `-c`'s first path entry (the working directory) holds no fusebundle.
    out = subprocess.run([python, "-c", IMPORTS], env=env, capture_output=True, text=True,
                         check=True, cwd="/").stdout.split()
    return int(out[0]), int(out[1])


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.0f} ms ({min(xs) * 1000:.0f}-{max(xs) * 1000:.0f})"


def paired(a: list[float], b: list[float]) -> str:
    """The median of b - a over the pairs of runs, with the lowest and highest: in ms."""
    d = [(y - x) * 1000 for x, y in zip(a, b, strict=True)]
    return f"{statistics.median(d):+.0f} ms ({min(d):+.0f} to {max(d):+.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--listed", default=LISTED,
                    help=f"the directory whose listing ends a run (default: {LISTED})")
    ap.add_argument("--config", metavar="CONFIG.yml",
                    help="mount this config, its images from the engine at $DOCKER_HOST (as "
                         "`scripts/bench --part mount` does), instead of the demo image from "
                         "an OCI layout")
    ap.add_argument("variants", nargs="+", metavar="NAME=FUSEBUNDLE")
    a = ap.parse_args()
    variants = {name: os.path.abspath(fb) for name, fb in (v.split("=", 1) for v in a.variants)}
    work = Path(tempfile.mkdtemp(prefix="fb-startup-"))
    try:
        mnt = work / "mnt"
        mnt.mkdir()
        env = dict(os.environ, FUSEBUNDLE_CACHE_DIR=str(work / "cache"))
        if a.config:
            config = [os.path.abspath(a.config)]
        else:
            write_layout(work / "layout")
            config = ["--from", f"oci:{work / 'layout'}", str(REPO / "examples/demo.yml")]
            env["DOCKER_HOST"] = f"unix://{work}/none.sock"  # no engine is asked
        # Bytecode is written by the untimed first run, as an installed package has it: a
        # start-up that compiles every module measures the compiler.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        for fb in variants.values():  # fill the store and index it, untimed
            one_start(fb, config, mnt, env, a.listed)
        wall: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(a.runs):
            for name, fb in variants.items():
                seconds, cpu_seconds = one_start(fb, config, mnt, env, a.listed)
                wall[name].append(seconds)
                cpu[name].append(cpu_seconds)
        first = next(iter(variants))
        for name, fb in variants.items():
            mods, rss = imports(fb, env)
            print(f"{name}: start-up to {a.listed} listed {spread(wall[name])}, server CPU "
                  f"{spread(cpu[name])}, {a.runs} runs; mount path imports {mods} modules, "
                  f"max RSS {rss / 1024:.1f} MiB")
            if name != first:  # run by run: the load that both of a pair met cancels out
                print(f"  {name} - {first}, pair by pair: start-up "
                      f"{paired(wall[first], wall[name])}, CPU {paired(cpu[first], cpu[name])}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
