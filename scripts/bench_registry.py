#!/usr/bin/env python3
"""Pull from a local registry: fusebundle's registry source into its store, against `docker pull`
into a fresh private dockerd and `skopeo copy docker://... oci:DIR` (which does not decompress).

    .venv/bin/python scripts/bench_registry.py [--runs N] [--json FILE] [IMAGE ...]

IMAGEs are names in the engine at $DOCKER_HOST (scripts/bench starts a private one); without
any, a 5-layer image of random files is built there.  Each is pushed to Debian's
docker-registry, started here on 127.0.0.1 (stopped by PID).  Per image it prints the median
seconds of: fusebundle (cold store, 4 layers at once), fusebundle with every layer already
stored (no blob downloaded), docker pull, skopeo copy; and the ratios.  Needs root, dockerd,
docker-registry and skopeo.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"bench_registry: {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_registry(work: Path) -> Iterator[str]:
    """Debian's docker-registry on a free port, its storage under WORK; yields host:port."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        raise SystemExit("bench_registry: docker-registry is not installed (scripts/setup)")
    address = f"127.0.0.1:{free_port()}"
    (work / "registry.yml").write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'registry'}\n"
        f"http:\n  addr: {address}\n")
    log = open(work / "registry.log", "wb")  # noqa: SIM115 (kept open for the child)
    proc = subprocess.Popen([binary, "serve", str(work / "registry.yml")], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://{address}/v2/", timeout=2):
                break
            if proc.poll() is not None:
                raise SystemExit("bench_registry: docker-registry did not start")
            time.sleep(0.1)
        yield address
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def fresh_dockerd(work: Path) -> Iterator[docker.DockerClient]:
    """A private dockerd with an empty data root (its start is not timed)."""
    d = Path(tempfile.mkdtemp(prefix="fbr.", dir="/tmp"))  # short: the socket path is limited
    (d / "daemon.json").write_text("{}\n")
    sock = d / "docker.sock"
    driver = os.environ.get("FB_DOCKERD_DRIVER", "overlay2")
    cmd = [shutil.which("dockerd") or "dockerd", "--config-file", str(d / "daemon.json"),
           "--iptables=false", "--ip6tables=false", "--bridge=none",
           f"--storage-driver={driver}", "--data-root", str(d / "data"),
           "--exec-root", str(d / "exec"), "-H", f"unix://{sock}",
           "--pidfile", str(d / "dockerd.pid")]
    with open(d / "dockerd.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    client = None
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise SystemExit(f"bench_registry: dockerd did not start (see {d}/dockerd.log)")
            if sock.exists():
                with contextlib.suppress(Exception):
                    client = docker.DockerClient(base_url=f"unix://{sock}", timeout=600)
                    client.ping()
                    break
            time.sleep(0.1)
        assert client is not None
        yield client
    finally:
        if client is not None:
            client.close()
        stop(proc)
        with open("/proc/mounts") as f:
            mine = [line.split()[1] for line in f if line.split()[1].startswith(str(d))]
        for point in sorted(mine, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


def build_five_layers(client: docker.DockerClient, work: Path, mib: int) -> str:
    """An image of 5 layers of random files (MIB MiB each) on an empty base; its name."""
    ctx = work / "ctx5"
    ctx.mkdir(exist_ok=True)
    lines = ["FROM scratch"]
    for i in range(5):
        (ctx / f"l{i}").mkdir(exist_ok=True)
        for j in range(8):
            (ctx / f"l{i}" / f"f{j}").write_bytes(os.urandom(mib * (1 << 20) // 8))
        lines.append(f"COPY l{i} /data/l{i}")
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    client.images.build(path=str(ctx), tag="fbbench-five:1", rm=True)
    return "fbbench-five:1"


def push(client: docker.DockerClient, name: str, registry: str) -> str:
    repo = f"{registry}/bench/{name.split('/')[-1].split(':')[0]}"
    client.images.get(name).tag(repo, "1")
    for line in client.images.push(repo, "1", stream=True, decode=True):
        if "error" in line:
            raise SystemExit(f"bench_registry: push {name}: {line['error']}")
    return f"{repo}:1"


def timed(fn: Callable[..., object], *args: object) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def fusebundle_pull(ref: str, store_dir: Path) -> int:
    """`fusebundle pull --from registry` of REF into the store at STORE_DIR, as a user runs
    it; the number of layers it fetched (read from its summary line)."""
    cfg = store_dir.parent / f"{store_dir.name}.yml"
    cfg.write_text(f"onboot:\n  - name: x\n    image: {ref}\n")
    env = dict(os.environ, FUSEBUNDLE_CACHE_DIR=str(store_dir),
               DOCKER_HOST=f"unix://{store_dir.parent}/no-engine.sock")
    done = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "fusebundle", "pull", "-q",
                           "--from", "registry", str(cfg)], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fusebundle pull {ref}: {done.stderr.strip()}")
    last = done.stdout.strip().splitlines()[-1]  # pulled 1 images: K layers fetched (...)
    return int(last.split(":", 1)[1].split()[0])


def bench(ref: str, runs: int, work: Path) -> dict[str, float]:
    cold, warm, dpull, sk = [], [], [], []
    repo, tag = ref.rsplit(":", 1)
    for n in range(runs):
        store_dir = work / f"store{n}"
        cold.append(timed(fusebundle_pull, ref, store_dir)[0])
        seconds, downloads = timed(fusebundle_pull, ref, store_dir)
        assert downloads == 0, f"a pull into a full store downloaded {downloads} blobs"
        warm.append(seconds)
        shutil.rmtree(store_dir)
        with fresh_dockerd(work) as client:
            dpull.append(timed(client.images.pull, repo, tag)[0])
        out = work / f"oci{n}"
        sk.append(timed(subprocess.run, ["skopeo", "--insecure-policy", "copy", "-q",
                                         "--src-tls-verify=false", f"docker://{ref}",
                                         f"oci:{out}:x"])[0])
        shutil.rmtree(out)
    med = {}
    for k, v in (("fusebundle", cold), ("fusebundle_stored", warm), ("docker_pull", dpull),
                 ("skopeo", sk)):
        med[k], med[k + "_lo"], med[k + "_hi"] = statistics.median(v), min(v), max(v)
    med["vs_docker"] = med["fusebundle"] / med["docker_pull"]
    med["vs_skopeo"] = med["fusebundle"] / med["skopeo"]
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="*",
                    help="engine image names; 5-layers (the default) builds a 5-layer image")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layer-mib", type=int, default=16, help="per layer of the 5-layer image")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    if not os.environ.get("DOCKER_HOST"):
        say("DOCKER_HOST is unset: using the default engine for the images to push")
    source = docker.from_env(timeout=600)
    work = Path(tempfile.mkdtemp(prefix="fbreg-bench."))
    results: dict[str, dict[str, float]] = {}
    try:
        images = [build_five_layers(source, work, args.layer_mib) if name == "5-layers"
                  else name for name in args.images or ["5-layers"]]
        with local_registry(work) as registry:
            for name in images:
                ref = push(source, name, registry)
                say(f"{name}: pushed as {ref}; {args.runs} runs")
                results[name] = bench(ref, args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'image':32} {'fusebundle':>10} {'stored':>8} {'docker':>8} {'skopeo':>8} "
          f"{'/docker':>8} {'/skopeo':>8}")
    for name, r in results.items():
        print(f"{name:32} {r['fusebundle']:10.2f} {r['fusebundle_stored']:8.3f} "
              f"{r['docker_pull']:8.2f} {r['skopeo']:8.2f} {r['vs_docker']:8.2f} "
              f"{r['vs_skopeo']:8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
