"""Helpers of the fault tests: images in an OCI layout, the CLI as a real process, a process
stopped at a named stage (FUSEBUNDLE_TEST_STOP, see fusebundle/testhook.py), and what a store
or an output directory holds afterwards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from fusebundle.store import locks
from support.fakeregistry import layer_tar
from support.imagetools import write_oci_layout

REPO = Path(__file__).resolve().parents[2]

# The base layer holds 3 MiB that gzip makes small (too big for a 2 MiB tmpfs once unpacked)
# and 2.5 MB it cannot: half the blob is more than the 1 MiB the store reads at once.
BIG = b"".join(b"line %07d of the big file\n" % i for i in range(120_000))
NOISE = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(80_000))
BASE = {"base/big.txt": BIG, "base/noise": NOISE, "base/hello.txt": b"hello, base\n"}
ONE = {f"one/f{i}.txt": b"file %d of image one\n" % i * 50 for i in range(8)}
TWO = {"two/only.txt": b"only in image two\n"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Images:
    """Two images in one OCI layout sharing their base layer; configs naming one or both."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout = root / "layout"
        self.tars = {"base": layer_tar(BASE), "one": layer_tar(ONE), "two": layer_tar(TWO)}
        write_oci_layout(self.layout, "fbtest/one:1", [self.tars["base"], self.tars["one"]],
                         {"Cmd": ["/bin/sh"]})
        write_oci_layout(self.layout, "fbtest/two:1", [self.tars["base"], self.tars["two"]],
                         {"Cmd": ["/bin/sh"]})
        self.configs = {}
        for name, images in (("one", ["one"]), ("two", ["two"]), ("both", ["one", "two"])):
            p = root / f"{name}.yml"
            p.write_text("onboot:\n" + "".join(f"  - name: {i}\n    image: fbtest/{i}:1\n"
                                               for i in images))
            self.configs[name] = p

    def diff_id(self, layer: str) -> str:
        return sha(self.tars[layer])

    def layer_path(self, cache: Path, layer: str) -> Path:
        return cache / "layers" / "sha256" / (self.diff_id(layer)[7:] + ".tar")

    def config_hex(self, ref: str) -> str:
        """The hex of the config digest of `ref` in the layout (names its merged index)."""
        import json

        index = json.loads((self.layout / "index.json").read_text())
        for m in index["manifests"]:
            if m["annotations"]["org.opencontainers.image.ref.name"] == ref:
                blob = self.layout / "blobs" / "sha256" / m["digest"][7:]
                return json.loads(blob.read_text())["config"]["digest"][7:]
        raise AssertionError(ref)

    def blob_path(self, layer: str) -> Path:
        """The gzip blob of a layer in the layout (found by what it decompresses to)."""
        import gzip

        for p in (self.layout / "blobs" / "sha256").iterdir():
            data = p.read_bytes()
            if data[:2] == b"\x1f\x8b" and sha(gzip.decompress(data)) == self.diff_id(layer):
                return p
        raise AssertionError(f"no blob for {layer}")


def env_for(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DOCKER_", "FUSEBUNDLE_"))}
    env.update(DOCKER_HOST=f"unix://{cache}.no-engine.sock", FUSEBUNDLE_CACHE_DIR=str(cache),
               PYTHONPATH=str(REPO), **extra)
    return env


def cli(*args: str | os.PathLike, cache: Path, timeout: float = 120,
        **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fusebundle", *map(os.fspath, args)],
                          env=env_for(cache, **extra), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def spawn(*args: str | os.PathLike, cache: Path, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fusebundle", *map(os.fspath, args)],
                            env=env_for(cache, **extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def wait_for(pred: Callable[[], object], what: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stopped(pid: int) -> bool:
    """True if the process stopped itself (state T in /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def kill9(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def temps(*dirs: Path) -> list[str]:
    """Every dot-file (a temporary name) under the directories."""
    out = []
    for d in dirs:
        for root, _, files in os.walk(d):
            out += [os.path.join(root, n) for n in files if n.startswith(".")]
    return sorted(out)


def locks_free(cache: Path) -> bool:
    """True if no process holds any lock of the store (each is taken exclusively, at once)."""
    d = cache / "locks"
    for n in os.listdir(d) if d.is_dir() else []:
        fd = locks.take(str(d / n), wait=False)
        if fd is None:
            return False
        locks.release(fd)
    return True


def one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


class StallingRegistry:
    """The fake registry serving the layout's images, but one blob only half: it sends the
    headers and the first half, then holds the connection until `release` is set."""

    def __init__(self, images: Images, stall_digest: str) -> None:
        import json
        import threading
        from http.server import ThreadingHTTPServer

        from support.fakeregistry import OCI_MANIFEST, FakeRegistry, Image, _handler_for

        self.reg = reg = FakeRegistry()
        blobs = images.layout / "blobs" / "sha256"
        for m in json.loads((images.layout / "index.json").read_text())["manifests"]:
            manifest = (blobs / m["digest"][7:]).read_bytes()
            doc = json.loads(manifest)
            config = (blobs / doc["config"]["digest"][7:]).read_bytes()
            layers = [(blobs / x["digest"][7:]).read_bytes() for x in doc["layers"]]
            repo, _, tag = m["annotations"]["org.opencontainers.image.ref.name"].rpartition(":")
            reg.put(repo, tag, Image(manifest, config, layers,
                                     json.loads(config)["rootfs"]["diff_ids"], OCI_MANIFEST))
        self.release = threading.Event()
        self.stalled = threading.Event()
        release, stalled = self.release, self.stalled

        class Handler(_handler_for(reg)):  # type: ignore[misc]
            def _blob(self, digest: str, action: str) -> None:
                if digest != stall_digest or release.is_set():
                    return super()._blob(digest, action)
                data = reg.blobs[digest]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Content-Digest", digest)
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                stalled.set()
                release.wait(60)
                self.close_connection = True

        reg.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        reg.server.daemon_threads = True
        threading.Thread(target=reg.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.address = reg.address

    def config(self, images: Images, name: str) -> Path:
        """The config `name` with its images named at this registry."""
        p = images.root / f"{name}-{self.address.replace(':', '-')}.yml"
        p.write_text(images.configs[name].read_text().replace("image: ", f"image: {self.address}/"))
        return p

    def stop(self) -> None:
        self.release.set()
        self.reg.stop()


def tar_member(name: str, data: bytes = b"", **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti, data


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data))
    return out.getvalue()


def save_archive(path: Path, layers: list[bytes], tag: str) -> None:
    """A docker save archive as the engine writes one: manifest.json, config, layer.tar."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [sha(x) for x in layers]}}).encode()
    cname = sha(config)[7:] + ".json"
    members = [tar_member(cname, config)]
    names = []
    for i, data in enumerate(layers):
        names.append(f"l{i}/layer.tar")
        members += [tar_member(f"l{i}/", type=tarfile.DIRTYPE, mode=0o755),
                    tar_member(names[-1], data)]
    manifest = json.dumps([{"Config": cname, "RepoTags": [tag], "Layers": names}]).encode()
    members.append(tar_member("manifest.json", manifest))
    path.write_bytes(tar_bytes(members, tarfile.USTAR_FORMAT))
