"""Engine-free sources end to end: `pack --from docker-archive:` and `--from oci:` give the tar
that `pack` from the engine gives, byte for byte, with that engine stopped.

One private dockerd of this module's own holds the conformance images, the mount tests' odd
images (xattrs, devices, FIFOs, hard links, non-UTF-8 and long names) and multi-layer images
built with `docker build` (whiteouts, opaque dirs, type changes, copy-ups, hard links made in
an upper layer).  Every config is packed from it; then the images are saved (`docker save`),
copied to an OCI layout with gzip layers (`skopeo copy`), the engine is stopped, and the same
configs are packed, mounted and pulled from the archive and the layout alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DOCKER_ENV_NOISE, REPO, LocalRegistry, PrivateDockerd
from support.imagetools import import_image
from support.mounts import (
    CONFORMANCE,
    HAVE_FUSE,
    SCENARIOS,
    Mounts,
    _layer_rootfs,
    _special_rootfs,
    assert_same_tree,
)
from support.trees import tree_of_dir, tree_of_merged

DOCKER = "/usr/bin/docker"
SKOPEO = shutil.which("skopeo")
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("dockerd"),
                                reason="needs root and dockerd")

# Upper layers that exercise every layer rule docker itself gets right on overlay2.
LAYERED_DOCKERFILE = """\
FROM fbpub/busybox:1
RUN mkdir -p /w/gonedir /w/opq /w/d2f /w/hl /w/keep && echo gone > /w/gone.txt \\
 && echo x > /w/gonedir/x && echo old > /w/opq/old && echo f > /w/f2d \\
 && echo inner > /w/d2f/inner && echo meta > /w/meta && echo one > /w/hl/one \\
 && ln /w/hl/one /w/hl/two && ln /w/hl/one /w/hl/three && echo k > /w/keep/k \\
 && echo big > /w/bigid && chown 3000000:3000001 /w/bigid
RUN rm /w/gone.txt && rm -rf /w/gonedir && rm -rf /w/opq && mkdir /w/opq \\
 && echo new > /w/opq/new && rm /w/f2d && mkdir /w/f2d && echo in > /w/f2d/in \\
 && rm -rf /w/d2f && echo file > /w/d2f && chmod 600 /w/meta && chown 1000:1000 /w/meta \\
 && echo replaced > /w/hl/one.new && mv /w/hl/one.new /w/hl/one \\
 && ln /bin/busybox /w/bb-link && chmod 0750 /w/keep
COPY long /w/long/
ENV LAYERED=1
CMD ["/bin/sh"]
"""
SECOND_DOCKERFILE = """\
FROM fbpub/busybox:1
RUN echo second > /second
"""

LAYERED_YML = """\
init:
  - fbtest/lay-special:1
  - fbtest/lay-layer:1
onboot:
  - name: first
    image: fbtest/layered:1
    readonly: true
  - name: again
    image: fbtest/layered:1
services:
  - name: second
    image: fbtest/second:1
  - name: odd
    image: fbtest/lay-special:1
"""

# today's `volumes: format: oci`: the image as an OCI layout in the volume's lower/
VOLUME_YML = """\
services:
  - name: user
    image: fbpub/busybox:1
    binds:
      - layout:/layout:ro
volumes:
  - name: layout
    image: fbtest/second:1
    format: oci
    platforms: [linux/amd64]
"""

IMAGES = ("fbpub/busybox:1", "fbpub/app:1", "fbpub/conf:1", "fbtest/lay-special:1",
          "fbtest/lay-layer:1", "fbtest/layered:1", "fbtest/second:1")


def _docker(host: str, *args: str, cwd: Path | None = None) -> None:
    r = subprocess.run([DOCKER, "-H", host, *args], capture_output=True, text=True,
                       timeout=300, cwd=cwd)
    assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr.strip()}"


def _build(host: str, ctx: Path, dockerfile: str, tag: str) -> None:
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(dockerfile)
    (ctx / "long").mkdir()
    (ctx / "long" / ("n" * 180)).write_text("a long name\n")
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}
    r = subprocess.run([DOCKER, "-H", host, "build", "--network", "none", "-q", "-t", tag,
                        str(ctx)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"docker build {tag}: {r.stderr.strip()}"


class World:
    """What the module's engine made, before it was stopped."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.configs: dict[str, Path] = {}
        self.engine_packs: dict[str, bytes] = {}
        self.archive = root / "images.tar"
        self.layout = root / "layout"
        self.dead_host = f"unix://{root}/no-engine.sock"
        self.registry: LocalRegistry | None = None
        self.volume = root / "volume.yml"  # packed from the engine, not in `configs`

    def manifest_digest(self, repo: str, tag: str) -> str:
        """The digest the local registry answers for repo:tag (as docker pushed it)."""
        import urllib.request

        assert self.registry is not None
        req = urllib.request.Request(
            f"http://{self.registry.address}/v2/{repo}/manifests/{tag}", method="HEAD",
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.headers["Docker-Content-Digest"]

    def at_registry(self, name: str) -> Path:
        """The config `name` with every image named at the local registry."""
        assert self.registry is not None
        out = self.root / f"registry-{name}.yml"
        if not out.exists():
            text = self.configs[name].read_text()
            # shared.yml names one image by a second string; here: the same, pinned by digest.
            alias = "image: index.docker.io/fbpub/app:1"
            text = text.replace(alias, f"image: {self.registry.address}/fbpub/app:1@"
                                       f"{self.manifest_digest('fbpub/app', '1')}")
            for prefix in ("fbpub/", "fbtest/"):
                text = text.replace(f"image: {prefix}", f"image: {self.registry.address}/{prefix}")
                text = text.replace(f"  - {prefix}", f"  - {self.registry.address}/{prefix}")
            out.write_text(text)
        return out

    def run(self, *args: str | os.PathLike, cache: Path, host: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k not in DOCKER_ENV_NOISE}
        env["DOCKER_HOST"] = host or self.dead_host
        env["FUSEBUNDLE_CACHE_DIR"] = str(cache)
        env["PYTHONPATH"] = str(REPO)
        return subprocess.run([sys.executable, "-m", "fusebundle", *map(os.fspath, args)],
                              env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    """Packs from a private engine, its images saved and copied to a layout, the engine gone."""
    root = tmp_path_factory.mktemp("layered")
    w = World(root)
    engine = PrivateDockerd(shutil.which("dockerd") or "dockerd")
    try:
        client = engine.start()
        host = engine.host
        rootfs = root / "rootfs"
        rootfs.mkdir()
        env = {**os.environ, "DOCKER_CLI": DOCKER, "PYTHON": sys.executable}
        for cmd in ([sys.executable, str(CONFORMANCE / "make_images.py"), str(rootfs)],
                    ["bash", str(CONFORMANCE / "load_images.sh"), engine.sock, str(rootfs)]):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
        for name, builder in (("lay-special", _special_rootfs), ("lay-layer", _layer_rootfs)):
            tar = builder().write(root / f"{name}.tar")
            import_image(client, tar, f"fbtest/{name}:1", ['CMD ["/bin/sh"]'])
        _build(host, root / "ctx1", LAYERED_DOCKERFILE, "fbtest/layered:1")
        _build(host, root / "ctx2", SECOND_DOCKERFILE, "fbtest/second:1")
        client.close()
        for name in SCENARIOS:
            w.configs[name] = CONFORMANCE / "scenarios" / f"{name}.yml"
        w.configs["layered"] = root / "layered.yml"
        w.configs["layered"].write_text(LAYERED_YML)
        cache = root / "engine-cache"
        w.volume = root / "volume.yml"
        w.volume.write_text(VOLUME_YML)
        for name, config in [*w.configs.items(), ("volume", w.volume),
                             ("shared-by-id", w.configs["shared"])]:
            out = root / f"engine-{name}.tar"
            extra = ["--share-by-id"] if name == "shared-by-id" else []
            r = w.run("pack", "--from", "docker", *extra, config, "-o", out, cache=cache,
                      host=host)
            assert r.returncode == 0, r.stderr
            w.engine_packs[name] = out.read_bytes()
        _docker(host, "save", "-o", str(w.archive), *IMAGES)
        if shutil.which("docker-registry"):
            w.registry = LocalRegistry(root / "registry").start()
            for ref in IMAGES:
                _docker(host, "tag", ref, f"{w.registry.address}/{ref}")
                _docker(host, "push", "-q", f"{w.registry.address}/{ref}")
        if SKOPEO:
            for ref in IMAGES:
                r = subprocess.run([SKOPEO, "--insecure-policy", "copy", "-q",
                                    f"docker-archive:{w.archive}:{ref}",
                                    f"oci:{w.layout}:docker.io/{ref}"],
                                   capture_output=True, text=True, timeout=300)
                assert r.returncode == 0, r.stderr
    finally:
        engine.stop()  # everything below runs with no engine at all
    try:
        yield w
    finally:
        if w.registry is not None:
            w.registry.stop()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _differences(a: bytes, b: bytes) -> list[str]:
    """A readable account of how two pack tars differ (names, then headers)."""
    import io

    def members(data: bytes) -> dict[str, tuple]:
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            return {m.name: (m.type, oct(m.mode), m.uid, m.gid, m.size, m.mtime, m.linkname)
                    for m in t.getmembers()}

    ma, mb = members(a), members(b)
    out = [f"only in engine pack: {n}" for n in ma.keys() - mb.keys()]
    out += [f"only in layered pack: {n}" for n in mb.keys() - ma.keys()]
    out += [f"{n}: {ma[n]} != {mb[n]}" for n in ma.keys() & mb.keys() if ma[n] != mb[n]]
    return sorted(out)[:20]


# ------------------------------------------------------------------------------ the invariant
@pytest.mark.parametrize("kind", ["docker-archive", "oci"])
def test_pack_from_layers_equals_the_engines_pack(world, kind, tmp_path):
    if kind == "oci" and not SKOPEO:
        pytest.skip("skopeo is not installed")
    src = f"docker-archive:{world.archive}" if kind == "docker-archive" else f"oci:{world.layout}"
    cache = tmp_path / "cache"
    for name, config in world.configs.items():
        out = tmp_path / f"{name}.tar"
        r = world.run("pack", "--from", src, config, "-o", out, cache=cache)
        assert r.returncode == 0, r.stderr
        got = out.read_bytes()
        want = world.engine_packs[name]
        assert got == want, (name, _digest(got), _digest(want), _differences(want, got))


def test_share_by_id_keys_on_the_config_digest_as_the_engines_image_id(world, tmp_path):
    out = tmp_path / "o.tar"
    r = world.run("pack", "--share-by-id", "--from", f"docker-archive:{world.archive}",
                  world.configs["shared"], "-o", out, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == world.engine_packs["shared-by-id"]
    assert world.engine_packs["shared-by-id"] != world.engine_packs["shared"]


def test_config_command_works_from_a_layout(world, tmp_path):
    if not SKOPEO:
        pytest.skip("skopeo is not installed")
    r = world.run("config", "--from", f"oci:{world.layout}", world.configs["labelled"],
                  "--name", "conf-boot", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    with tarfile.open(fileobj=__import__("io").BytesIO(world.engine_packs["labelled"])) as t:
        want = json.load(t.extractfile("containers/onboot/000-conf-boot/config.json"))
    assert doc["config.json"] == want
    assert doc["label"]["readonly"] is True  # the label, read from the layout's config blob
    assert not (tmp_path / "cache" / "layers").exists() or not list(
        (tmp_path / "cache" / "layers").rglob("*.tar"))  # no layer was needed for that


def test_pull_fills_the_store_with_volume_images_too(world, tmp_path):
    r = world.run("pull", "--from", f"docker-archive:{world.archive}", world.volume,
                  cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "fbtest/second:1:" in r.stdout, r.stdout
    assert r.stdout.strip().splitlines()[-1].startswith("pulled 2 images:"), r.stdout


def test_an_oci_volume_from_a_save_equals_the_engines(world, tmp_path):
    # The layout is made from the stored layers as the engine's `docker save` gives them, so
    # the bytes agree.  (Not from a skopeo layout: skopeo rewrites the config, and the config
    # blob is in the volume.)
    out = tmp_path / "volume.tar"
    r = world.run("pack", "--from", f"docker-archive:{world.archive}", world.volume, "-o", out,
                  cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    got, want = out.read_bytes(), world.engine_packs["volume"]
    assert got == want, (_digest(got), _digest(want), _differences(want, got))
    assert b"oci-layout" in got


def test_a_second_pack_needs_no_source_at_all(world, tmp_path):
    cache = tmp_path / "cache"
    config = world.configs["layered"]
    r = world.run("pull", "--from", f"docker-archive:{world.archive}", config, cache=cache)
    assert r.returncode == 0, r.stderr
    moved = tmp_path / "moved.tar"
    world.archive.rename(moved)
    try:
        out = tmp_path / "out.tar"
        r = world.run("pack", config, "-o", out, cache=cache)  # default order: the store
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == world.engine_packs["layered"]
        r = world.run("pack", "--from", "store", config, "-o", out, cache=cache)
        assert r.returncode == 0, r.stderr
    finally:
        moved.rename(world.archive)


def test_pull_reports_and_fills_the_store_once(world, tmp_path):
    cache = tmp_path / "cache"
    config = world.configs["layered"]
    src = f"docker-archive:{world.archive}"
    r = world.run("pull", "--from", src, config, cache=cache)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("pulled 4 images:"), r.stdout
    fetched = int(last.split(":", 1)[1].split()[0])
    layers = sorted((cache / "layers" / "sha256").glob("*.tar"))
    # fbtest/layered:1 and fbtest/second:1 share the busybox base layer: stored once.
    assert fetched == len(layers) == 7, (r.stdout, layers)
    r = world.run("pull", "--from", src, config, cache=cache)
    assert r.returncode == 0, r.stderr
    assert "pulled 4 images: 0 layers fetched" in r.stdout, r.stdout


def test_two_concurrent_pulls_decompress_each_layer_once(world, tmp_path):
    if not SKOPEO:
        pytest.skip("skopeo is not installed")
    cache = tmp_path / "cache"
    config = world.configs["layered"]
    env = {k: v for k, v in os.environ.items() if k not in DOCKER_ENV_NOISE}
    env.update(DOCKER_HOST=world.dead_host, FUSEBUNDLE_CACHE_DIR=str(cache),
               PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "fusebundle", "pull", "--from", f"oci:{world.layout}",
           str(config)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    fetched = [int(o.strip().splitlines()[-1].split(":", 1)[1].split()[0]) for o, _ in outs]
    assert sum(fetched) == 7, outs


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
@pytest.mark.parametrize("name", [*SCENARIOS, "layered"])
def test_mount_of_layered_images_equals_their_pack(world, name, tmp_path):
    cache = tmp_path / "cache"

    def fb(*args, **kw):
        return world.run(*args, cache=cache, **kw)

    mounts = Mounts(fb, tmp_path)
    try:
        mnt = mounts.mount(world.configs[name], "--from", f"docker-archive:{world.archive}")
        pack = tmp_path / "engine.tar"
        pack.write_bytes(world.engine_packs[name])
        assert_same_tree(pack, mnt)
    finally:
        mounts.cleanup()


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_prune_keeps_layers_a_mount_uses(world, tmp_path):
    cache = tmp_path / "cache"

    def fb(*args, **kw):
        return world.run(*args, cache=cache, **kw)

    config = world.configs["layered"]
    r = fb("pull", "--from", f"docker-archive:{world.archive}", config)
    assert r.returncode == 0, r.stderr
    before = sorted(p.name for p in (cache / "layers" / "sha256").glob("*.tar"))
    # Forget the images (as if their records were dropped), so that every layer is unused
    # by the store's records; only the mount's hold keeps them.
    mounts = Mounts(fb, tmp_path)
    try:
        mnt = mounts.mount(config, "--from", "store")
        assert (mnt / "containers/onboot/000-first/rootfs/w/opq/new").read_text() == "new\n"
        for rec in (cache / "images").rglob("*"):
            if rec.is_file():
                rec.unlink()
        r = fb("cache", "prune")
        assert r.returncode == 0, r.stderr
        after = sorted(p.name for p in (cache / "layers" / "sha256").glob("*.tar"))
        assert after == before, r.stdout
        assert (mnt / "containers/onboot/000-first/rootfs/w/f2d/in").read_text() == "in\n"
    finally:
        mounts.cleanup()
    deadline = time.monotonic() + 20
    while True:  # the server has exited once its mount is gone; its holds go with it
        r = fb("cache", "prune")
        assert r.returncode == 0, r.stderr
        left = list((cache / "layers" / "sha256").glob("*.tar"))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == [], r.stdout


# ------------------------------------------------------------------------------ bad input
def test_an_image_no_source_has_names_every_source_tried(world, tmp_path):
    cfg = tmp_path / "missing.yml"
    cfg.write_text("onboot:\n  - name: x\n    image: fbtest/nowhere:1\n")
    r = world.run("pack", "--from", f"docker-archive:{world.archive}", "--from",
                  f"oci:{world.layout}", "--from", "docker", cfg, "-o", tmp_path / "o.tar",
                  cache=tmp_path / "cache")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert "fbtest/nowhere:1" in line
    for name in (f"docker-archive:{world.archive}", f"oci:{world.layout}", "docker"):
        assert name in line, line
    assert "fbpub/busybox" in line  # the archive says what it has
    assert not (tmp_path / "o.tar").exists()


def test_a_corrupt_layer_blob_is_one_line_and_leaves_nothing(world, tmp_path):
    if not SKOPEO:
        pytest.skip("skopeo is not installed")
    layout = tmp_path / "layout"
    shutil.copytree(world.layout, layout)
    # Flip one byte in the middle of the gzip stream of busybox's layer (basic.yml uses it).
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"][
        "org.opencontainers.image.ref.name"] == "docker.io/fbpub/busybox:1")
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_text())
    blob = blobs / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    cache = tmp_path / "cache"
    r = world.run("pack", "--from", f"oci:{layout}", world.configs["basic"], "-o",
                  tmp_path / "o.tar", cache=cache)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o.tar").exists()
    layers = cache / "layers"
    left = [p for p in layers.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert blob.name not in " ".join(p.name for p in left)
    assert not [p for p in left if p.name.endswith((".part", ".tmp"))], left


def test_bad_from_values_are_config_errors(world, tmp_path):
    for bad in (["--from", "oci"], ["--from", "nowhere:x"], ["--from", "docker-archive:"],
                ["--platform", "linux"], ["--platform", "linux//v7"]):
        r = world.run("pack", *bad, world.configs["basic"], "-o", tmp_path / "o.tar",
                      cache=tmp_path / "cache")
        assert r.returncode == 2, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ the registry
def _registry(world: World) -> LocalRegistry:
    if world.registry is None or world.registry.proc is None:
        pytest.skip("docker-registry is not installed")
    return world.registry


def test_pack_from_the_registry_equals_the_engines_pack(world, tmp_path):
    _registry(world)
    cache = tmp_path / "cache"
    for name in world.configs:
        out = tmp_path / f"{name}.tar"
        r = world.run("pack", "--from", "registry", world.at_registry(name), "-o", out,
                      cache=cache)
        assert r.returncode == 0, r.stderr
        got, want = out.read_bytes(), world.engine_packs[name]
        assert got == want, (name, _digest(got), _digest(want), _differences(want, got))


@pytest.mark.skipif(not HAVE_FUSE, reason="needs /dev/fuse, fusermount3 and root")
def test_a_mount_fetches_layers_on_first_access(world, tmp_path):
    _registry(world)
    cache = tmp_path / "cache"

    def fb(*args, **kw):
        return world.run(*args, cache=cache, **kw)

    layers = cache / "layers" / "sha256"
    addr = world.registry.address
    cfg = tmp_path / "lazy.yml"  # no init: nothing at the root needs an image
    cfg.write_text(f"onboot:\n  - name: first\n    image: {addr}/fbtest/layered:1\n"
                   f"    readonly: true\nservices:\n  - name: second\n"
                   f"    image: {addr}/fbtest/second:1\n")

    def stored() -> int:
        return len(list(layers.glob("*.tar"))) if layers.exists() else 0

    mounts = Mounts(fb, tmp_path)
    try:
        mnt = mounts.mount(cfg, "--from", "registry")
        bundle = mnt / "containers/onboot/000-first"
        assert json.loads((bundle / "config.json").read_text())["root"]["readonly"] is True
        assert stored() == 0  # the configs came from manifests and config blobs alone
        assert (bundle / "rootfs/w/opq/new").read_text() == "new\n"
        # fbtest/layered:1's 4 layers, and not fbtest/second:1's own one: nobody looked there.
        assert stored() == 4
        assert (mnt / "containers/services/second/lower/second").read_text() == "second\n"
        assert stored() == 5
    finally:
        mounts.cleanup()


def test_pull_again_fetches_only_what_changed(world, tmp_path):
    reg = _registry(world)
    if not SKOPEO:
        pytest.skip("skopeo is not installed")
    cache = tmp_path / "cache"
    cfg = tmp_path / "moving.yml"
    ref = f"{reg.address}/fbtest/moving:1"
    cfg.write_text(f"onboot:\n  - name: m\n    image: {ref}\n")

    def retag(image: str) -> None:
        r = subprocess.run([SKOPEO, "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                            f"docker-archive:{world.archive}:{image}", f"docker://{ref}"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    retag("fbtest/layered:1")
    r = world.run("pull", "--from", "registry", cfg, cache=cache)
    assert r.returncode == 0, r.stderr
    assert "pulled 1 images: 4 layers fetched" in r.stdout, r.stdout
    retag("fbtest/second:1")  # the tag moves: same base layer, one new layer
    r = world.run("pull", "--from", "registry", cfg, cache=cache)
    assert "pulled 1 images: 0 layers fetched" in r.stdout, r.stdout  # the store answers
    r = world.run("pull", "--pull", "--from", "registry", cfg, cache=cache)
    assert r.returncode == 0, r.stderr
    assert "pulled 1 images: 1 layers fetched" in r.stdout and "1 already in the store" in \
        r.stdout, r.stdout
    out = tmp_path / "o.tar"
    r = world.run("pack", "--from", "registry", cfg, "-o", out, cache=cache)
    assert r.returncode == 0, r.stderr
    import io

    with tarfile.open(fileobj=io.BytesIO(out.read_bytes())) as t:
        assert "containers/onboot/000-m/lower/second" in t.getnames()


def test_zz_a_second_pack_with_the_registry_stopped_comes_from_the_store(world, tmp_path):
    reg = _registry(world)
    cache = tmp_path / "cache"
    cfg = world.at_registry("layered")
    r = world.run("pull", "--from", "registry", cfg, cache=cache)
    assert r.returncode == 0, r.stderr
    reg.stop()  # the last test of the module: nothing after it needs the registry
    out = tmp_path / "o.tar"
    r = world.run("pack", "--from", "registry", cfg, "-o", out, cache=cache)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == world.engine_packs["layered"]
    r = world.run("pack", "--pull", "--from", "registry", cfg, "-o", out, cache=cache)
    assert r.returncode == 1 and "unreachable" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ umoci
@pytest.mark.parametrize("ref", IMAGES)
def test_every_image_flattens_as_umoci_unpacks_it(world, ref, tmp_path):
    """A second opinion on the layer rules: umoci, an independent implementation."""

    from fusebundle.images.flatten import merge
    from fusebundle.sources.base import Platform
    from fusebundle.store import Store

    if not (SKOPEO and shutil.which("umoci")):
        pytest.skip("skopeo and umoci are needed")
    cache = tmp_path / "cache"
    cfg = tmp_path / "one.yml"
    cfg.write_text(f"onboot:\n  - name: x\n    image: {ref}\n")
    r = world.run("pull", "--from", f"oci:{world.layout}", cfg, cache=cache)
    assert r.returncode == 0, r.stderr
    with Store(str(cache)) as store:
        image = store.find_image(f"docker.io/{ref}", str(Platform.host()))
        assert image is not None
        merged = merge([store.layer_index(layer.diff_id) for layer in image.layers],
                       [layer.digest for layer in image.layers], ref, str(tmp_path / "m.idx"))
    layout, bundle = tmp_path / "oci", tmp_path / "bundle"
    for cmd in ([SKOPEO, "--insecure-policy", "copy", "-q", f"oci:{world.layout}:docker.io/{ref}",
                 f"oci:{layout}:t"], ["umoci", "unpack", "--image", f"{layout}:t", str(bundle)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    got, want = tree_of_merged(merged), tree_of_dir(bundle / "rootfs")
    assert got[0] == want[0], sorted(set(got[0].items()) ^ set(want[0].items()))[:10]
    assert got[1] == want[1]
