"""The benchmark harness's own logic: spreads, interleaving, importtime parsing, scale inputs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("fbbench_script", REPO / "scripts" / "bench.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def test_spread_keeps_bounds_and_run_count() -> None:
    s = bench.Spread.of([3.0, 1.0, 2.0])
    assert (float(s), s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    rate = 6.0 / s  # a rate from times: the slowest run gives the lowest rate
    assert (float(rate), rate.lo, rate.hi, rate.n) == (3.0, 2.0, 6.0, 3)
    plus = s + 0.5
    assert (float(plus), plus.lo, plus.hi) == (2.5, 1.5, 3.5)
    assert s.shown() == "2.000 (1.000–3.000)"
    assert bench.Spread.of([4.25]).shown() == "4.250 (1 run)"


def _bench(tmp_path: Path, runs: int):
    return bench.Bench(work=tmp_path, runs=runs, small_files=0, large_size=0, host="",
                       ratarmount="")


def test_compare_interleaves_peers_and_runs_a_slow_one_once(tmp_path: Path) -> None:
    order: list[str] = []

    def peer(name: str, seconds: float, value: float):
        def one() -> dict[str, float]:
            order.append(name)
            time.sleep(seconds)
            return {"m": value}
        return one

    b = _bench(tmp_path, runs=3)
    b.compare({"a": peer("a", 0, 1.0), "b": peer("b", 0, 2.0)})
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert b.results["m"]["a"].n == 3 and float(b.results["m"]["b"]) == 2.0

    order.clear()
    b.compare({"slow": peer("slow", 0.2, 5.0), "fast": peer("fast", 0, 1.0)}, slow=0.1)
    assert order == ["slow", "fast", "fast", "fast"]
    assert b.results["m"]["slow"].shown() == "5.000 (1 run)"


SAMPLE = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |       outcome
import time:       200 |        300 |     trio
import time:        50 |         50 |     cffi
import time:       400 |        750 |   pyfuse3
import time:        30 |         30 |   fusebundle.errors
import time:        70 |        850 | fusebundle.mountcmd
import time:        10 |         10 | json
"""


def test_importtime_subtrees_and_our_modules() -> None:
    lines = bench.parse_importtime(SAMPLE)
    assert [(i.depth, i.name) for i in lines][:4] == [
        (3, "outcome"), (2, "trio"), (2, "cffi"), (1, "pyfuse3")]
    heavy = bench.imports_under(lines, {"pyfuse3", "trio"})
    assert {i.name for i in heavy} == {"outcome", "trio", "cffi", "pyfuse3"}
    assert bench.ms(heavy) == 0.75
    assert bench.ms(i for i in lines if i.name.startswith("fusebundle")) == 0.1
    assert bench.ms(lines) == 0.86


def test_importtime_of_real_commands() -> None:
    """Parsed from real -X importtime output: pyfuse3 pulls in trio; pack --help neither."""
    def traced(*argv: str) -> list:
        p = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True,
                           text=True, check=True, cwd=REPO)
        return bench.parse_importtime(p.stderr)

    fuse = bench.imports_under(traced("-c", "import pyfuse3"), {"pyfuse3"})
    assert "trio" in {i.name for i in fuse}
    pack = traced("-m", "fusebundle", "pack", "--help")
    assert "fusebundle.cli" in {i.name for i in pack}
    assert bench.imports_under(pack, {"pyfuse3", "trio"}) == []


def test_targets_at_scale_are_their_own() -> None:
    row = {"fusebundle": 0.13, "ratarmount": 0.2}
    assert bench.met("remount, index saved (s)", row) == "yes"  # <= 0.7x
    assert bench.met("1M: remount, index saved (s)", row) == "NO"  # <= 0.5x at scale
    assert bench.met("1M: tar -cf walk (s)", {"fusebundle": 5.0, "ratarmount": 60.0}) == "yes"
    assert bench.met("1M: tar -cf walk (s)", {"fusebundle": 7.0, "ratarmount": 60.0}) == "NO"
    assert bench.met("1M: tar -cf walk (s)", {"fusebundle": 7.0}) == "?"
    assert bench.ratio("10k: find, first walk of a mount (s)",
                       {"fusebundle": 1.0, "ratarmount": 4.0}) == "0.25"
    assert bench.scale_label(1_000_000) == "1M" and bench.scale_label(100_000) == "100k"
    assert bench.scale_label(12_345) == "12345"


def test_scale_input_is_made_once_and_served_by_fusebundle(tmp_path: Path) -> None:
    where = tmp_path / "scale"
    inp = bench.scale_input(300, where)
    with tarfile.open(inp.tar) as t:
        members = t.getmembers()
    assert inp.entries == len(members) + 1  # and tree/, which the tar leaves implied
    assert sum(m.isfile() for m in members) == 300
    digest = hashlib.sha256(inp.tar.read_bytes()).hexdigest()
    blob = inp.layout / "blobs" / "sha256" / digest
    assert blob.stat().st_ino == inp.tar.stat().st_ino  # no copy

    made = inp.tar.stat().st_mtime_ns
    again = bench.scale_input(300, where)
    assert again.tar.stat().st_mtime_ns == made  # reused, not written again
    os.utime(inp.tar, ns=(made - 10**9, made - 10**9))  # the stamp no longer matches
    bench.scale_input(300, where)
    assert json.loads((where / "small-300.json").read_text())["mtime_ns"] != made - 10**9

    # fusebundle reads the layout, checks the blob against its digest and the diff_id
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"onboot:\n  - name: small\n    image: {inp.ref}\n")
    store = tmp_path / "store"
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock",
               FUSEBUNDLE_CACHE_DIR=str(store))
    subprocess.run([sys.executable, "-m", "fusebundle", "pull", "-q", "--from",
                    f"oci:{inp.layout}", str(cfg)], env=env, check=True, cwd=REPO,
                   capture_output=True)
    assert (store / "layers" / "sha256" / f"{digest}.tar").stat().st_size == \
        inp.tar.stat().st_size
    names = {p.name for p in bench.index_files(store)}
    assert f"{digest}.tar.idx" in names and not any(n.endswith(".tar") for n in names)


@pytest.mark.parametrize("files", [0, 1])
def test_write_small_counts_tiny_trees(tmp_path: Path, files: int) -> None:
    n = bench.write_small(tmp_path / "t.tar", files)
    with tarfile.open(tmp_path / "t.tar") as t:
        assert n == len(t.getmembers()) + 1


def test_the_cpio_row_is_held_to_pack_plus_gzip() -> None:
    metric = "pack --format cpio, both images (s)"
    assert bench.met(metric, {"fusebundle": 60.0, "pack + gzip -1": 50.0}) == "yes"
    assert bench.met(metric, {"fusebundle": 61.0, "pack + gzip -1": 50.0}) == "NO"
    assert bench.ratio(metric, {"fusebundle": 55.0, "pack + gzip -1": 50.0}) == "1.10"
    table = bench.report({metric: {"fusebundle": 55.0, "pack + gzip -1": 50.0}})
    assert "| pack + gzip -1 |" in table.splitlines()[0]


def test_real_rows_derive_load_and_preload_ratios_and_are_held_to_their_goals() -> None:
    real = bench.bench_real
    s = bench.Spread.of
    results = {
        "real: tar -cf (s), idle": {"fusebundle": s([2.0]), "fusebundle (no preload)": s([1.0]),
                                    "limit (disk)": s([1.0])},
        "real: tar -cf (s), 1 busy loop": {"fusebundle": s([4.0]),
                                           "fusebundle (no preload)": s([4.0]),
                                           "limit (disk)": s([1.0])},
        "real: tar -cf (s), 2 busy loops": {"fusebundle": s([2.5]),
                                            "fusebundle (no preload)": s([5.0]),
                                            "limit (disk)": s([1.0])},
    }
    got = real.derived(results)
    assert got["real: tar -cf, 1 busy loop / idle"]["fusebundle"] == 2.0
    assert got["real: tar -cf, 2 busy loops / idle"]["fusebundle"] == 1.25
    # the worst state decides: preload on took twice as long as off while idle
    assert got["real: tar -cf, preload on / off, worst state"]["fusebundle"] == 2.0
    results.update(got)
    assert bench.met("real: tar -cf (s), idle", results["real: tar -cf (s), idle"]) == "yes"
    assert bench.met("real: tar -cf (s), 1 busy loop",
                     results["real: tar -cf (s), 1 busy loop"]) == "NO"  # 4x the disk
    assert bench.met("real: tar -cf, 1 busy loop / idle",
                     results["real: tar -cf, 1 busy loop / idle"]) == "NO"
    assert bench.met("real: tar -cf, 2 busy loops / idle",
                     results["real: tar -cf, 2 busy loops / idle"]) == "yes"
    assert bench.ratio("real: tar -cf (s), idle", results["real: tar -cf (s), idle"]) == "2.00"
    assert "fusebundle (no preload)" in bench.report(results).splitlines()[0]


def test_the_no_preload_peer_finds_the_preload_constant() -> None:
    # The A/B peer is the real CLI with PRELOAD_THREADS set to 0 wherever fusebundle.fs keeps
    # it; if the constant moved away, the wrapper must fail rather than measure preload on.
    p = subprocess.run([str(REPO / ".venv/bin/python"), "-c", bench.bench_real.NO_PRELOAD,
                        "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("fusebundle ")
    broken = bench.bench_real.NO_PRELOAD.replace('"PRELOAD_THREADS")', '"NO_SUCH_NAME")')
    p = subprocess.run([str(REPO / ".venv/bin/python"), "-c", broken, "--version"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and "PRELOAD_THREADS not found" in p.stderr


def test_image_rows_are_held_to_issue_19s_goals() -> None:
    image = bench.bench_image
    s = bench.Spread.of
    cat = image.M_CAT
    assert bench.met(cat, {"fusebundle": s([0.2]), "docker": s([2.5])}) == "yes"
    assert bench.met(cat, {"fusebundle": s([0.3]), "docker": s([5.0])}) == "NO"  # > 0.25 s
    assert bench.met(cat, {"fusebundle": s([0.2]), "docker": s([1.0])}) == "NO"  # > 1/10
    assert bench.met(cat, {"fusebundle": s([0.2])}) == "?"  # docker did not run
    assert bench.ratio(cat, {"fusebundle": 0.2, "docker": 2.0}) == "0.10"
    for cold in (image.M_CAT_COLD, image.M_LS_COLD):
        assert bench.met(cold, {"fusebundle": 3.0, "umoci": 9.0}) == "yes"
        assert bench.met(cold, {"fusebundle": 3.1, "umoci": 9.0}) == "NO"
    assert bench.met(image.M_LS_JSON, {"fusebundle": 1.5}) == "yes"
    assert bench.met(image.M_LS_JSON, {"fusebundle": 1.6}) == "NO"
    assert bench.met(image.M_DIFF, {"fusebundle": 1.01}) == "NO"
    assert bench.met(image.M_EXPORT, {"fusebundle": 2.0, "tar -cf": 2.0}) == "yes"
    assert bench.met(image.M_EXPORT, {"fusebundle": 2.1, "tar -cf": 2.0}) == "NO"
    # the CPU rows are shown beside the wall-clock ones, with their ratio and no goal
    cpu = image.cpu_metric(image.M_EXPORT)
    assert cpu == "image export, CPU (s)"
    assert bench.met(cpu, {"fusebundle": 9.0, "tar -cf": 1.0}) == ""
    assert bench.ratio(cpu, {"fusebundle": 3.0, "tar -cf": 2.0}) == "1.50"
    assert "| umoci |" in bench.report({image.M_CAT_COLD: {"fusebundle": 1.0, "umoci": 4.0}})


def test_image_rows_top_layer_changes_the_file_cat_reads(tmp_path: Path) -> None:
    # diff's second image differs from the first in exactly the file the cat rows read
    image = bench.bench_image
    (tmp_path / "top.tar").write_bytes(image.top_layer())
    bench.write_small(tmp_path / "base.tar", 3)
    with tarfile.open(tmp_path / "top.tar") as top, tarfile.open(tmp_path / "base.tar") as base:
        names = top.getnames()
        assert names == [image.CAT_PATH.lstrip("/")]
        assert names[0] in base.getnames()
        assert top.extractfile(names[0]).read() != base.extractfile(names[0]).read()


def test_cpu_time_counts_the_command_and_its_children(tmp_path: Path) -> None:
    # A grandchild (python under bash) does some work and writes down its own CPU time: the
    # measured CPU includes it. A sleep adds wall time and no CPU.
    own = tmp_path / "own"
    work = ("import resource, sys; sum(range(10**7)); r = resource.getrusage(resource.RUSAGE_SELF);"
            " open(sys.argv[1], 'w').write(str(r.ru_utime + r.ru_stime))")
    script = f"sleep 0.5; {sys.executable} -c \"{work}\" {own}"
    wall, cpu = bench.bench_image.timed(bench, ["bash", "-c", script])
    assert cpu >= float(own.read_text()) > 0
    assert wall >= 0.5 + cpu * 0.5  # the sleep is in the wall time, not in the CPU time
