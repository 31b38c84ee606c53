"""Shared fixtures: a real docker engine, a per-test cache dir and a runner for the CLI.

- ``dockerd`` (session): the engine named by ``DOCKER_HOST`` if it answers (scripts/test starts
  a private one and exports it), else a private ``dockerd`` started here in a short temp dir
  under /tmp (own socket, data-root, exec-root, pid file, empty config file, no iptables, no
  bridge; storage driver overlay2, falling back to vfs) and stopped by PID at the end.  Skips
  when that is impossible (not root, no dockerd).  Yields an ``Engine`` with ``.host``
  (``unix://...``) and ``.client`` (a ``docker.DockerClient``).
- ``cache_dir``: an empty directory for ``FUSEBUNDLE_CACHE_DIR``.
- ``fb``: ``fb(*args, env=None, input=None, timeout=120)`` runs ``python -m fusebundle ARGS``
  against that engine and cache and returns the ``subprocess.CompletedProcess`` (text output).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parent.parent

# Fixtures that tests in several folders use (the test images, mounts, a kernel image).
pytest_plugins = ("support.mounts", "support.kernels")

# Variables that would point the docker SDK or the CLI somewhere else than DOCKER_HOST.
DOCKER_ENV_NOISE = ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT",
                    "DOCKER_API_VERSION")
START_TIMEOUT = 30.0


@dataclass
class Engine:
    host: str                       # unix:///tmp/.../docker.sock
    client: docker.DockerClient
    pid: int | None = None          # our private dockerd, None when DOCKER_HOST was used
    driver: str | None = None       # storage driver (overlay2, vfs, ...)


def _connect(host: str, timeout: float = 10) -> docker.DockerClient | None:
    """A client for HOST if an engine answers there, else None."""
    client = None
    try:
        client = docker.DockerClient(base_url=host, version="auto", timeout=timeout)
        if client.ping():
            return client
    except Exception:  # any failure means "no engine there"
        pass
    if client is not None:
        client.close()
    return None


def _umount_under(top: str) -> None:
    """Lazily unmount everything at or below TOP, deepest first."""
    try:
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    mine = [p for p in points if p == top or p.startswith(top + "/")]
    for point in sorted(mine, reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL, check=False)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when pytest dies, even by SIGKILL (no leaked dockerd)."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class PrivateDockerd:
    """A dockerd of our own, all its state in one short temp dir."""

    def __init__(self, dockerd: str) -> None:
        self.dockerd = dockerd
        self.dir = tempfile.mkdtemp(prefix="fbp.", dir="/tmp")
        self.sock = os.path.join(self.dir, "docker.sock")
        self.host = "unix://" + self.sock
        self.proc: subprocess.Popen | None = None
        self.driver: str | None = None
        with open(os.path.join(self.dir, "daemon.json"), "w") as f:
            f.write("{}\n")

    def log(self, driver: str) -> str:
        try:
            return Path(self.dir, f"dockerd-{driver}.log").read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> docker.DockerClient:
        drivers = os.environ.get("FB_STORAGE_DRIVERS", "overlay2 vfs").split()
        for driver in drivers:
            client = self._try(driver)
            if client is not None:
                self.driver = driver
                return client
        tails = "\n".join(f"--- {d}:\n" + "\n".join(self.log(d).splitlines()[-5:])
                          for d in drivers)
        self.stop()
        raise RuntimeError(f"could not start a private dockerd ({' '.join(drivers)}):\n{tails}")

    def _try(self, driver: str) -> docker.DockerClient | None:
        shutil.rmtree(os.path.join(self.dir, "exec"), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        cmd = [self.dockerd, "--config-file", os.path.join(self.dir, "daemon.json"),
               "--iptables=false", "--ip6tables=false", "--bridge=none",
               f"--storage-driver={driver}",
               "--data-root", os.path.join(self.dir, f"data-{driver}"),
               "--exec-root", os.path.join(self.dir, "exec"),
               "-H", self.host, "--pidfile", os.path.join(self.dir, "dockerd.pid")]
        with open(os.path.join(self.dir, f"dockerd-{driver}.log"), "wb") as log:
            # own session: a ^C reaches pytest only, and the fixture stops dockerd cleanly
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            client = _connect(self.host, timeout=5) if os.path.exists(self.sock) else None
            if client is not None:
                with contextlib.suppress(Exception):
                    if client.info().get("Driver") == driver:
                        return client
                client.close()
            time.sleep(0.1)
        _stop(self.proc)
        self.proc = None
        _umount_under(self.dir)
        return None

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None
        _umount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)


class LocalRegistry:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, its storage in `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen | None = None
        self.address = ""

    def start(self) -> LocalRegistry:
        import socket
        import urllib.request

        binary = shutil.which("docker-registry") or shutil.which("registry")
        if binary is None:
            pytest.skip("docker-registry is not installed (scripts/setup installs it)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yml").write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\n")
        with open(self.root / "registry.log", "wb") as log:
            self.proc = subprocess.Popen([binary, "serve", str(self.root / "config.yml")],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://{self.address}/v2/", timeout=2) as r:
                if r.status == 200:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("docker-registry did not start:\n" +
                            (self.root / "registry.log").read_text(errors="replace")[-2000:])
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, 10)
            self.proc = None


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Engine]:
    host = os.environ.get("DOCKER_HOST")
    if host:
        client = _connect(host)
        if client is not None:
            try:
                yield Engine(host=host, client=client, driver=client.info().get("Driver"))
            finally:
                client.close()
            return
    if os.geteuid() != 0:
        pytest.skip("no docker engine: DOCKER_HOST is unset or does not answer, and starting "
                    "a private dockerd needs root")
    exe = shutil.which("dockerd")
    if exe is None:
        pytest.skip("no docker engine: DOCKER_HOST is unset or does not answer, and dockerd "
                    "is not installed (Debian package docker.io; run scripts/setup)")
    private = PrivateDockerd(exe)
    try:
        client = private.start()
        assert private.proc is not None
        try:
            yield Engine(host=private.host, client=client, pid=private.proc.pid,
                         driver=private.driver)
        finally:
            client.close()
    finally:
        private.stop()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    d = tmp_path / "fb-cache"
    d.mkdir()
    return d


FbRunner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def fb(dockerd: Engine, cache_dir: Path) -> FbRunner:
    """Run the CLI as a user would, against the test engine and a fresh cache.

    ``env`` entries override (a value of None removes the variable); ``input`` is text fed to
    stdin (stdin is /dev/null otherwise).
    """

    def run(*args: str | os.PathLike, env: dict[str, str | None] | None = None,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        e = {k: v for k, v in os.environ.items() if k not in DOCKER_ENV_NOISE}
        e["DOCKER_HOST"] = dockerd.host
        e["FUSEBUNDLE_CACHE_DIR"] = str(cache_dir)
        # the package of this checkout, even when it is not pip-installed
        e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH")) if p)
        for key, value in (env or {}).items():
            if value is None:
                e.pop(key, None)
            else:
                e[key] = value
        stdin = {} if input is not None else {"stdin": subprocess.DEVNULL}
        return subprocess.run([sys.executable, "-m", "fusebundle", *map(os.fspath, args)],
                              env=e, input=input, capture_output=True, text=True,
                              timeout=timeout, check=False, **stdin)

    return run
