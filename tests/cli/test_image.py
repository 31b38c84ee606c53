"""The image commands (issue 19): `image ls|cat|export|inspect` and `diff` on real components.

The test image is written byte by byte (support.imagetools) as an OCI layout with gzip layers:
whiteouts, an opaque directory, a type change, hard links in an upper layer and across layers,
xattrs, devices, a fifo, nanosecond mtimes, symlinks (absolute, `..` past the root, a loop).
`umoci raw unpack` of that layout is the oracle of `image export` (both trees compared as GNU
tar and umoci write them on disk); skopeo converts the layout to an oci-archive, and Debian's
docker-registry serves it for `docker://`.  One test loads the image into the private dockerd
for `docker-daemon:`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from conftest import LocalRegistry
from support.faulttools import cli, env_for
from support.imagetools import T1, RootfsBuilder, docker_archive, write_oci_layout
from support.mounts import HAVE_FUSE
from support.sparse import sparse_layer

from fusebundle.errors import ConfigError
from fusebundle.images import refspec

REF = "fbtest/img:1"
HAVE_UMOCI = shutil.which("umoci") is not None and os.geteuid() == 0
HAVE_SKOPEO = shutil.which("skopeo") is not None
KEYS = ["path", "type", "mode", "uid", "gid", "size", "mtime", "link", "layer", "diff_id"]


# ------------------------------------------------------------------------------ references
@pytest.mark.parametrize(("text", "kind", "path", "name"), [
    ("docker://localhost:5000/a/b:1", "registry", "", "localhost:5000/a/b:1"),
    ("docker://alpine@sha256:" + "0" * 64, "registry", "", "alpine@sha256:" + "0" * 64),
    ("docker-daemon:app:2", "docker", "", "app:2"),
    ("oci:/x/lay", "oci", "/x/lay", ""),
    ("oci:/x/lay:1.0", "oci", "/x/lay", "1.0"),
    ("oci:/x/lay:docker.io/a/b:1", "oci", "/x/lay", "docker.io/a/b:1"),
    ("oci-archive:/x/a.tar:t", "oci-archive", "/x/a.tar", "t"),
    ("docker-archive:/x/s.tar", "docker-archive", "/x/s.tar", ""),
    ("alpine", None, "", "alpine"),
    ("foo:bar", None, "", "foo:bar"),  # a name and a tag, not a transport
    ("localhost:5000/x:1", None, "", "localhost:5000/x:1"),
])
def test_reference_spellings(text: str, kind: str | None, path: str, name: str) -> None:
    spec = refspec.parse(text)
    assert (spec.kind, spec.path, spec.name) == (kind, path, name)


def test_relative_paths_are_made_absolute_and_sources_follow_the_spec() -> None:
    spec = refspec.parse("oci:lay:t")
    assert spec.path == os.path.abspath("lay")
    assert spec.sources(["registry"]) == [f"oci:{spec.path}"]
    assert refspec.parse("x").sources(["registry"]) == ["registry"]
    assert refspec.parse("docker-daemon:x").sources(None) == ["docker"]


def test_from_takes_skopeos_spellings_beside_the_old_ones() -> None:
    from fusebundle.images.resolver import parse_spec
    assert parse_spec("docker-daemon:") == parse_spec("docker") == ("docker", "")
    assert parse_spec("docker://") == parse_spec("registry") == ("registry", "")
    assert parse_spec("oci-archive:a.tar") == ("oci-archive", os.path.abspath("a.tar"))
    assert parse_spec("oci:lay") == ("oci", os.path.abspath("lay"))
    with pytest.raises(ConfigError, match="oci-archive:FILE"):
        parse_spec("foo")


@pytest.mark.parametrize("text", ["foo://x", "http://a/b", "docker-daemon:", "oci:", "docker://"])
def test_bad_spellings_are_one_config_error(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        refspec.parse(text)
    assert "\n" not in str(e.value)
    if "://" in text and not text.startswith("docker:"):
        assert "docker-daemon:" in str(e.value) and "oci-archive:" in str(e.value)


# ------------------------------------------------------------------------------ the image
def _layers(cross_link: bool = True) -> list[RootfsBuilder]:
    low = RootfsBuilder()
    low.dir("etc").file("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    low.dir("bin").file("bin/tool", b"\x7fELF-ish tool\n", mode=0o755)
    low.symlink("bin/sh", "tool")
    low.dir("data").file("data/a", "shared bytes\n", uid=7, gid=8)
    low.hardlink("data/a2", "data/a")
    low.file("data/attr", "with xattrs\n", xattrs={"user.fb": "one", "user.other": "two"})
    low.file("data/ns", "ns mtime\n", pax={"mtime": "1400000000.123456789"})
    low.dir("gone").file("gone/x", "whited out\n")
    low.file("typechg", "a file, later a directory\n")
    low.dir("d2").file("d2/old", "hidden by an opaque marker\n")
    low.dir("dev").chardev("dev/null", 1, 3).blockdev("dev/blk", 7, 0).fifo("dev/fifo")
    low.dir("srv", mode=0o750, uid=33, gid=33, mtime=T1)
    up = RootfsBuilder()
    up.file(".wh.gone")
    up.dir("d2").file("d2/.wh..wh..opq").file("d2/new", "after the opaque marker\n")
    up.dir("typechg").file("typechg/inside", "now a directory\n")
    up.dir("data").file("data/b", "upper bytes\n", mode=0o600).hardlink("data/b2", "data/b")
    if cross_link:  # overlay2 refuses to load this (notes 1.8): not for the engine
        up.hardlink("data/a3", "data/a")  # a link to a file of the layer below
    up.dir("etc").file("etc/passwd", "root:x:0:0::/root:/bin/ash\n")
    top = RootfsBuilder()
    top.dir("etc").file("etc/motd", "hello from the top layer\n")
    top.symlink("etc/abs", "/etc/motd").symlink("etc/up", "../../../../etc/motd")
    top.symlink("loop1", "loop2").symlink("loop2", "loop1")
    top.symlink("etc/dirlink", "/data")
    return [low, up, top]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("image")
    tars = [b.tobytes() for b in _layers()]
    layout = tmp / "layout"
    write_oci_layout(layout, REF, tars, {"Cmd": ["/bin/sh"]})
    paths = []
    for n, t in enumerate(tars):
        paths.append(tmp / f"layer{n}.tar")
        paths[-1].write_bytes(t)
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    # a second image: the same two bottom layers, another top one
    other = RootfsBuilder().dir("etc").file("etc/motd", "another top layer\n", mode=0o600)
    other.file("new-file", "only in img:2\n")
    write_oci_layout(layout, "fbtest/img:2", [*tars[:2], other.tobytes()], {"Cmd": ["/bin/sh"]})
    return {"tmp": tmp, "layout": layout, "layers": paths, "diff_ids": diff_ids,
            "save": docker_archive(tmp, paths, REF)}


def run(*args: Any, cache: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    return cli(*args, cache=cache, **kw)


def oci(image: dict[str, Any], name: str = REF) -> str:
    return f"oci:{image['layout']}:{name}"


def ls_json(image_ref: str, *args: str, cache: Path) -> dict[str, dict[str, Any]]:
    r = run("image", "ls", "--json", image_ref, *args, cache=cache)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return {row["path"]: row for row in rows}


# ------------------------------------------------------------------------------ image ls
def test_ls_gives_each_entry_its_layer_and_diff_id(image: dict[str, Any], tmp_path: Path) -> None:
    rows = ls_json(oci(image), "-R", cache=tmp_path / "c")
    ids = image["diff_ids"]
    assert all(list(row) == KEYS for row in rows.values())
    assert rows["/etc/passwd"]["layer"] == 1 and rows["/etc/passwd"]["diff_id"] == ids[1]
    assert rows["/etc/motd"]["layer"] == 2 and rows["/etc"]["layer"] == 2  # topmost header
    assert rows["/bin/tool"]["layer"] == 0 and rows["/bin/sh"]["link"] == "tool"
    assert rows["/data/a3"]["type"] == "hardlink" and rows["/data/a3"]["layer"] == 1
    assert rows["/data/a3"]["link"] == "data/a"
    assert rows["/srv"] == {"path": "/srv", "type": "dir", "mode": "0750", "uid": 33,
                            "gid": 33, "size": 0, "mtime": T1, "link": None, "layer": 0,
                            "diff_id": ids[0]}
    assert rows["/data/ns"]["mtime"] == 1400000000.123456789
    assert rows["/dev/null"]["type"] == "char" and rows["/dev/fifo"]["type"] == "fifo"
    # whiteouts applied, no docker artefacts
    assert "/gone" not in rows and "/gone/x" not in rows and "/d2/old" not in rows
    assert rows["/typechg"]["type"] == "dir" and "/typechg/inside" in rows
    for docker_made in ("/.dockerenv", "/proc", "/sys", "/etc/hosts", "/dev/console"):
        assert docker_made not in rows


def test_ls_paths_children_recursion_and_digest(image: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "c"
    top = run("image", "ls", oci(image), cache=cache)
    assert top.stdout.splitlines() == ["/bin", "/d2", "/data", "/dev", "/etc", "/loop1",
                                       "/loop2", "/srv", "/typechg"]
    rows = ls_json(oci(image), "/etc", "/bin/tool", "--digest", cache=cache)
    assert set(rows) == {"/etc/abs", "/etc/dirlink", "/etc/motd", "/etc/passwd", "/etc/up",
                         "/bin/tool"}
    want = hashlib.sha256(b"hello from the top layer\n").hexdigest()
    assert rows["/etc/motd"]["sha256"] == want and rows["/etc/abs"]["sha256"] is None
    link = run("image", "ls", oci(image), "/etc/dirlink", cache=cache).stdout.splitlines()
    through = run("image", "ls", oci(image), "/etc/dirlink/", cache=cache).stdout.splitlines()
    assert link == ["/etc/dirlink"] and "/data/a3" in through and "/data/b" in through
    long = run("image", "ls", "-l", oci(image), "/data", cache=cache).stdout.splitlines()
    dev = run("image", "ls", "-l", oci(image), "/dev", cache=cache).stdout.splitlines()
    assert any(x.startswith("crw-rw-rw-") and " 1, 3 " in x and x.endswith("/dev/null")
               for x in dev), dev
    line = next(x for x in long if x.endswith("/data/b"))
    assert line.startswith("-rw-------") and f" 1:{image['diff_ids'][1][7:19]} " in line


def test_ls_layer_shows_that_layers_own_entries_with_whiteouts(image: dict[str, Any],
                                                               tmp_path: Path) -> None:
    rows = ls_json(oci(image), "--layer", "1", "-R", cache=tmp_path / "c")
    assert {"/.wh.gone", "/d2/.wh..wh..opq", "/d2/new", "/data/b2"} <= set(rows)
    assert "/etc/motd" not in rows and "/bin" not in rows
    assert {row["layer"] for row in rows.values()} == {1}
    assert {row["diff_id"] for row in rows.values()} == {image["diff_ids"][1]}
    top = ls_json(oci(image), "--layer", "2", "--digest", "/etc/motd", cache=tmp_path / "c")
    assert top["/etc/motd"]["sha256"] == hashlib.sha256(b"hello from the top layer\n").hexdigest()


# ------------------------------------------------------------------------------ image cat
def test_cat_follows_symlinks_as_a_chroot_would(image: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "c"
    motd = "hello from the top layer\n"
    for path in ("/etc/motd", "etc/abs", "/etc/up", "/etc/dirlink/a", "/etc/dirlink/../etc/motd"):
        r = run("image", "cat", oci(image), path, cache=cache)
        assert r.returncode == 0, (path, r.stderr)
        assert r.stdout == (motd if "motd" in path or path.endswith(("abs", "up"))
                            else "shared bytes\n")
    two = run("image", "cat", oci(image), "/data/a3", "/data/b2", cache=cache)
    assert two.stdout == "shared bytes\nupper bytes\n"


# Libraries only some paths need, and so import where they are used: YAML for configs, the
# decompressors for storing a layer, TLS and e-mail dates for a registry, the engine's client.
LAZY = ("ruamel", "zstandard", "isal", "ssl", "email", "httpx", "docker", "pyfuse3", "trio")
# The command run in this process, then its exit status and the top-level modules it loaded.
_LOADED = """
import json, runpy, sys
sys.argv, code = ["fusebundle", *sys.argv[1:]], 0
try:
    runpy.run_module("fusebundle", run_name="__main__")
except SystemExit as e:
    code = e.code
sys.stdout.flush()
print(json.dumps([code, sorted({m.split(".")[0] for m in sys.modules})]), file=sys.stderr)
"""


def test_cat_of_a_stored_image_loads_no_library_it_does_not_use(image: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    cache = tmp_path / "c"
    assert run("image", "cat", oci(image), "/etc/motd", cache=cache).returncode == 0  # stored
    r = subprocess.run([sys.executable, "-c", _LOADED, "image", "cat", oci(image), "/etc/motd"],
                       env=env_for(cache), capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL, check=False)
    assert r.stdout == "hello from the top layer\n"
    code, loaded = json.loads(r.stderr.splitlines()[-1])
    assert code == 0 and "fusebundle" in loaded, r.stderr
    assert sorted(set(loaded) & set(LAZY)) == []


# ------------------------------------------------------------------------------ transports
def test_every_file_transport_gives_the_same_image(image: dict[str, Any], tmp_path: Path) -> None:
    if not HAVE_SKOPEO:
        pytest.skip("skopeo is not installed")
    archive = tmp_path / "img.oci.tar"
    subprocess.run(["skopeo", "--insecure-policy", "copy", oci(image),
                    f"oci-archive:{archive}:t"], check=True, capture_output=True)
    want = ls_json(oci(image), "-R", cache=tmp_path / "c0")
    for n, spelled in enumerate([f"oci-archive:{archive}", f"oci-archive:{archive}:t",
                                 f"docker-archive:{image['save']}",
                                 f"docker-archive:{image['save']}:{REF}"]):
        got = ls_json(spelled, "-R", cache=tmp_path / f"c{n + 1}")
        assert got == want, spelled
    line = _one_line(run("image", "ls", f"oci-archive:{archive}:nope", cache=tmp_path / "c8"))
    assert "no image nope (it has: t)" in line
    # a bare name goes to --from, in skopeo's spelling or the old one
    for source in (f"oci:{image['layout']}", f"docker-archive:{image['save']}"):
        r = run("image", "cat", "--from", source, REF, "/etc/motd", cache=tmp_path / "c9")
        assert r.stdout == "hello from the top layer\n", r.stderr


def test_docker_transport_reads_a_registry(image: dict[str, Any], tmp_path: Path) -> None:
    if not (HAVE_SKOPEO and shutil.which("docker-registry")):
        pytest.skip("skopeo and docker-registry are needed")
    reg = LocalRegistry(tmp_path / "registry").start()
    try:
        subprocess.run(["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
                        oci(image), f"docker://{reg.address}/fbtest/img:1"], check=True,
                       capture_output=True)
        ref = f"docker://{reg.address}/fbtest/img:1"
        got = ls_json(ref, "-R", cache=tmp_path / "c")
        assert got == ls_json(oci(image), "-R", cache=tmp_path / "c2")
        doc = json.loads(run("image", "inspect", ref, cache=tmp_path / "c").stdout)
        assert doc["reference"] == f"{reg.address}/fbtest/img:1"
        assert doc["source"] == "registry" and doc["platform"] == "linux/amd64"
        assert [x["diff_id"] for x in doc["layers"]] == image["diff_ids"]
        assert doc["config"]["config"] == {"Cmd": ["/bin/sh"]}
        # --from in skopeo's spelling: docker:// is the registry
        r = run("image", "cat", "--from", "docker://", f"{reg.address}/fbtest/img:1",
                "/etc/motd", cache=tmp_path / "c3")
        assert r.stdout == "hello from the top layer\n", r.stderr
    finally:
        reg.stop()


def test_inspect_of_a_layout(image: dict[str, Any], tmp_path: Path) -> None:
    r = run("image", "inspect", oci(image), cache=tmp_path / "c")
    doc = json.loads(r.stdout)
    assert set(doc) == {"reference", "source", "manifest_digest", "config_digest", "platform",
                        "config", "layers"}
    assert doc["reference"] == "docker.io/fbtest/img:1"
    assert doc["source"] == f"oci:{image['layout']}"
    assert doc["manifest_digest"].startswith("sha256:")
    assert [x["media_type"] for x in doc["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"] * 3
    assert all(x["size"] > 0 for x in doc["layers"])


# ------------------------------------------------------------------------------ export vs umoci
def _walk(root: Path) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """Every path under root: type, mode, owner, mtime, content, link, xattrs; hard links."""
    tree: dict[str, tuple] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for base in dirnames + filenames:
            path = os.path.join(dirpath, base)
            name = os.path.relpath(path, root)
            s = os.lstat(path)
            kind = stat.S_IFMT(s.st_mode)
            body = None
            if stat.S_ISREG(kind):
                body = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                if s.st_nlink > 1:
                    inodes.setdefault(s.st_ino, set()).add(name)
            xattrs = {} if stat.S_ISLNK(kind) else {
                k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path)}
            dev = os.major(s.st_rdev), os.minor(s.st_rdev)
            tree[name] = (kind, stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid,
                          None if stat.S_ISLNK(kind) else s.st_mtime_ns, body,
                          os.readlink(path) if stat.S_ISLNK(kind) else None,
                          xattrs, dev if stat.S_ISCHR(kind) or stat.S_ISBLK(kind) else None)
    return tree, {frozenset(g) for g in inodes.values() if len(g) > 1}


def umoci_rootfs(layout: Path, tag: str, dest: Path) -> Path:
    if not HAVE_UMOCI:
        pytest.skip("umoci raw unpack needs umoci and root")
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{layout}:{tag}", str(dest)],
                   check=True, capture_output=True)
    return dest


def untar(tar: Path, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
                    "--same-permissions", "-xf", str(tar), "-C", str(dest)], check=True)
    return dest


def test_export_equals_umoci_raw_unpack(image: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "export.tar"
    r = run("image", "export", oci(image), "-o", out, cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    want = _walk(umoci_rootfs(image["layout"], REF, tmp_path / "umoci"))
    got = _walk(untar(out, tmp_path / "ours"))
    assert got[0] == want[0]
    assert got[1] == want[1]
    # the test image has what it is meant to have
    assert frozenset({"data/a", "data/a2", "data/a3"}) in got[1]
    assert got[0]["data/attr"][7] == {"user.fb": b"one", "user.other": b"two"}
    assert got[0]["data/ns"][4] == 1400000000123456789
    assert got[0]["dev/blk"][8] == (7, 0) and "gone" not in got[0]


def test_export_of_a_subtree_keeps_paths_and_copies_outside_links(image: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "data.tar"
    r = run("image", "export", oci(image), "/typechg", "-o", out, cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as t:
        assert t.getnames() == ["typechg", "typechg/inside"]
    r = run("image", "export", oci(image), "/data/a3", "-o", "-", cache=tmp_path / "c")
    with tarfile.open(fileobj=__import__("io").BytesIO(r.stdout.encode())) as t:
        (m,) = t.getmembers()
        assert m.name == "data/a3" and m.isfile()
        assert t.extractfile(m).read() == b"shared bytes\n"


# ------------------------------------------------------------------------------ diff
def test_diff_of_images_sharing_layers(image: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "c"
    same = run("diff", oci(image), f"docker-archive:{image['save']}", cache=cache)
    assert (same.returncode, same.stdout) == (0, ""), same.stderr
    r = run("diff", oci(image), oci(image, "fbtest/img:2"), "--json", cache=cache)
    assert r.returncode == 1, r.stderr
    got = {x["path"]: (x["change"], x["what"]) for x in map(json.loads, r.stdout.splitlines())}
    assert got == {"/etc/motd": ("changed", ["content", "mode", "size"]),
                   "/etc/abs": ("removed", []), "/etc/up": ("removed", []),
                   "/etc/dirlink": ("removed", []), "/loop1": ("removed", []),
                   "/loop2": ("removed", []), "/new-file": ("added", [])}
    text = run("diff", oci(image), oci(image, "fbtest/img:2"), cache=cache)
    assert "M /etc/motd  (content, mode, size)" in text.stdout.splitlines()


def test_diff_of_a_config_and_an_image(image: dict[str, Any], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"onboot:\n  - name: x\n    image: {REF}\n")
    r = run("diff", "--from", f"oci:{image['layout']}", cfg, oci(image), cache=tmp_path / "c")
    assert r.returncode == 1, r.stderr
    assert "- /containers/onboot/000-x/config.json" in r.stdout.splitlines()
    assert "+ /etc/motd" in r.stdout.splitlines()
    other = tmp_path / "d.yml"
    other.write_text(f"onboot:\n  - name: x\n    image: {REF}\n    readonly: true\n")
    same = run("diff", "--from", f"oci:{image['layout']}", cfg, cfg, cache=tmp_path / "c")
    assert (same.returncode, same.stdout) == (0, ""), same.stderr
    two = run("diff", "--from", f"oci:{image['layout']}", "--json", cfg, other,
              cache=tmp_path / "c")
    got = {x["path"]: x["change"] for x in map(json.loads, two.stdout.splitlines())}
    assert two.returncode == 1 and got["/containers/onboot/000-x/config.json"] == "changed"
    assert got["/containers/onboot/000-x/lower/etc/motd"] == "removed"
    assert got["/containers/onboot/000-x/rootfs/etc/motd"] == "added"


# ------------------------------------------------------------------------------ bad input
def _one_line(r: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusebundle: "), r.stderr
    return lines[0]


def _nothing_left(cache: Path) -> None:
    left = [p for p in cache.rglob("*") if p.is_file() and p.name.startswith(".")] \
        if cache.exists() else []
    assert left == []


@pytest.mark.parametrize(("args", "says"), [
    (["image", "ls", "foo://x"], "unknown transport 'foo://'"),
    (["image", "cat", "{oci}", "/nope"], "/nope: no such file or directory"),
    (["image", "cat", "{oci}", "/etc"], "/etc: is a directory"),
    (["image", "cat", "{oci}", "/dev/null"], "is a character device"),
    (["image", "cat", "{oci}", "/dev/blk"], "is a block device"),
    (["image", "cat", "{oci}", "/loop1"], "too many levels of symbolic links"),
    (["image", "cat", "{oci}", "/etc/motd/x"], "not a directory"),
    (["image", "ls", "{oci}", "--layer", "3"], "--layer 3: out of range"),
    (["image", "ls", "{oci}", "--layer", "-1"], "--layer -1: out of range"),
    (["image", "ls", "{oci}", "/nope"], "/nope: no such file or directory"),
    (["image", "ls", "oci:{layout}:nope"], "it has: fbtest/img:1, fbtest/img:2"),
    (["image", "ls", "oci:{layout}"], "holds 2 images; name one"),
    (["image", "ls", "docker-archive:{save}:fbtest/nope:1"], "it has: fbtest/img:1"),
    (["image", "ls", "--from", "oci:{layout}", "foo:bar"], "image foo:bar: not found"),
    (["image", "export", "{oci}", "/nope", "-o", "{out}"], "/nope: no such file"),
])
def test_bad_input_is_one_line_and_leaves_nothing(image: dict[str, Any], tmp_path: Path,
                                                  args: list[str], says: str) -> None:
    cache = tmp_path / "c"
    fill = {"oci": oci(image), "layout": image["layout"], "save": image["save"],
            "out": tmp_path / "out.tar"}
    line = _one_line(run(*[a.format(**fill) for a in args], cache=cache))
    assert says in line
    assert not (tmp_path / "out.tar").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.tar")] == []
    _nothing_left(cache)


def test_platform_is_asked_of_the_image(image: dict[str, Any], tmp_path: Path) -> None:
    line = _one_line(run("image", "ls", "--platform", "linux/arm64", oci(image),
                         cache=tmp_path / "c"))
    assert "linux/amd64" in line and "linux/arm64" in line
    ok = run("image", "ls", "--platform", "linux/amd64", oci(image), cache=tmp_path / "c")
    assert ok.returncode == 0 and "/etc" in ok.stdout.splitlines()


def test_unknown_transport_names_the_ones_there_are(tmp_path: Path) -> None:
    line = _one_line(run("image", "cat", "foo://x", "/a", cache=tmp_path / "c"), 2)
    for t in ("docker://", "docker-daemon:", "oci:", "oci-archive:", "docker-archive:"):
        assert t in line
    assert not (tmp_path / "c").exists()


def test_export_to_a_terminal_is_refused(image: dict[str, Any], tmp_path: Path) -> None:
    main, sub = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "fusebundle", "image", "export", oci(image),
                            "-o", "-"], stdout=sub, stderr=subprocess.PIPE, text=True,
                           env=env_for(tmp_path / "c"), timeout=120, check=False)
    finally:
        os.close(sub)
        os.close(main)
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "fusebundle: refusing to write a tar to a terminal; use -o FILE or a pipe"]


def test_broken_pipe_on_stdout_is_quiet(image: dict[str, Any], tmp_path: Path) -> None:
    big = RootfsBuilder().file("big", os.urandom(1 << 20) * 8)  # > any pipe buffer
    for n in range(4000):  # ~800 KB of ls lines, through print's buffer
        big.file(f"f{n:04d}")
    write_oci_layout(tmp_path / "big", "fbtest/big:1", [big.tobytes()], {})
    for args in (["image", "cat", f"oci:{tmp_path / 'big'}", "/big"],
                 ["image", "export", f"oci:{tmp_path / 'big'}", "-o", "-"],
                 ["image", "ls", "-R", "--json", f"oci:{tmp_path / 'big'}"]):
        p = subprocess.Popen([sys.executable, "-m", "fusebundle", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env_for(tmp_path / "c"))
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.read(1)
        p.stdout.close()
        err = p.stderr.read()
        assert p.wait(timeout=120) != 0
        assert err == b""


def test_diff_of_a_config_and_a_file_that_is_neither(image: dict[str, Any],
                                                      tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("just: [some text\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"onboot:\n  - name: x\n    image: {REF}\n")
    r = run("diff", "--from", f"oci:{image['layout']}", cfg, junk, cache=tmp_path / "c")
    assert "notes.txt" in _one_line(r, 2)


# ------------------------------------------------------------------------------ the engine
def test_docker_daemon_transport_gives_the_layers(tmp_path: Path, dockerd: Any, fb: Any,
                                                  cache_dir: Path) -> None:
    ref = "fbtest/engine:1"
    tars = [b.tobytes() for b in _layers(cross_link=False)]
    paths = []
    for n, t in enumerate(tars):
        paths.append(tmp_path / f"layer{n}.tar")
        paths[-1].write_bytes(t)
    write_oci_layout(tmp_path / "layout", ref, tars, {})
    with open(docker_archive(tmp_path, paths, ref), "rb") as f:
        dockerd.client.images.load(f.read())
    r = fb("image", "ls", "--json", "-R", f"docker-daemon:{ref}")
    assert r.returncode == 0, r.stderr
    got = {x["path"]: x for x in map(json.loads, r.stdout.splitlines())}
    assert got == ls_json(f"oci:{tmp_path / 'layout'}:{ref}", "-R", cache=tmp_path / "c2")
    assert got["/data/b2"]["layer"] == 1 and "/gone" not in got
    out = tmp_path / "daemon.tar"
    r = fb("image", "export", f"docker-daemon:{ref}", "-o", out)
    assert r.returncode == 0, r.stderr
    if HAVE_UMOCI:
        want = _walk(umoci_rootfs(tmp_path / "layout", ref, tmp_path / "umoci"))
        assert _walk(untar(out, tmp_path / "ours")) == want
    assert list((cache_dir / "saves").iterdir()) == []  # the save is gone once stored
    shutil.rmtree(cache_dir / "saves")
    again = fb("image", "cat", f"docker-daemon:{ref}", "/etc/motd")
    assert again.stdout == "hello from the top layer\n", again.stderr
    assert not (cache_dir / "saves").exists()  # the same image ID: no second save
    # the second oracle: `docker export` of a container, minus what docker adds to one (its
    # init layer's paths; the mtimes of /dev and /etc it writes into), seconds for mtimes and
    # no xattrs but security.capability, as it exports them
    container = dockerd.client.containers.create(ref, command=["/bin/true"])
    try:
        exported = tmp_path / "docker-export.tar"
        with open(exported, "wb") as f:
            for chunk in container.export():
                f.write(chunk)
    finally:
        container.remove(force=True)
    assert _members(out, docker=True) == _members(exported, docker=True)


DOCKER_MADE = {".dockerenv", "dev/console", "dev/pts", "dev/shm", "etc/hostname", "etc/hosts",
               "etc/mtab", "etc/resolv.conf", "proc", "sys"}


def _members(tar: Path, docker: bool = False) -> dict[str, tuple]:
    """name -> (type, mode, owner, mtime, content, link, device) of a tar's members."""
    out = {}
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            name = m.name.rstrip("/")
            if docker and name in DOCKER_MADE:
                continue
            body = t.extractfile(m).read() if m.isreg() else None
            mtime = None if docker and name in ("dev", "etc") else int(m.mtime)
            out[name] = (m.type, m.mode & 0o7777, m.uid, m.gid, mtime,
                         body and hashlib.sha256(body).hexdigest(), m.linkname,
                         (m.devmajor, m.devminor) if m.ischr() or m.isblk() else None)
    return out


# ------------------------------------------------------------------------------ image mount
@pytest.fixture
def mnt(tmp_path: Path) -> Any:
    if not HAVE_FUSE:
        pytest.skip("needs /dev/fuse, fusermount3 and root")
    made: list[Path] = []

    def point(name: str) -> Path:
        made.append(tmp_path / name)
        made[-1].mkdir()
        return made[-1]

    yield point
    for p in made:
        if os.path.ismount(p):
            run("umount", p, cache=tmp_path / "c")
        if os.path.ismount(p):
            subprocess.run(["fusermount3", "-uz", str(p)], check=False)


def test_image_mount_equals_umoci_raw_unpack(image: dict[str, Any], tmp_path: Path,
                                             mnt: Any) -> None:
    point = mnt("m")
    r = run("image", "mount", oci(image), point, cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert os.path.ismount(point)
    want = _walk(umoci_rootfs(image["layout"], REF, tmp_path / "umoci"))
    got = _walk(point)
    assert got == want and "etc/motd" in got[0]
    assert run("umount", point, cache=tmp_path / "c").returncode == 0
    assert not os.path.ismount(point)


def test_image_mount_layers_shows_each_layer_with_its_whiteouts(image: dict[str, Any],
                                                                tmp_path: Path,
                                                                mnt: Any) -> None:
    point = mnt("m")
    r = run("image", "mount", "--layers", oci(image), point, cache=tmp_path / "c")
    assert r.returncode == 0, r.stderr
    hexes = [d.partition(":")[2] for d in image["diff_ids"]]
    assert sorted(os.listdir(point)) == ["layers", "rootfs"]
    assert os.listdir(point / "layers") == [f"{n:02d}-{h}" for n, h in enumerate(hexes)]
    one = point / "layers" / f"01-{hexes[1]}"
    assert (one / ".wh.gone").is_file() and (one / "d2" / ".wh..wh..opq").is_file()
    assert (point / "layers" / f"00-{hexes[0]}" / "gone" / "x").read_text() == "whited out\n"
    assert not (point / "rootfs" / "gone").exists()
    assert (point / "rootfs" / "etc" / "motd").read_text() == "hello from the top layer\n"
    with tarfile.open(image["layers"][1]) as t:
        names = {m.name for m in t.getmembers()}
    # its link to a file of the layer below has nothing to be in this tree (ls --layer has it)
    assert names - set(_walk(one)[0]) == {"data/a3"} and set(_walk(one)[0]) <= names


def test_image_mount_of_a_missing_image_mounts_nothing(image: dict[str, Any], tmp_path: Path,
                                                       mnt: Any) -> None:
    point = mnt("m")
    line = _one_line(run("image", "mount", oci(image, "fbtest/nope:1"), point,
                         cache=tmp_path / "c"))
    assert "it has: fbtest/img:1" in line and not os.path.ismount(point)


# ------------------------------------------------------------------------------ --json
def test_cache_ls_json_is_one_document(image: dict[str, Any], tmp_path: Path) -> None:
    cache = tmp_path / "c"
    assert run("image", "ls", oci(image), cache=cache).returncode == 0
    r = run("cache", "ls", "--json", "--cache-dir", cache, cache=cache)
    doc = json.loads(r.stdout)
    assert doc["root"] == str(cache)
    (im,) = doc["images"]
    assert im["name"] == "docker.io/fbtest/img:1" and im["source"] == f"oci:{image['layout']}"
    assert [x["diff_id"] for x in im["layers"]] == image["diff_ids"]
    assert all(x["present"] for x in im["layers"])
    assert sorted(x["diff_id"] for x in doc["layers"]) == sorted(image["diff_ids"])
    assert all(x["used_by"] == ["docker.io/fbtest/img:1"] and x["size"] > 0
               for x in doc["layers"])
    assert [Path(m["path"]).name for m in doc["merged"]] == [
        im["config_digest"][7:] + ".image.idx"]


def test_config_json_is_one_document(image: dict[str, Any], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"onboot:\n  - name: x\n    image: {REF}\nservices:\n  - name: y\n"
                   f"    image: {REF}\n")
    src = ["--from", f"oci:{image['layout']}"]
    one = run("config", *src, "--json", cfg, cache=tmp_path / "c")
    many = run("config", *src, cfg, cache=tmp_path / "c")
    assert one.returncode == 0 and many.returncode == 0, one.stderr + many.stderr
    docs, text, pos = [], many.stdout, 0
    while text[pos:].strip():
        doc, end = json.JSONDecoder().raw_decode(text, pos)
        docs.append(doc)
        pos = end + 1
    assert json.loads(one.stdout) == docs and [d["bundle"] for d in docs] == [
        "containers/onboot/000-x", "containers/services/y"]


# umoci refuses old GNU sparse members (typeflag 'S'); the PAX forms it reads.
@pytest.mark.parametrize(("fmt", "version"), [("pax", "0.1"), ("pax", "1.0")])
def test_export_and_mount_of_sparse_files_equal_umoci(tmp_path: Path, mnt: Any, fmt: str,
                                                      version: str | None) -> None:
    layer, want_bytes = sparse_layer(tmp_path, fmt, version)
    top = RootfsBuilder().dir("data").file("data/top", "on top\n")
    write_oci_layout(tmp_path / "lay", "fbtest/sparse:1", [layer.read_bytes(), top.tobytes()],
                     {})
    spelled = f"oci:{tmp_path / 'lay'}"
    want = _walk(umoci_rootfs(tmp_path / "lay", "fbtest/sparse:1", tmp_path / "umoci"))
    assert (tmp_path / "umoci" / "data" / "sparse.bin").read_bytes() == want_bytes
    out = tmp_path / "export.tar"
    assert run("image", "export", spelled, "-o", out, cache=tmp_path / "c").returncode == 0
    assert _walk(untar(out, tmp_path / "ours")) == want
    point = mnt("m")
    assert run("image", "mount", spelled, point, cache=tmp_path / "c").returncode == 0
    assert _walk(point) == want
    r = subprocess.run([sys.executable, "-m", "fusebundle", "image", "cat", spelled,
                        "/data/sparse.bin"], capture_output=True, env=env_for(tmp_path / "c"),
                       check=False, timeout=120)
    assert r.returncode == 0 and r.stdout == want_bytes


# ------------------------------------------------------------------------------ units
def test_the_image_merge_is_docker_merge_without_its_artefacts(tmp_path: Path) -> None:
    from fusebundle.images.flatten import MergedIndex, merge
    from fusebundle.tar.index import TarIndex
    builders = _layers()
    paths = [b.write(tmp_path / f"l{n}.tar") for n, b in enumerate(builders)]
    digests = [f"sha256:{n:064x}" for n in range(len(paths))]
    docker = merge([TarIndex.scan(str(p)) for p in paths], digests, "x", str(tmp_path / "d.idx"))
    own = merge([TarIndex.scan(str(p)) for p in paths], digests, "x", str(tmp_path / "o.idx"),
                docker=False)
    own.save()
    back = MergedIndex.load(str(tmp_path / "o.idx"), [str(p) for p in paths])
    assert back is not None
    d = {e.name: e for e in docker}
    o = {e.name: e for e in back}
    assert {b".dockerenv", b"proc", b"sys", b"etc/hosts"} <= set(d) - set(o)
    assert set(o) <= set(d)
    assert d[b"data/ns"].mtime_ns == 1400000000 * 10**9  # docker truncates
    assert o[b"data/ns"].mtime_ns == 1400000000123456789
    assert d[b"data/attr"].xattrs == {} and o[b"data/attr"].xattrs == {
        "user.fb": b"one", "user.other": b"two"}
    names = [e.name for e in back]
    layer = {n: back.layer_of(i) for i, n in enumerate(names)}
    assert layer[b"etc"] == 2 and layer[b"etc/passwd"] == 1 and layer[b"bin/tool"] == 0
    assert layer[b"data/a3"] == 1 and layer[b"data/a2"] == 0  # a link's own header


def test_same_stored_bytes_are_equal_without_reading() -> None:
    from fusebundle.bundle.entry import Entry
    from fusebundle.cli.image import _same_bytes
    from fusebundle.tar import Extent, Source
    gone = "/nonexistent/layer.tar"  # opening it would fail: the index must decide alone
    a = Entry(path=b"f", type="f", mode=0o644, size=3, body=Extent(Source(gone), 512, 3))
    assert _same_bytes(a, Entry(path=b"f", type="f", mode=0o600, size=3,
                                body=Extent(Source(gone), 512, 3)))
    assert not _same_bytes(a, Entry(path=b"f", type="f", mode=0o644, size=4,
                                    body=Extent(Source(gone), 1024, 4)))
    with pytest.raises(FileNotFoundError):
        _same_bytes(a, Entry(path=b"f", type="f", mode=0o644, size=3,
                             body=Extent(Source(gone), 1024, 3)))


@pytest.mark.parametrize("name", [b"plain", b'quo"te\\back', "é ü €".encode(), b"bad\xff\xfe",
                                  b"tab\tnew\nline"])
def test_ls_json_lines_are_json_whatever_the_name(name: bytes) -> None:
    from fusebundle.bundle.imagefs import Row
    from fusebundle.cli.image import row_json
    for row in (Row(name, "l", 0o777, 1, 2, 0, 1_500_000_000_250_000_000, name, 3,
                    "sha256:" + "a" * 64),
                Row(name, "d", 0o1777, 0, 0, 0, 0, None, None, None)):
        doc = json.loads(row_json(row, "f" * 64, True))
        assert doc == {"path": "/" + os.fsdecode(name), "type": TYPES_OF[row.type],
                       "mode": f"{row.mode:04o}", "uid": row.uid, "gid": row.gid, "size": 0,
                       "mtime": row.mtime_ns / 1e9 if row.mtime_ns % 10**9 else
                       row.mtime_ns // 10**9,
                       "link": None if row.link is None else os.fsdecode(row.link),
                       "layer": row.layer, "diff_id": row.diff_id, "sha256": "f" * 64}
        assert list(doc) == [*KEYS, "sha256"]


TYPES_OF = {"l": "symlink", "d": "dir"}


def test_listings_of_an_index_large_enough_to_be_mapped(tmp_path: Path) -> None:
    b = RootfsBuilder().dir("a").dir("many")
    for n in range(600):  # names past a page: the saved index's blob is used through mmap
        b.file(f"many/file-with-a-long-name-{n:04d}", str(n))
    b.dir("many/sub").file("many/sub/deep", "deep\n").dir("z").file("z/last", "z\n")
    write_oci_layout(tmp_path / "lay", "fbtest/many:1", [b.tobytes()], {})
    spelled, cache = f"oci:{tmp_path / 'lay'}", tmp_path / "c"
    for _ in range(2):  # merged and saved, then loaded from the store
        top = run("image", "ls", spelled, cache=cache)
        assert top.stdout.splitlines() == ["/a", "/many", "/z"], top.stderr
        many = run("image", "ls", spelled, "/many", cache=cache).stdout.splitlines()
        assert len(many) == 601 and many[-1] == "/many/sub"
        sub = run("image", "ls", "-R", spelled, "/many/sub", "/z", cache=cache).stdout
        assert sub.splitlines() == ["/many/sub/deep", "/z/last"]
        out = tmp_path / "sub.tar"
        assert run("image", "export", spelled, "/many/sub", "-o", out,
                   cache=cache).returncode == 0
        with tarfile.open(out) as t:
            assert t.getnames() == ["many/sub", "many/sub/deep"]


def test_prune_keeps_the_image_merge_of_a_recorded_image(image: dict[str, Any],
                                                         tmp_path: Path) -> None:
    cache = tmp_path / "c"
    assert run("image", "ls", oci(image), cache=cache).returncode == 0
    (kept,) = (cache / "merged").glob("*.image.idx")
    r = run("cache", "prune", "--cache-dir", cache, cache=cache)
    assert r.returncode == 0 and kept.exists(), r.stdout
    for record in (cache / "images").glob("*.json"):
        record.unlink()  # no image uses it now: its layers and merge go
    r = run("cache", "prune", "--cache-dir", cache, cache=cache)
    assert f"removed merged index {kept}" in r.stdout and not kept.exists()


def test_export_refuses_a_bad_output_before_fetching(image: dict[str, Any],
                                                     tmp_path: Path) -> None:
    cache = tmp_path / "c"
    line = _one_line(run("image", "export", oci(image), "-o", tmp_path / "no" / "x.tar",
                         cache=cache))
    assert "does not exist" in line
    assert not list(cache.glob("layers/sha256/*.tar"))  # said before any layer was fetched


def test_the_one_image_of_a_layout_needs_no_name(image: dict[str, Any], tmp_path: Path) -> None:
    lay = tmp_path / "unnamed"
    write_oci_layout(lay, "x", [RootfsBuilder().file("hello", "hi\n").tobytes()], {})
    index = json.loads((lay / "index.json").read_text())
    del index["manifests"][0]["annotations"]  # as `skopeo copy IMAGE oci:DIR` leaves it
    (lay / "index.json").write_text(json.dumps(index))
    r = run("image", "cat", f"oci:{lay}", "/hello", cache=tmp_path / "c")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    doc = json.loads(run("image", "inspect", f"oci:{lay}", cache=tmp_path / "c").stdout)
    assert doc["manifest_digest"] == index["manifests"][0]["digest"]


def test_a_save_of_one_untagged_image_says_so(image: dict[str, Any], tmp_path: Path) -> None:
    import io
    out = tmp_path / "untagged.tar"
    with tarfile.open(image["save"]) as src, tarfile.open(out, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "manifest.json":
                doc = json.loads(data)
                doc[0]["RepoTags"] = None  # as `docker save IMAGE-ID` writes it
                data = json.dumps(doc).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    line = _one_line(run("image", "ls", f"docker-archive:{out}", cache=tmp_path / "c"))
    assert "has no tag to find it by (it has: <untagged " in line
