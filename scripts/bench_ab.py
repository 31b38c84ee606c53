#!/usr/bin/env python3
"""A/B of server variants on one image, measured so that a shared machine does not hide it.

Issue 22: wall clock alone is noise on a 2-core machine that other jobs share.  Per walk this
records the server's CPU time (perf task-clock over all its threads, those started later
included), its context switches, its replies and stores (syscw of /proc/PID/io), the bytes it
read from the source tars for the preload and the bytes it handed to the kernel (wchar),
against the bytes the walk needed; and the wall clock.  Variants run interleaved (A B A B ...)
on fresh mounts whose source tars are warm, each state (idle, 1 and 2 `nice -n 19` busy loops)
in turn.  Usage:

    scripts/bench_ab.py real|small [--runs N] [--walks tar,grep] [--variants on,off]

`real` is the mmdebstrap base of `scripts/bench --part real` (.bench/real/base.tar) as a
one-layer image, `small` the 100k-file tree of `scripts/bench`.  A variant is a set of module
constants set before the CLI runs (VARIANTS).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402
import bench_real  # noqa: E402

WORK = REPO / ".bench" / "ab"
WALKS = {
    "tar": "tar -C {root} -cf - . | wc -c",
    "grep": "grep -r -D skip -q fbZZnomatchZZ {root} || [ $? -eq 1 ]",
    "find": "find {root} | wc -l",
}
# name -> {module: {constant: value}}, set in the server before it mounts; "sys":
# {"switchinterval": s} sets the GIL's; "code" (FB_AB_OLD=DIR) runs the fusebundle package under DIR
# instead (an older commit: `git archive COMMIT fusebundle | tar -x -C DIR`).
OLD = os.environ.get("FB_AB_OLD", "/tmp/h22/old")
VARIANTS: dict[str, dict[str, dict[str, object]]] = {
    "on": {},
    "off": {"fusebundle.fs.preload": {"PRELOAD_THREADS": 0}},
    "gil0.2ms": {"sys": {"switchinterval": 0.0002}},
    "nospin": {"fusebundle.fs.loop": {"SPIN": 0}},
    "spin": {"fusebundle.fs.loop": {"SPIN_BACKOFF": 0}},
    "thread-read": {"fusebundle.fs.preload": {"READ_ON_LOOP": False}},
    "no-handoff": {"fusebundle.fs.preload": {"HANDOFF": 0}},
    "nospin-off": {"fusebundle.fs.loop": {"SPIN": 0},
                   "fusebundle.fs.preload": {"PRELOAD_THREADS": 0}},
    "columns-off": {"fusebundle.fs.ops": {"READDIR_COLUMNS": False}},
    "old": {"code": {"dir": OLD}},
    "old-off": {"code": {"dir": OLD}, "fusebundle.fs.preload": {"PRELOAD_THREADS": 0}},
}
# Sets the variant's constants, counts what the preload read and stored, runs the CLI.
# Not fusebundle: ratarmount on the layer tar itself, as scripts/bench mounts it (the first
# mount builds its SQLite index beside the tar; later ones load it).
PEERS = {"ratarmount": os.environ.get("RATARMOUNT", "ratarmount")}
WRAPPER = """\
import json, os, runpy, sys, importlib
variant = json.loads(os.environ["FB_AB_VARIANT"])
if "code" in variant:
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, variant.pop("code")["dir"])
if "sys" in variant:
    sys.setswitchinterval(variant.pop("sys")["switchinterval"])
for mod, consts in variant.items():
    m = importlib.import_module(mod)
    for k, v in consts.items():
        assert hasattr(m, k), (mod, k)
        setattr(m, k, v)
from fusebundle.fs import preload
stats = os.environ["FB_AB_STATS"]
def counted(self, *a):
    send(self, *a)
    with open(stats + ".part", "w") as f:
        f.write(json.dumps(getattr(self, "counts", {})))
    os.replace(stats + ".part", stats)
hook = next(h for h in ("_send_ahead", "_send", "_store") if hasattr(preload.Preload, h))
send = getattr(preload.Preload, hook)
setattr(preload.Preload, hook, counted)
sys.argv = ["fusebundle", *sys.argv[1:]]
runpy.run_module("fusebundle", run_name="__main__", alter_sys=True)
"""


def layout_of(kind: str) -> Path:
    """The OCI layout of the image (made once under WORK): its one layer, uncompressed."""
    root = WORK / kind / "oci"
    if (root / "index.json").exists():
        return root
    if kind == "real":
        tar = bench_real.base_tar()
    else:
        tar = WORK / kind / "layer.tar"
        tar.parent.mkdir(parents=True, exist_ok=True)
        bench.write_small(tar, 100_000)
    bench.write_linked_layout(root, f"fbab/{kind}:1", tar, bench.sha256_file(tar))
    return root


def proc_io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of the server's live threads."""
    vol = inv = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt"):
                        inv += int(line.split()[1])
        except OSError:
            continue
    return vol, inv


def one_walk(kind: str, layout: Path, variant: str, walk: str, cache: Path) -> dict[str, float]:
    """One timed walk on a fresh mount: its numbers."""
    mnt = WORK / kind / f"mnt-{variant}"
    bench.drop_to(mnt)
    cfg = WORK / kind / "cfg.yml"
    cfg.write_text(f"onboot:\n  - name: app\n    image: fbab/{kind}:1\n")
    stats = Path(tempfile.mktemp(prefix="fbab-"))
    env = dict(os.environ, FUSEBUNDLE_CACHE_DIR=str(cache), FB_AB_STATS=str(stats),
               FB_AB_VARIANT=json.dumps(VARIANTS.get(variant, {})))
    env.pop("DOCKER_HOST", None)
    bench.settle(sorted(cache.glob("layers/sha256/*.tar")))
    if variant in PEERS:
        tar = WORK / kind / "layer.tar" if kind == "small" else bench_real.base_tar()
        cmd = [PEERS[variant], "-f", str(tar), str(mnt)]
    else:
        cmd = [sys.executable, "-c", WRAPPER, "mount", "-f", "--from", f"oci:{layout}",
               str(cfg), str(mnt)]
    proc = subprocess.Popen(cmd, env=env, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        bench.wait_mounted(mnt, proc)
        root = mnt if variant in PEERS else mnt / "containers/onboot/000-app/lower"
        os.listdir(root)  # the layer indexed and loaded: not part of the walk
        time.sleep(0.3)
        pid = proc.pid
        io0, sw0 = proc_io(pid), switches(pid)
        perf_out = Path(tempfile.mktemp(prefix="fbab-perf-"))
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "task-clock,context-switches",
                                 "-p", str(pid), "-o", str(perf_out)])
        time.sleep(0.2)
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", WALKS[walk].format(root=root)], check=True,
                       stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        time.sleep(0.3)  # a preload still running counts
        io1, sw1 = proc_io(pid), switches(pid)
        perf.send_signal(2)
        perf.wait()
        pf = {}
        for line in perf_out.read_text().splitlines():
            parts = line.split(",")
            if len(parts) > 3 and parts[0].replace(".", "").isdigit():
                pf[parts[2]] = float(parts[0])
        perf_out.unlink()
    finally:
        bench.unmount(mnt, proc)
    counts = json.loads(stats.read_text()) if stats.exists() else {}
    stats.unlink(missing_ok=True)
    stored = counts.get("stored_bytes", 0)
    return {"wall": wall, "cpu": pf.get("task-clock", 0.0) / 1000,
            "cs": pf.get("context-switches", 0.0),
            "vol": sw1[0] - sw0[0], "inv": sw1[1] - sw0[1],
            "writes": io1["syscw"] - io0["syscw"] - counts.get("stored_files", 0),
            "sent": io1["wchar"] - io0["wchar"], "span_read": counts.get("read_bytes", 0),
            "stored": stored}


def needed(kind: str, layout: Path, cache: Path) -> int:
    """Bytes of the regular files a full read of the tree reads (hard links once)."""
    out = WORK / kind / "needed"
    if out.exists():
        return int(out.read_text())
    mnt = WORK / kind / "mnt-needed"
    bench.drop_to(mnt)
    cfg = WORK / kind / "cfg.yml"
    cfg.write_text(f"onboot:\n  - name: app\n    image: fbab/{kind}:1\n")
    env = dict(os.environ, FUSEBUNDLE_CACHE_DIR=str(cache))
    env.pop("DOCKER_HOST", None)
    proc = subprocess.Popen([*bench.FB, "mount", "-f", "--from", f"oci:{layout}", str(cfg),
                             str(mnt)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        bench.wait_mounted(mnt, proc)
        total, seen = 0, set()
        for d, _, files in os.walk(mnt / "containers/onboot/000-app/lower"):
            for name in files:
                st = os.lstat(os.path.join(d, name))
                if st.st_mode & 0o170000 == 0o100000 and st.st_ino not in seen:
                    seen.add(st.st_ino)
                    total += st.st_size
    finally:
        bench.unmount(mnt, proc)
    out.write_text(str(total))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["real", "small"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--walks", default="tar,grep")
    ap.add_argument("--variants", default="on,off")
    ap.add_argument("--states", default="idle,1 busy loop,2 busy loops")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    layout = layout_of(args.kind)
    cache = WORK / args.kind / "cache"
    need = needed(args.kind, layout, cache)
    variants = args.variants.split(",")
    results: dict[str, list[dict[str, float]]] = {}
    for state in args.states.split(","):
        with bench_real.busy(bench_real.STATES[state]):
            for walk in args.walks.split(","):
                for _ in range(args.runs):
                    for v in variants:
                        r = one_walk(args.kind, layout, v, walk, cache)
                        results.setdefault(f"{state}|{walk}|{v}", []).append(r)
                        print(f"{state:13} {walk:5} {v:8} " + " ".join(
                            f"{k}={x:.3g}" for k, x in r.items()), flush=True)
    print(f"\n{args.kind}: {need / 1e6:.0f} MB of regular files; medians [min-max] of "
          f"{args.runs}; amp = (sent - stored + span_read) / needed")
    for key, rs in results.items():
        def med(k: str, rs: list[dict[str, float]] = rs) -> str:
            xs = [r[k] for r in rs]
            return f"{statistics.median(xs):.3g} [{min(xs):.3g}-{max(xs):.3g}]"
        amp = statistics.median((r["sent"] - r["stored"] + r["span_read"]) / need for r in rs)
        cs_per = statistics.median(r["cs"] / max(r["writes"], 1) for r in rs)
        print(f"{key:30} wall {med('wall')} cpu {med('cpu')} cs {med('cs')} "
              f"vol {med('vol')} inv {med('inv')} replies {med('writes')} "
              f"cs/reply {cs_per:.2f} amp {amp:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
