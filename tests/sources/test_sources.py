"""Engine-free image sources: references, manifests, OCI layouts and `docker save` archives.

The references are checked against a table of docker's own normalisations (distribution's
`reference` package tests: ParseNormalizedNamed, FamiliarString, String); the layouts and
archives are made by real tools (a private dockerd's `docker save`, `skopeo copy`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from support.imagetools import RootfsBuilder, busybox_bytes, import_image

from fusebundle.errors import UserError
from fusebundle.sources import manifest as mf
from fusebundle.sources import reference
from fusebundle.sources.archive import DockerArchive
from fusebundle.sources.base import NotFound, Platform
from fusebundle.sources.oci import OCILayout

H = "86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
D = "sha256:" + H

# input -> (full name, familiar): what docker's reference package makes of them.
NORMALISED = [
    ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("alpine:3.13", "docker.io/library/alpine:3.13", "alpine:3.13"),
    ("docker.io/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("index.docker.io/library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("linuxkit/init:v1", "docker.io/linuxkit/init:v1", "linuxkit/init:v1"),
    ("fooo/bar", "docker.io/fooo/bar:latest", "fooo/bar:latest"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    ("localhost:5000/x:1", "localhost:5000/x:1", "localhost:5000/x:1"),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
    ("localhost", "docker.io/library/localhost:latest", "localhost:latest"),
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000/private/moonbase:latest",
     "127.0.0.1:8000/private/moonbase:latest"),
    ("example.com/privatebase", "example.com/privatebase:latest",
     "example.com/privatebase:latest"),
    ("test-com:8080/foo", "test-com:8080/foo:latest", "test-com:8080/foo:latest"),
    ("test_com/foo", "docker.io/test_com/foo:latest", "test_com/foo:latest"),
    ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest", "xn--n3h.com:18080/foo:latest"),
    # IPv6 domains: distribution's grammar today (the 20.10 engine here still rejects them).
    ("[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker:latest",
     "[fc00::1]:5000/docker/docker:latest"),
    ("dock__er/docker---rules", "docker.io/dock__er/docker---rules:latest",
     "dock__er/docker---rules:latest"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", f"busybox@{D}"),
    (f"busybox:latest@{D}", f"docker.io/library/busybox:latest@{D}", f"busybox:latest@{D}"),
    (f"localhost:5000/a/b:v2@{D}", f"localhost:5000/a/b:v2@{D}", f"localhost:5000/a/b:v2@{D}"),
    ("a:Tag_1.x-y", "docker.io/library/a:Tag_1.x-y", "a:Tag_1.x-y"),
]

INVALID = [
    "", " alpine", "alpine ", "https://github.com/docker/docker", "docker/Docker",
    "docker.io/docker/Docker", "-docker", "-docker/docker", "docker-/docker", "docker///docker",
    "____/____", "_docker/_docker", "dock..er/docker", "dock_.er/docker", "dock-.er/docker",
    "docker/", "[fc00::1]", "fc00::1:5000/debian", "[fe80::1%eth0]:5000/debian", H,
    "alpine:", "alpine:-tag", "alpine:" + "t" * 129, "alpine@", "alpine@sha256:abc",
    f"alpine@sha256:{H.upper()}", f"alpine@sha256:{H}00", "alpine@:" + H,
    "a" * 250 + "/" + "b" * 10, "alpine:1:2", "ALPINE", "Foo/bar",
]


@pytest.mark.parametrize(("text", "full", "familiar"), NORMALISED)
def test_reference_normalised_as_docker_does(text: str, full: str, familiar: str) -> None:
    ref = reference.parse(text)
    assert ref.name == full
    assert ref.familiar == familiar
    # Normalisation is idempotent both ways: the full and the familiar form parse back to it.
    assert reference.parse(full) == ref
    assert reference.parse(familiar) == ref


def test_reference_fields() -> None:
    ref = reference.parse(f"localhost:5000/a/b:v2@{D}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("localhost:5000", "a/b", "v2", D)
    assert ref.repository == "localhost:5000/a/b"
    pinned = reference.parse(f"alpine@{D}")
    assert pinned.tag == ""  # no default tag beside a digest
    assert reference.parse("alpine").tag == "latest"
    assert reference.parse("alpine").repository == "docker.io/library/alpine"


@pytest.mark.parametrize("text", INVALID)
def test_reference_invalid_is_one_line(text: str) -> None:
    with pytest.raises(UserError) as exc:
        reference.parse(text)
    message = str(exc.value)
    assert message.startswith("invalid reference format: ")
    assert "\n" not in message


def test_reference_other_digest_algorithms_are_named_unsupported() -> None:
    text = "alpine@sha512:" + "ab" * 64
    with pytest.raises(UserError) as exc:
        reference.parse(text)
    assert "'sha512'" in str(exc.value) and "only sha256" in str(exc.value)
    assert "\n" not in str(exc.value)
    # A syntactically broken digest is a format error, not an unsupported algorithm.
    with pytest.raises(UserError, match="invalid reference format"):
        reference.parse("alpine@sha512:xyz")


def test_reference_normalise_helper() -> None:
    assert reference.normalise("alpine") == "docker.io/library/alpine:latest"
    assert reference.normalise("Not A Ref") is None


# -- images from a real engine, saved and copied by real tools --------------------------------
AMD64 = Platform("linux", "amd64")
APP = "fbsrc/app:2"  # four layers over the base: files, a whiteout, one layer twice
BASE = "fbsrc/base:1"

DOCKERFILE = """\
FROM fbsrc/base:1
RUN echo one > /a && mkdir /d && echo x > /d/f
RUN rm /d/f && echo two > /a2
RUN echo same > /s && touch -d "2020-01-01 00:00:00" /s
RUN echo same > /s && touch -d "2020-01-01 00:00:00" /s
"""


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_all(f: Any) -> bytes:
    with f:
        return f.read()


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def docker_cli(engine: Any, *args: str) -> None:
    subprocess.run(["docker", "-H", engine.host, *args], check=True, capture_output=True,
                   timeout=120)


def skopeo(*args: str) -> None:
    done = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"skopeo {' '.join(args)}: {done.stderr.strip()}"


class Built:
    """The test images: engine facts, a docker-save tar and a skopeo-made OCI layout."""

    def __init__(self, root: Path, engine: Any) -> None:
        self.root = root
        self.api = engine.client.api
        self.app = self.api.inspect_image(APP)
        self.base = self.api.inspect_image(BASE)
        self.save = root / "save.tar"
        docker_cli(engine, "save", "-o", str(self.save), APP, BASE)
        # skopeo 1.9.3 takes a symlinked layer.tar's size from the link (0) and then fails
        # "Size mismatch" copying it uncompressed.  Which image's copy of the shared base
        # layer docker makes the link varies from save to save (Go map order), so skopeo
        # reads a save of APP alone, where only the repeat above a real copy is a link.
        self.app_save = root / "app.tar"
        docker_cli(engine, "save", "-o", str(self.app_save), APP)
        self.layout = root / "layout"
        skopeo("copy", f"docker-archive:{self.app_save}", f"oci:{self.layout}:v2")
        index = json.loads((self.layout / "index.json").read_text())
        self.manifest_digest = index["manifests"][0]["digest"]

    def copy_layout(self, dest: Path) -> Path:
        shutil.copytree(self.layout, dest)
        return dest


@pytest.fixture(scope="module")
def built(dockerd, tmp_path_factory) -> Built:
    tmp = tmp_path_factory.mktemp("sources")
    r = RootfsBuilder()
    r.dir("bin").file("bin/busybox", busybox_bytes(), mode=0o755)
    for applet in ("sh", "echo", "rm", "mkdir", "touch"):
        r.symlink("bin/" + applet, "busybox")
    r.dir("etc").file("etc/motd", "base\n").dir("tmp", mode=0o1777)
    import_image(dockerd.client, r.write(tmp / "base.tar"), BASE,
                 ['CMD ["/bin/sh"]', "ENV PATH=/bin"])
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    dockerd.client.images.build(path=str(ctx), tag=APP, rm=True, network_mode="none")
    return Built(tmp, dockerd)


def test_docker_archive_2010_resolves_as_the_engine_has_it(built: Built) -> None:
    src = DockerArchive(str(built.save))
    assert src.name == f"docker-archive:{built.save}"
    image = src.resolve(APP, AMD64)
    assert image.config_digest == built.app["Id"]
    assert [layer.diff_id for layer in image.layers] == built.app["RootFS"]["Layers"]
    assert len(image.layers) == 5  # base + four RUNs (the last two make the same layer)
    assert image.layers[3].diff_id == image.layers[4].diff_id  # saved as a symlink
    assert image.name == "docker.io/fbsrc/app:2" and image.ref == APP
    assert image.platform == "linux/amd64" and image.manifest_digest == ""
    for layer in image.layers:
        assert layer.media_type == mf.DOCKER_LAYER and layer.digest == layer.diff_id
        data = read_all(src.open_blob(image, layer))
        assert sha256(data) == layer.diff_id and len(data) == layer.size
    # Another reader of the same archive (a later step, say) serves the image's blobs too.
    fresh = DockerArchive(str(built.save))
    assert sha256(read_all(fresh.open_blob(image, image.layers[4]))) == image.layers[4].diff_id
    # The base is in the same archive; full and familiar names find it.
    base = src.resolve("docker.io/fbsrc/base:1", AMD64)
    assert base.config_digest == built.base["Id"]
    assert base.layers[0].diff_id == image.layers[0].diff_id


def test_save_20_10_repeats_a_layer_as_a_symlink(built: Built) -> None:
    # The fact the archive reader relies on: what docker 20.10 writes for a repeated layer.
    with tarfile.open(built.save) as t:
        links = [m for m in t.getmembers() if m.issym() and m.name.endswith("/layer.tar")]
    assert links and all(m.linkname.startswith("../") for m in links)


def test_oci_layout_from_skopeo_by_tag(built: Built) -> None:
    src = OCILayout(str(built.layout))
    assert src.name == f"oci:{built.layout}"
    image = src.resolve("fbsrc/app:v2", AMD64)  # skopeo wrote ref.name "v2": the tag alone
    assert image.manifest_digest == built.manifest_digest
    assert [layer.diff_id for layer in image.layers] == built.app["RootFS"]["Layers"]
    config = json.loads(image.config_bytes)
    assert config["rootfs"]["diff_ids"] == built.app["RootFS"]["Layers"]
    assert image.config["Cmd"] == built.app["Config"]["Cmd"]
    for layer in image.layers:
        assert layer.media_type == mf.OCI_LAYER_GZIP
        blob = read_all(src.open_blob(image, layer))
        assert sha256(blob) == layer.digest and len(blob) == layer.size
        assert sha256(gzip.decompress(blob)) == layer.diff_id


def _edit_index(layout: Path, edit: Any) -> None:
    path = layout / "index.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


def _annotate(**annotations: str) -> Any:
    def edit(index: dict) -> None:
        index["manifests"][0]["annotations"] = annotations
    return edit


def test_oci_layout_by_full_name_as_linuxkit_writes_it(built: Built, tmp_path: Path) -> None:
    layout = built.copy_layout(tmp_path / "linuxkit")
    _edit_index(layout, _annotate(**{mf.REF_NAME: "docker.io/fbsrc/app:2"}))
    src = OCILayout(str(layout))
    for ref in ("fbsrc/app:2", "docker.io/fbsrc/app:2", "index.docker.io/fbsrc/app:2"):
        assert src.resolve(ref, AMD64).manifest_digest == built.manifest_digest
    with pytest.raises(NotFound) as exc:
        src.resolve("fbsrc/app:3", AMD64)
    assert one_line(exc) == f"oci:{layout}: no image fbsrc/app:3 (it has: docker.io/fbsrc/app:2)"
    # A familiar name written as ref.name matches the normalised reference too.
    _edit_index(layout, _annotate(**{mf.REF_NAME: "fbsrc/app:2"}))
    assert src.resolve("docker.io/fbsrc/app:2", AMD64).manifest_digest == built.manifest_digest


def test_oci_layout_by_containerd_name_and_by_digest(built: Built, tmp_path: Path) -> None:
    layout = built.copy_layout(tmp_path / "ctrname")
    _edit_index(layout, _annotate(**{mf.CONTAINERD_NAME: "docker.io/fbsrc/app:2"}))
    src = OCILayout(str(layout))
    assert src.resolve(APP, AMD64).manifest_digest == built.manifest_digest
    pinned = f"fbsrc/app@{built.manifest_digest}"
    image = OCILayout(str(built.layout)).resolve(pinned, AMD64)
    assert image.manifest_digest == built.manifest_digest
    assert image.name == f"docker.io/fbsrc/app@{built.manifest_digest}"
    other = "sha256:" + "0" * 64
    with pytest.raises(NotFound, match=f"no image fbsrc/app@{other} "):
        OCILayout(str(built.layout)).resolve(f"fbsrc/app@{other}", AMD64)


# -- hand-written indexes: platforms, attestations, LinuxKit's partial cache -------------------
def put_blob(layout: Path, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    digest = sha256(data)
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}


def blob_file(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest[7:]


def _manifest_of(layout: Path, digest: str) -> dict[str, Any]:
    return json.loads(blob_file(layout, digest).read_bytes())


def _variant(layout: Path, base: dict[str, Any], arch: str, variant: str = "") -> dict:
    """A manifest of the same layers whose config says ARCH/VARIANT; returns its descriptor."""
    config = json.loads(blob_file(layout, base["config"]["digest"]).read_bytes())
    config["architecture"] = arch
    if variant:
        config["variant"] = variant
    cdesc = put_blob(layout, json.dumps(config).encode(), mf.OCI_CONFIG)
    doc = dict(base, config=cdesc)
    platform = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
    return put_blob(layout, json.dumps(doc).encode(), mf.OCI_MANIFEST, platform=platform)


@pytest.fixture(params=[mf.OCI_INDEX, mf.DOCKER_MANIFEST_LIST])
def multi(built: Built, tmp_path: Path, request) -> tuple[Path, dict[str, str]]:
    """A layout whose one name is an index: an attestation, linux/amd64, linux/arm64/v8.

    LinuxKit's cache holds Docker manifest lists as well as OCI indexes.
    """
    layout = built.copy_layout(tmp_path / "multi")
    base = _manifest_of(layout, built.manifest_digest)
    amd = _variant(layout, base, "amd64")
    arm = _variant(layout, base, "arm64", "v8")
    att = put_blob(layout, json.dumps(dict(base, layers=[])).encode(), mf.OCI_MANIFEST,
                   platform={"os": "unknown", "architecture": "unknown"},
                   annotations={"vnd.docker.reference.type": "attestation-manifest",
                                "vnd.docker.reference.digest": amd["digest"]})
    index = {"schemaVersion": 2, "mediaType": request.param, "manifests": [att, amd, arm]}
    idesc = put_blob(layout, json.dumps(index).encode(), request.param,
                     annotations={mf.REF_NAME: "docker.io/fbsrc/multi:1"})
    _edit_index(layout, lambda i: i.update(manifests=[idesc]))
    return layout, {"amd64": amd["digest"], "arm64": arm["digest"], "index": idesc["digest"]}


def test_index_picks_the_platform_and_skips_attestations(multi) -> None:
    layout, digests = multi
    src = OCILayout(str(layout))
    amd = src.resolve("fbsrc/multi:1", AMD64)
    assert amd.manifest_digest == digests["amd64"] and amd.platform == "linux/amd64"
    for plat in ("linux/arm64", "linux/arm64/v8"):
        arm = src.resolve("fbsrc/multi:1", Platform.parse(plat))
        assert arm.manifest_digest == digests["arm64"] and arm.platform == "linux/arm64/v8"
    assert arm.layers == amd.layers
    with pytest.raises(NotFound) as exc:
        src.resolve("fbsrc/multi:1", Platform.parse("linux/s390x"))
    assert one_line(exc).endswith(
        "no image for platform linux/s390x (it has: linux/amd64, linux/arm64/v8)")
    with pytest.raises(NotFound, match=r"it has: linux/amd64, linux/arm64/v8\)"):
        src.resolve("fbsrc/multi:1", Platform.parse("linux/arm64/v7"))
    # Pinned by the index digest or by one platform's manifest digest.
    assert src.resolve(f"fbsrc/multi@{digests['index']}", AMD64).manifest_digest == \
        digests["amd64"]
    assert src.resolve(f"fbsrc/multi@{digests['arm64']}", Platform.parse("linux/arm64")
                       ).manifest_digest == digests["arm64"]


def test_other_platforms_blobs_may_be_missing_but_not_the_chosen_ones(multi) -> None:
    layout, digests = multi
    arm = _manifest_of(layout, digests["arm64"])
    blob_file(layout, digests["arm64"]).unlink()  # as LinuxKit's cache keeps only one
    blob_file(layout, arm["config"]["digest"]).unlink()
    src = OCILayout(str(layout))
    assert src.resolve("fbsrc/multi:1", AMD64).manifest_digest == digests["amd64"]
    with pytest.raises(UserError) as exc:
        OCILayout(str(layout)).resolve("fbsrc/multi:1", Platform.parse("linux/arm64"))
    assert one_line(exc) == (f"oci:{layout}: fbsrc/multi:1: manifest blob {digests['arm64']} "
                             "is missing from the layout")


def test_choose_on_a_docker_manifest_list() -> None:
    def desc(arch: str, variant: str = "", digit: str = "1") -> dict[str, Any]:
        plat = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return {"mediaType": mf.DOCKER_MANIFEST, "digest": "sha256:" + digit * 64, "size": 1,
                "platform": plat}
    listing = {"schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST_LIST,
               "manifests": [desc("arm", "v6", "1"), desc("arm", "", "2"), desc("arm64", "", "3")]}
    assert mf.choose(listing, Platform.parse("linux/arm"), "x")["digest"] == "sha256:" + "2" * 64
    assert mf.choose(listing, Platform.parse("linux/arm/v6"), "x")["digest"] == \
        "sha256:" + "1" * 64
    assert mf.choose(listing, Platform.parse("linux/arm64/v8"), "x")["digest"] == \
        "sha256:" + "3" * 64
    with pytest.raises(NotFound, match=r"^x: no image for platform linux/amd64 \(it has: "
                       r"linux/arm, linux/arm/v6, linux/arm64\)$"):
        mf.choose(listing, AMD64, "x")


# -- a Docker >= 25 save: an OCI layout inside the tar, beside manifest.json -------------------
def tar_dir(src: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as t:
        for path in sorted(src.rglob("*")):
            t.add(path, arcname=str(path.relative_to(src)), recursive=False)
    return dest


def member_bytes(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def save_manifest(archive: Path) -> list[dict[str, Any]]:
    return json.loads(member_bytes(archive, "manifest.json"))


@pytest.fixture(scope="module")
def save25(built: Built, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """What docker >= 25 saves for APP and BASE: uncompressed OCI layers, blobs by digest."""
    tmp = tmp_path_factory.mktemp("save25")
    layout = tmp / "layout"
    skopeo("copy", "--dest-oci-accept-uncompressed-layers",
           f"docker-archive:{built.app_save}", f"oci:{layout}:2")
    app = _manifest_of(layout, json.loads((layout / "index.json").read_text())
                       ["manifests"][0]["digest"])
    # skopeo labels the layers it left uncompressed "+gzip" (containers/image does, as the
    # notes say); docker >= 25 labels them plain tar.
    for layer in app["layers"]:
        layer["mediaType"] = mf.OCI_LAYER
    app_desc = put_blob(layout, json.dumps(app).encode(), mf.OCI_MANIFEST)
    # The base: its own config as docker keeps it, and the layer it shares with APP.
    items = {i["RepoTags"][0]: i for i in save_manifest(built.save)}
    base_config = member_bytes(built.save, items[BASE]["Config"])
    cdesc = put_blob(layout, base_config, mf.OCI_CONFIG)
    base = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST, "config": cdesc,
            "layers": app["layers"][:1]}
    base_desc = put_blob(layout, json.dumps(base).encode(), mf.OCI_MANIFEST)
    # Both tagged "2" in ref.name; only the containerd name tells them apart.
    app_desc["annotations"] = {mf.CONTAINERD_NAME: "docker.io/fbsrc/app:2", mf.REF_NAME: "2"}
    base_desc["annotations"] = {mf.CONTAINERD_NAME: "docker.io/fbsrc/base:2", mf.REF_NAME: "2"}
    _edit_index(layout, lambda i: i.update(manifests=[app_desc, base_desc]))
    # manifest.json also lists BASE as fbsrc/base:1, which index.json does not have (as
    # docker 25 left untagged images out): the archive falls back to manifest.json for it.
    blobs = "blobs/sha256/"
    listing = [
        {"Config": blobs + app["config"]["digest"][7:], "RepoTags": [APP],
         "Layers": [blobs + d["digest"][7:] for d in app["layers"]]},
        {"Config": blobs + cdesc["digest"][7:], "RepoTags": [BASE, "fbsrc/base:2"],
         "Layers": [blobs + app["layers"][0]["digest"][7:]]},
    ]
    (layout / "manifest.json").write_text(json.dumps(listing) + "\n")
    return tar_dir(layout, tmp / "save25.tar"), {"app": app_desc["digest"],
                                                 "base": base_desc["digest"]}


def test_docker_archive_25_reads_the_layout_inside(built: Built, save25) -> None:
    archive, digests = save25
    src = DockerArchive(str(archive))
    app = src.resolve(APP, AMD64)
    assert app.manifest_digest == digests["app"]
    assert [layer.diff_id for layer in app.layers] == built.app["RootFS"]["Layers"]
    for layer in app.layers:
        assert layer.media_type == mf.OCI_LAYER and layer.digest == layer.diff_id
        assert sha256(read_all(src.open_blob(app, layer))) == layer.diff_id
    base = src.resolve("docker.io/fbsrc/base:2", AMD64)  # by the containerd name
    assert base.manifest_digest == digests["base"]
    assert base.config_digest == built.base["Id"]
    # Not in index.json, but in manifest.json: no manifest digest, the same image.
    old = src.resolve(BASE, AMD64)
    assert old.manifest_digest == "" and old.config_digest == built.base["Id"]
    assert sha256(read_all(src.open_blob(old, old.layers[0]))) == old.layers[0].diff_id
    with pytest.raises(NotFound) as exc:
        src.resolve("fbsrc/app:1", AMD64)
    message = one_line(exc)
    assert message.startswith(f"docker-archive:{archive}: no image fbsrc/app:1 (it has: ")
    for name in ("docker.io/fbsrc/app:2", "docker.io/fbsrc/base:2", "fbsrc/base:1"):
        assert name in message


def test_the_tag_alone_must_not_be_ambiguous(save25, tmp_path: Path) -> None:
    archive, _ = save25
    with tarfile.open(archive) as t:
        t.extractall(tmp_path / "layout", filter="data")
    layout = tmp_path / "layout"
    def drop_names(index: dict) -> None:
        for desc in index["manifests"]:
            desc["annotations"] = {mf.REF_NAME: "2"}
    _edit_index(layout, drop_names)
    with pytest.raises(UserError) as exc:
        OCILayout(str(layout)).resolve(APP, AMD64)
    assert one_line(exc) == (f"oci:{layout}: {APP}: the tag '2' alone names 2 different "
                             "images; name it in full")


# -- bad input: each one line that names the source, the image and the blob --------------------
def _rewrite_tar(src: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of tar SRC with members' data replaced (None drops the member)."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for m in tin.getmembers():
            if m.name in change:
                data = change[m.name]
                if data is None:
                    continue
                m.size = len(data)
                tout.addfile(m, io.BytesIO(data))
            else:
                tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    return dest


def test_archive_without_the_image_names_what_it_has(built: Built) -> None:
    with pytest.raises(NotFound) as exc:
        DockerArchive(str(built.save)).resolve("fbsrc/nope", AMD64)
    message = one_line(exc)
    prefix = f"docker-archive:{built.save}: no image fbsrc/nope (it has: "
    assert message.startswith(prefix) and message.endswith(")")
    assert sorted(message[len(prefix):-1].split(", ")) == [APP, BASE]
    # A 20.10 save carries no manifest digests, so a pinned reference cannot match.
    with pytest.raises(NotFound, match="no image fbsrc/app@sha256:"):
        DockerArchive(str(built.save)).resolve(f"fbsrc/app@sha256:{'1' * 64}", AMD64)


def test_layout_missing_blobs(built: Built, tmp_path: Path) -> None:
    layout = built.copy_layout(tmp_path / "l")
    src = OCILayout(str(layout))
    image = src.resolve("fbsrc/app:v2", AMD64)
    top = image.layers[-1]
    blob_file(layout, top.digest).unlink()
    with pytest.raises(UserError) as exc:
        src.open_blob(image, top)
    assert one_line(exc) == (f"oci:{layout}: fbsrc/app:v2: layer blob {top.digest} is missing "
                             "from the layout")
    config = _manifest_of(layout, built.manifest_digest)["config"]["digest"]
    blob_file(layout, config).unlink()
    with pytest.raises(UserError) as exc:
        OCILayout(str(layout)).resolve("fbsrc/app:v2", AMD64)
    assert one_line(exc) == (f"oci:{layout}: fbsrc/app:v2: config blob {config} is missing "
                             "from the layout")


@pytest.mark.parametrize("which", ["manifest", "config"])
def test_layout_corrupt_blob_is_named(built: Built, tmp_path: Path, which: str) -> None:
    layout = built.copy_layout(tmp_path / "l")
    digest = built.manifest_digest
    if which == "config":
        digest = _manifest_of(layout, digest)["config"]["digest"]
    path = blob_file(layout, digest)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x20  # one flipped bit, still JSON of the same size
    path.write_bytes(bytes(data))
    with pytest.raises(UserError) as exc:
        OCILayout(str(layout)).resolve("fbsrc/app:v2", AMD64)
    assert one_line(exc) == (f"oci:{layout}: fbsrc/app:v2 ({which}): blob {digest} is corrupt "
                             f"(its content hashes to {sha256(bytes(data))})")


def test_archive_corrupt_config_is_named(built: Built, tmp_path: Path) -> None:
    item = next(i for i in save_manifest(built.save) if i["RepoTags"] == [APP])
    config = member_bytes(built.save, item["Config"]).replace(b'"Cmd"', b'"cmd"')
    bad = _rewrite_tar(built.save, tmp_path / "bad.tar", {item["Config"]: config})
    with pytest.raises(UserError) as exc:
        DockerArchive(str(bad)).resolve(APP, AMD64)
    assert one_line(exc) == (f"docker-archive:{bad}: {APP} (config): blob {built.app['Id']} "
                             f"is corrupt (its content hashes to {sha256(config)})")


def test_unknown_layer_media_type_is_named(built: Built, tmp_path: Path) -> None:
    layout = built.copy_layout(tmp_path / "l")
    doc = _manifest_of(layout, built.manifest_digest)
    doc["layers"][1]["mediaType"] = "application/vnd.example.layer.v1+squashfs"
    desc = put_blob(layout, json.dumps(doc).encode(), mf.OCI_MANIFEST,
                    annotations={mf.REF_NAME: "v2"})
    _edit_index(layout, lambda i: i.update(manifests=[desc]))
    with pytest.raises(UserError) as exc:
        OCILayout(str(layout)).resolve("fbsrc/app:v2", AMD64)
    assert one_line(exc) == (
        f"oci:{layout}: fbsrc/app:v2 (manifest): layer {doc['layers'][1]['digest']} has an "
        "unknown media type 'application/vnd.example.layer.v1+squashfs'")


def test_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        OCILayout(str(tmp_path)).resolve("alpine", AMD64)
    assert one_line(exc) == f"oci:{tmp_path}: not an OCI image layout (no oci-layout file)"
    with pytest.raises(UserError) as exc:
        OCILayout(str(tmp_path / "nope")).resolve("alpine", AMD64)
    assert one_line(exc) == f"oci:{tmp_path / 'nope'}: no such directory"
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(UserError, match=rf"^oci:{tmp_path}: index.json: not valid JSON"):
        OCILayout(str(tmp_path)).resolve("alpine", AMD64)


def test_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"\x01" * 1024)
    with pytest.raises(UserError) as exc:
        DockerArchive(str(junk)).resolve("alpine", AMD64)
    assert one_line(exc).startswith(f"docker-archive:{junk}: not a readable tar: ")
    plain = RootfsBuilder().file("hello", "hi").write(tmp_path / "plain.tar")
    with pytest.raises(UserError) as exc:
        DockerArchive(str(plain)).resolve("alpine", AMD64)
    assert one_line(exc) == (f"docker-archive:{plain}: not a docker save archive "
                             "(no manifest.json or index.json)")
    with pytest.raises(UserError) as exc:
        DockerArchive(str(tmp_path / "none.tar")).resolve("alpine", AMD64)
    assert one_line(exc) == f"docker-archive:{tmp_path / 'none.tar'}: no such file"


def test_truncated_archive(built: Built, tmp_path: Path) -> None:
    cut = tmp_path / "cut.tar"
    data = built.save.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as exc:
        DockerArchive(str(cut)).resolve(APP, AMD64)
    assert "truncated" in one_line(exc) and one_line(exc).startswith(f"docker-archive:{cut}: ")
    # Cut after it was indexed: the blob's reader raises instead of ending short.
    cut.write_bytes(data)
    src = DockerArchive(str(cut))
    image = src.resolve(APP, AMD64)
    big = max(image.layers, key=lambda layer: layer.size)
    with src.open_blob(image, big) as f:
        head = f.read(512)
        os.truncate(cut, len(data) // 2)
        with pytest.raises(UserError) as exc:
            f.read()
    assert len(head) == 512
    assert one_line(exc).endswith("truncated (the archive ends inside it)")


def test_archive_symlink_out_of_the_archive_is_refused(tmp_path: Path) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]}})
    r = RootfsBuilder()
    r.file("manifest.json", json.dumps([{"Config": "c.json", "RepoTags": ["x:1"],
                                         "Layers": ["l/layer.tar"]}]))
    r.file("c.json", config).dir("l").symlink("l/layer.tar", "../../etc/passwd")
    archive = r.write(tmp_path / "evil.tar")
    with pytest.raises(UserError) as exc:
        DockerArchive(str(archive)).resolve("x:1", AMD64)
    assert one_line(exc) == (f"docker-archive:{archive}: member l/layer.tar links outside the "
                             "archive (../../etc/passwd)")


def test_single_platform_image_of_another_platform(built: Built) -> None:
    with pytest.raises(NotFound) as exc:
        DockerArchive(str(built.save)).resolve(APP, Platform.parse("linux/arm64"))
    assert one_line(exc) == (f"docker-archive:{built.save}: {APP}: no image for platform "
                             "linux/arm64 (it has: linux/amd64)")
    with pytest.raises(NotFound, match=r"fbsrc/app:v2: no image for platform linux/ppc64le "
                       r"\(it has: linux/amd64\)$"):
        OCILayout(str(built.layout)).resolve("fbsrc/app:v2", Platform.parse("linux/ppc64le"))


def test_manifest_checks_without_a_layout() -> None:
    config = {"mediaType": mf.DOCKER_CONFIG, "digest": D, "size": 2}
    layer = {"mediaType": mf.DOCKER_LAYER_GZIP, "digest": D, "size": 3}
    doc = {"schemaVersion": 2, "mediaType": mf.DOCKER_MANIFEST, "config": config,
           "layers": [layer, dict(layer, mediaType=mf.DOCKER_FOREIGN_LAYER_GZIP)]}
    got_config, got_layers = mf.parse_manifest(json.dumps(doc).encode(), "w")
    assert got_config == config and [d["mediaType"] for d in got_layers] == [
        mf.DOCKER_LAYER_GZIP, mf.DOCKER_FOREIGN_LAYER_GZIP]
    for bad, message in [
        ({"schemaVersion": 1, "fsLayers": []}, "w: Docker schema 1 manifests are not supported"),
        ({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": []},
         "w: an image index where an image manifest was expected"),
        (dict(doc, config=dict(config, mediaType="application/vnd.cncf.helm.config.v1+json")),
         "w: not a container image (config media type "
         "'application/vnd.cncf.helm.config.v1+json')"),
        (dict(doc, layers=[dict(layer, digest="sha512:" + "a" * 128)]),
         "w: layer: digest sha512:" + "a" * 73 + " is not sha256:<64 hex> "
         "(only sha256 is supported)"),
    ]:
        with pytest.raises(UserError) as exc:
            mf.parse_manifest(json.dumps(bad).encode(), "w")
        assert one_line(exc) == message
    # The config must list one diff_id per layer.
    cfg = json.dumps({"rootfs": {"type": "layers", "diff_ids": [D]}}).encode()
    with pytest.raises(UserError) as exc:
        mf.image_from("r", "n", "s", "linux/amd64", "", cfg, got_layers)
    assert one_line(exc) == "s: r: config lists 1 diff_ids for 2 layers"
    image = mf.image_from("r", "n", "s", "linux/amd64", "", cfg, got_layers[:1])
    assert image.layers[0].diff_id == D and image.layers[0].size == 3
    assert image.config_digest == sha256(cfg)


# input tagged in the engine -> the engine's RepoTags entry (docker's familiar form)
ENGINE_TAGS = ["docker.io/library/fbnorm:1", "index.docker.io/fbsrc/y:2", "docker.io/fbsrc/z:3",
               "localhost:5000/x:1", "localhost/x:2", "example.com:8000/a/b:c",
               "127.0.0.1:5000/lib:4"]
ENGINE_REJECTS = ["Foo/bar", "docker/Docker", "-docker", "dock..er/docker", "docker///docker",
                  "a" * 250 + "/" + "b" * 10]


def test_familiar_names_are_the_engines(dockerd, built: Built) -> None:
    api = dockerd.client.api
    for text in ENGINE_TAGS:
        repo, _, tag = text.rpartition(":")
        api.tag(built.base["Id"], repo, tag)
    tags = set(api.inspect_image(built.base["Id"])["RepoTags"])
    assert {reference.parse(t).familiar for t in ENGINE_TAGS} <= tags
    for t in ENGINE_TAGS:
        api.remove_image(reference.parse(t).familiar)
    for repo in ENGINE_REJECTS:
        with pytest.raises(docker.errors.APIError,
                           match="invalid reference format|more than 255 characters"):
            api.tag(built.base["Id"], repo, "1")
        with pytest.raises(UserError):
            reference.parse(repo + ":1")
