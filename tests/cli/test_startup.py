"""The mount's start-up imports only what a mount of stored images uses (issue 22): the
transports are imported when a reference needs one (`sources.TRANSPORTS`), and another
command's code (pack's writers, the image and cache commands) only by that command.

That a registry, archive, layout or engine reference still works through the table is what
tests/sources, tests/images and tests/cli/test_image.py exercise; here only what is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.imagetools import (
    DEMO_CONFIG,
    RootfsBuilder,
    demo_layers,
    import_image,
    write_oci_layout,
)
from support.mounts import HAVE_FUSE

REPO = Path(__file__).resolve().parents[2]
DEMO_REF = "docker.io/fusebundle-demo/hello:1"

# What a mount of images already in the store never uses: every layer transport, the
# registry's auth, mirrors and HTTP client, the Docker SDK, the other commands' modules, and
# the ingest's decoders, scanner and thread pool.
NOT_ON_THE_MOUNT_PATH = {
    "fusebundle.sources.registry", "fusebundle.sources.regauth", "fusebundle.sources.regnet",
    "fusebundle.sources.netbounds", "fusebundle.sources.archive", "fusebundle.sources.oci",
    "fusebundle.sources.manifest", "httpx", "http.client", "docker", "requests",
    "fusebundle.pack", "fusebundle.pack.boot", "fusebundle.pack.tarball",
    "fusebundle.cli.image", "fusebundle.cli.cache",
    "fusebundle.store.stream", "fusebundle.tar.feed", "concurrent.futures",
}

# Generous against a hang only: a mount of the demo image answers in well under a second.
READY_TIMEOUT = 60.0


def _env(tmp_path: Path) -> dict[str, str]:
    # No engine there: a mount given --from must not need one.
    return dict(os.environ, PYTHONPATH=str(REPO), FUSEBUNDLE_CACHE_DIR=str(tmp_path / "cache"),
                DOCKER_HOST=f"unix://{tmp_path}/none.sock")


def _fusebundle(args: list[str], loaded: Path) -> list[str]:
    """A fusebundle command line that writes the names of the modules it had loaded, at its
    exit, to `loaded` (from sys.modules: -X importtime does not list importlib's imports)."""
    code = ("import atexit, sys\n"
            "from fusebundle.cli import main\n"
            f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(' '.join(sys.modules)))\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, *args]


def test_the_mount_commands_imports_load_no_transport_nor_other_commands(tmp_path: Path) -> None:
    code = ("import sys, fusebundle.cli.commands as c\n"
            "args = c.parse(['mount', '--from', 'oci:x', 'x.yml', 'mnt'])\n"
            "import fusebundle.fs.serve\n"
            "print(args.run.__module__)\n"
            "print(*sorted(sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(tmp_path), cwd=tmp_path, check=True)
    runner, names = r.stdout.splitlines()
    loaded = set(names.split())
    assert runner == "fusebundle.cli.mount"
    assert {"fusebundle.fs.serve", "fusebundle.images.resolver", "fusebundle.sources"} <= loaded
    assert sorted(loaded & NOT_ON_THE_MOUNT_PATH) == []


def test_another_command_still_gets_its_module(tmp_path: Path) -> None:
    # The other half of the dispatch: the command given loads its own code, and only it.
    code = ("import sys, fusebundle.cli.commands as c\n"
            "args = c.parse(['image', 'ls', 'oci:x'])\n"
            "print(args.run.__module__, 'fusebundle.cli.cache' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=_env(tmp_path), cwd=tmp_path, check=True)
    assert r.stdout.split() == ["fusebundle.cli.image", "False"]


def _served(args: list[str], mnt: Path, env: dict[str, str], loaded: Path) -> set[str]:
    """Mount `args` (the config, MNT last) in the foreground, check that the first bundle's
    image is served, unmount; the modules the server had loaded."""
    server = subprocess.Popen(_fusebundle(["mount", "-f", "-q", *args], loaded),
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                listed = os.listdir(mnt / "containers/onboot/000-hello/lower/etc")
                break
            except OSError:
                assert time.monotonic() < deadline, "the mount did not answer"
                time.sleep(0.01)
        motd = (mnt / "containers/onboot/000-hello/lower/etc/motd").read_bytes()
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
        _, said = server.communicate(timeout=READY_TIMEOUT)
    assert server.returncode == 0, said
    assert "motd" in listed
    assert motd  # served from the stored layers or the export
    modules = set(loaded.read_text().split())
    assert "fusebundle.fs.serve" in modules
    return modules


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_a_remount_of_stored_images_loads_no_transport(tmp_path: Path) -> None:
    layout, mnt = tmp_path / "layout", tmp_path / "mnt"
    write_oci_layout(layout, DEMO_REF, demo_layers(), DEMO_CONFIG)
    mnt.mkdir()
    env = _env(tmp_path)
    cfg = str(REPO / "examples/demo.yml")
    loaded = tmp_path / "modules"
    subprocess.run(_fusebundle(["pull", "-q", "--from", f"oci:{layout}", cfg], loaded),
                   capture_output=True, text=True, env=env, check=True)
    # The control: the first run reads the layout, so its transport was loaded then.
    assert "fusebundle.sources.oci" in loaded.read_text().split()

    modules = _served(["--from", f"oci:{layout}", cfg, str(mnt)], mnt, env, loaded)
    assert sorted(modules & NOT_ON_THE_MOUNT_PATH) == []


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_a_remount_of_engine_exports_asks_the_engine_without_its_sdk(dockerd, tmp_path: Path
                                                                     ) -> None:
    # `scripts/bench --part mount`'s remount: engine images, exported before, default order.
    # The engine is still asked which image each tag names (a tag may have moved), straight
    # over its socket; nothing else is loaded for it.
    tag = "fbtest/startup-engine:1"
    RootfsBuilder().dir("etc").file("etc/motd", "engine\n").write(tmp_path / "r.tar")
    import_image(dockerd.client, tmp_path / "r.tar", tag, ['CMD ["/bin/true"]'])
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cfg = tmp_path / "engine.yml"
    cfg.write_text(f"onboot:\n  - name: hello\n    image: {tag}\n")
    env = dict(_env(tmp_path), DOCKER_HOST=dockerd.host)
    loaded = tmp_path / "modules"
    subprocess.run(_fusebundle(["pull", "-q", str(cfg)], loaded), capture_output=True,
                   text=True, env=env, check=True)
    # The control: the first run exports through the SDK.
    assert "docker" in loaded.read_text().split()

    modules = _served([str(cfg), str(mnt)], mnt, env, loaded)
    assert "fusebundle.sources.engineapi" in modules
    assert sorted(modules & NOT_ON_THE_MOUNT_PATH) == []
