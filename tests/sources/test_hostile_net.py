"""Hostile registries on 127.0.0.1: silent, dripping, sending endless or huge token answers.

Each case runs the real command (`fusebundle pull --from registry`) in its own process, with
its address space capped (a read held whole would hit the cap and turn into an internal
error) and its peak RSS measured, and asserts one line, the exit status, a bounded time (a
generous bound against a hang: the point is "seconds, not minutes") and an untouched store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fakeregistry import FakeRegistry, Image, SilentServer, make_image, sha256
from support.faulttools import env_for, locks_free, one_line, temps
from support.measured import Measured, run_measured

# Python, httpx and the store's threads fit in well under this; a 256 MiB token held whole
# (1.5 GiB at its peak, as the issue measured) does not.
ADDRESS_SPACE = 1 << 30
MAX_RSS = 200 << 20
FAST = "0.1"  # FUSEBUNDLE_TEST_NET_SCALE for the rate window: 30 s -> 3 s


def run_capped(args: list[str], cache: Path, timeout: int = 120, **extra: str) -> Measured:
    """The CLI as a process of its own: exit status, stderr, wall time and peak RSS."""
    return run_measured(args, env_for(cache, **extra), memory=ADDRESS_SPACE, timeout=timeout,
                        scratch=cache.parent)


def pull(reg_address: str, tmp_path: Path, **extra: str) -> tuple[Measured, Path]:
    cfg = tmp_path / "app.yml"
    cfg.write_text(f"onboot:\n  - name: app\n    image: {reg_address}/fb/app:1\n")
    cache = tmp_path / "cache"
    return run_capped(["pull", "-q", "--from", "registry", str(cfg)], cache, **extra), cache


def assert_store_untouched(cache: Path) -> None:
    """No layer, no temporary, no lock held, and `cache ls` still answers."""
    layers = cache / "layers" / "sha256"
    assert not (layers.is_dir() and any(layers.iterdir())), list(layers.iterdir())
    assert temps(cache) == []
    assert locks_free(cache)
    done = subprocess.run([sys.executable, "-m", "fusebundle", "cache", "ls"],
                          env=env_for(cache), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def image() -> Image:
    return make_image([{"etc/hello": os.urandom(4096)}])


@pytest.fixture
def fake(image: Image) -> Iterator[FakeRegistry]:
    reg = FakeRegistry().start()
    reg.put("fb/app", "1", image)
    yield reg
    reg.stop()


def test_silent_registry_is_one_line_within_the_ping_bound(tmp_path: Path) -> None:
    silent = SilentServer()
    try:
        # The user-facing bound (no test knob): 15 s over HTTPS then HTTP, as docker's ping.
        run, cache = pull(silent.address, tmp_path)
    finally:
        silent.stop()
    assert run.returncode == 1, run.stderr
    line = one_line(run.stderr)
    assert silent.address in line and "no answer within 15 s" in line, line
    assert silent.accepted >= 2  # it was asked, on HTTPS and on HTTP
    assert run.seconds < 40, run.seconds  # today: 323 s
    assert run.rss < MAX_RSS, run.rss
    assert_store_untouched(cache)


def test_dripping_blob_fails_by_its_rate(fake: FakeRegistry, image: Image,
                                        tmp_path: Path) -> None:
    layer = sha256(image.layers[0])
    path = f"/v2/fb/app/blobs/{layer}"
    fake.drip_every = 0.1  # ten bytes a second, far below 1 KiB/s
    fake.misbehave(path, *["drip"] * 10)
    run, cache = pull(fake.address, tmp_path, FUSEBUNDLE_TEST_NET_SCALE=FAST)
    assert run.returncode == 1, run.stderr
    line = one_line(run.stderr)
    assert f"blob {layer}" in line and "too slow" in line and "below 1024 bytes/s" in line
    assert len(fake.requests(lambda s: s.path == path)) == 1  # a drip is not resumed
    assert run.seconds < 30, run.seconds  # a 3 s window; unbounded before
    assert run.rss < MAX_RSS, run.rss
    assert_store_untouched(cache)


def test_dripping_manifest_fails_by_its_rate(fake: FakeRegistry, tmp_path: Path) -> None:
    # A manifest is read like a blob: the same minimum rate holds.
    fake.drip_every = 0.1
    fake.misbehave("/v2/fb/app/manifests/1", "drip")
    fake.manifests[("fb/app", "1")] = (fake.manifests[("fb/app", "1")][0], b" " * 4096)
    run, cache = pull(fake.address, tmp_path, FUSEBUNDLE_TEST_NET_SCALE=FAST)
    assert run.returncode == 1, run.stderr
    assert "too slow" in one_line(run.stderr)
    assert run.seconds < 30, run.seconds
    assert run.rss < MAX_RSS, run.rss
    assert_store_untouched(cache)


@pytest.mark.parametrize("fault", ["huge", "endless"])
def test_oversized_token_answer_is_one_line_in_bounded_memory(fake: FakeRegistry,
                                                              tmp_path: Path,
                                                              fault: str) -> None:
    fake.auth, fake.token_fault = "bearer", fault
    run, cache = pull(fake.address, tmp_path)
    assert run.returncode == 1, run.stderr
    line = one_line(run.stderr)
    assert f"token service {fake.address}" in line and "bigger than 1048576 bytes" in line
    assert run.rss < MAX_RSS, run.rss  # 1.5 GiB before, for 256 MiB
    assert run.seconds < 60, run.seconds
    assert_store_untouched(cache)


def test_silent_token_service_is_one_line(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth, fake.token_fault = "bearer", "silent"
    run, cache = pull(fake.address, tmp_path, FUSEBUNDLE_TEST_NET_SCALE=FAST)
    assert run.returncode == 1, run.stderr
    line = one_line(run.stderr)
    assert f"token service {fake.address}" in line, line
    assert run.seconds < 30, run.seconds
    assert_store_untouched(cache)
