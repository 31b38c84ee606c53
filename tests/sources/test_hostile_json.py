"""Issue 17, defects 5 and 7: JSON from outside with odd value types or deep nesting.

Each case is a real input made here (an OCI layout or a docker-save archive written byte by
byte and run through the CLI, a record planted in a real store, a token answer from our fake
registry), bounded in time and memory; each asserts the one line, the exit status, the bundle
(a string Entrypoint is a one-element list, as Docker decodes it) and a store still listable
with nothing left in it.  Then hypothesis: any structure, any value types, any depth, for every
JSON document fusebundle reads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.fakeregistry import FakeRegistry, layer_tar, make_image
from support.faulttools import env_for, temps

from fusebundle.config.schema import LABEL_KEY, image_label
from fusebundle.errors import ConfigError, UserError
from fusebundle.sources import jsondoc
from fusebundle.sources import manifest as mf
from fusebundle.sources.archive import DockerArchive
from fusebundle.sources.base import Platform
from fusebundle.sources.engine import DockerEngine
from fusebundle.sources.oci import LayoutReader
from fusebundle.sources.regauth import RegistryError, token_answer
from fusebundle.sources.registry import Registry
from fusebundle.store import records
from fusebundle.tar import Extent, Source

AMD64 = Platform("linux", "amd64")
REF = "fbtest/odd:1"
LAYER = layer_tar({"etc/motd": b"hi\n"})
YAML = f"onboot:\n  - name: odd\n    image: {REF}\n"
DEEP = 100_000  # as the issue probed: Go stops at 10,000, fusebundle at jsondoc.MAX_DEPTH
MEMORY = 1 << 30  # address space of one CLI run: far above its need, far below a blow-up


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def deep(n: int = DEEP) -> bytes:
    """A JSON value nesting lists and objects n deep."""
    return b'{"a":[' * (n // 2) + b"1" + b"]}" * (n // 2)


def image_config(inner: Any = None, **top: Any) -> bytes:
    doc = {"architecture": "amd64", "os": "linux", "config": inner or {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": [sha(LAYER)]}}
    doc.update(top)
    return json.dumps(doc).encode()


def _blob(root: Path, data: bytes) -> str:
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / sha(data)[7:]).write_bytes(data)
    return sha(data)


def oci_layout(root: Path, config: bytes, platform: Any = None,
               index: bytes | None = None) -> Path:
    """A one-image layout of bytes written here; `platform` goes into index.json as given."""
    root.mkdir(parents=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
        "config": {"mediaType": mf.OCI_CONFIG, "digest": _blob(root, config),
                   "size": len(config)},
        "layers": [{"mediaType": mf.OCI_LAYER, "digest": _blob(root, LAYER),
                    "size": len(LAYER)}]}).encode()
    desc = {"mediaType": mf.OCI_MANIFEST, "digest": _blob(root, manifest),
            "size": len(manifest), "annotations": {mf.REF_NAME: REF},
            "platform": platform or {"os": "linux", "architecture": "amd64"}}
    (root / "index.json").write_bytes(
        index or json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode())
    return root


def save_archive(path: Path, config: bytes, manifest: bytes | None = None) -> Path:
    """A docker save archive in Docker 20.10's format (manifest.json, <id>.json, layer.tar)."""
    config_name = sha(config)[7:] + ".json"
    members = {
        "manifest.json": manifest or json.dumps(
            [{"Config": config_name, "RepoTags": [REF], "Layers": ["l1/layer.tar"]}]).encode(),
        config_name: config, "l1/layer.tar": LAYER}
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def cli(*args: str | os.PathLike, cache: Path) -> subprocess.CompletedProcess[str]:
    """The CLI as a real process, its memory and time bounded."""
    return subprocess.run([sys.executable, "-m", "fusebundle", *map(os.fspath, args)],
                          env=env_for(cache), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, preexec_fn=_limits, check=False)


def fails(r: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("fusebundle: ") and "internal error" not in lines[0], lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    assert r.returncode == code, r.stderr
    return lines[0]


def store_clean(cache: Path) -> None:
    """Nothing half-written in the store, no record, and `cache ls` still answers."""
    assert temps(cache) == []
    assert list((cache / "images").glob("*.json")) == [] if (cache / "images").exists() else True
    r = cli("cache", "ls", cache=cache)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "sys.yml").write_text(YAML)
    return tmp_path


def config_of(work: Path, source: str) -> subprocess.CompletedProcess[str]:
    return cli("config", work / "sys.yml", "--from", source, "--platform", "linux/amd64",
               cache=work / "cache")


def process_of(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return json.loads(r.stdout)["config.json"]["process"]


# -- defect 5: odd value types in an image config, through the CLI ------------------------------
REFUSED = {
    "Env-string": ({"Env": "PATH=/x"}, "'config.Env' is a string, not a list of strings"),
    "Cmd-number": ({"Cmd": 5}, "'config.Cmd' is a number, not a list of strings"),
    "Entrypoint-list-of-numbers": ({"Entrypoint": [1]}, "'config.Entrypoint[0]' is a number"),
    "WorkingDir-number": ({"WorkingDir": 5}, "'config.WorkingDir' is a number, not a string"),
    "Labels-list": ({"Labels": ["a"]}, "'config.Labels' is a list, not an object of strings"),
    "label-number": ({"Labels": {LABEL_KEY: 5}},
                     f"'config.Labels.{LABEL_KEY}' is a number, not a string"),
    "config-string": ("x", "'config' is a string, not an object"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_ill_typed_config_field_is_one_line(work: Path, case: str) -> None:
    inner, words = REFUSED[case]
    layout = oci_layout(work / "layout", json.dumps({
        "architecture": "amd64", "os": "linux", "config": inner,
        "rootfs": {"type": "layers", "diff_ids": [sha(LAYER)]}}).encode())
    r = config_of(work, f"oci:{layout}")
    fails(r, 1, f"oci:{layout}: {REF}: config: field {words}")
    store_clean(work / "cache")


def test_string_entrypoint_and_cmd_are_one_element_each(work: Path) -> None:
    """strslice.StrSlice: a string is a one-element list (not a list of its characters)."""
    layout = oci_layout(work / "layout", image_config({"Entrypoint": "abc", "Cmd": "d e"}))
    process = process_of(config_of(work, f"oci:{layout}"))
    assert process["args"] == ["abc", "d e"]


def test_null_fields_are_go_zero_values(work: Path) -> None:
    layout = oci_layout(work / "layout", image_config(
        {"Entrypoint": None, "Cmd": ["/bin/sh", None], "Env": None, "WorkingDir": None,
         "Labels": None}))
    process = process_of(config_of(work, f"oci:{layout}"))
    assert process["args"] == ["/bin/sh", ""]  # Go leaves a null array item ""
    assert process["cwd"] == "/" and "env" not in process


def test_platform_string_in_index_is_one_line(work: Path) -> None:
    layout = oci_layout(work / "layout", image_config(), platform="linux/amd64")
    r = config_of(work, f"oci:{layout}")
    fails(r, 1, f"oci:{layout}: index.json: manifest sha256:",
          "field 'platform' is a string, not an object")
    store_clean(work / "cache")


def test_platform_field_number_in_index_is_one_line(work: Path) -> None:
    layout = oci_layout(work / "layout", image_config(),
                        platform={"os": "linux", "architecture": 64})
    fails(config_of(work, f"oci:{layout}"), 1, "field 'platform.architecture' is a number")
    store_clean(work / "cache")


def test_save_rootfs_string_is_one_line(work: Path) -> None:
    archive = save_archive(work / "save.tar", json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": "layers"}).encode())
    r = config_of(work, f"docker-archive:{archive}")
    fails(r, 1, f"docker-archive:{archive}: {REF}: config: field 'rootfs' is a string, "
                "not an object")
    store_clean(work / "cache")


def test_save_with_string_env_is_one_line(work: Path) -> None:
    archive = save_archive(work / "save.tar", image_config({"Env": "PATH=/x"}))
    fails(config_of(work, f"docker-archive:{archive}"), 1, "'config.Env' is a string")
    store_clean(work / "cache")


@pytest.mark.parametrize("config", [image_config({"Env": "PATH=/x"}),
                                    image_config()[:-1] + b', "x": ' + deep() + b"}"],
                         ids=["Env-string", "deep"])
def test_pack_leaves_no_output(work: Path, config: bytes) -> None:
    layout = oci_layout(work / "layout", config)
    r = cli("pack", work / "sys.yml", "-o", work / "out.tar", "--from", f"oci:{layout}",
            "--platform", "linux/amd64", cache=work / "cache")
    fails(r, 1, f"oci:{layout}: {REF}: config: ")
    assert {p.name for p in work.iterdir()} <= {"cache", "layout", "sys.yml"}  # no out.tar
    store_clean(work / "cache")


def test_pack_of_a_string_entrypoint(work: Path) -> None:
    """The bundle itself: config.json in the packed tar runs ["abc"], not ["a", "b", "c"]."""
    layout = oci_layout(work / "layout", image_config({"Entrypoint": "abc"}))
    r = cli("pack", work / "sys.yml", "-o", work / "out.tar", "--from", f"oci:{layout}",
            "--platform", "linux/amd64", cache=work / "cache")
    assert r.returncode == 0, r.stderr
    with tarfile.open(work / "out.tar") as tar:
        [name] = [n for n in tar.getnames() if n.endswith("-odd/config.json")]
        spec = json.load(tar.extractfile(name))  # type: ignore[arg-type]
    assert spec["process"]["args"] == ["abc"]


# -- defect 7: deep documents, through the CLI -----------------------------------------------
def test_deep_index_json(work: Path) -> None:
    layout = oci_layout(work / "layout", image_config(), index=deep())
    fails(config_of(work, f"oci:{layout}"), 1,
          f"oci:{layout}: index.json: nested more than {jsondoc.MAX_DEPTH} deep")
    store_clean(work / "cache")


def test_deep_image_config(work: Path) -> None:
    config = image_config({"Cmd": ["/bin/sh"], "Labels": {}}, history=json.loads(deep(400)))
    config = config[:-1] + b', "deep": ' + deep() + b"}"
    layout = oci_layout(work / "layout", config)
    fails(config_of(work, f"oci:{layout}"), 1,
          f"oci:{layout}: {REF}: config: nested more than {jsondoc.MAX_DEPTH} deep")
    store_clean(work / "cache")


def test_deep_save_manifest(work: Path) -> None:
    archive = save_archive(work / "save.tar", image_config(), manifest=deep())
    fails(config_of(work, f"docker-archive:{archive}"), 1,
          f"docker-archive:{archive}: manifest.json: nested more than {jsondoc.MAX_DEPTH} deep")
    store_clean(work / "cache")


def test_nesting_at_the_bound_is_read(work: Path) -> None:
    """A config as deep as the bound allows is an image like any other."""
    extra = b"[" * (jsondoc.MAX_DEPTH - 1) + b"]" * (jsondoc.MAX_DEPTH - 1)
    config = image_config()[:-1] + b', "x": ' + extra + b"}"
    layout = oci_layout(work / "layout", config)
    assert process_of(config_of(work, f"oci:{layout}"))["args"] == ["/bin/sh"]


# -- the store: one bad record must not stop any command ----------------------------------------
def _recorded(work: Path) -> tuple[Path, Path]:
    """A layout and a store holding its image's record (written by a real `pull`)."""
    layout = oci_layout(work / "layout", image_config({"Entrypoint": ["/bin/true"]}))
    r = cli("pull", work / "sys.yml", "--from", f"oci:{layout}", "--platform", "linux/amd64",
            cache=work / "cache")
    assert r.returncode == 0, r.stderr
    [record] = (work / "cache" / "images").glob("*.json")
    return layout, record


def _ill_typed(record: Path) -> bytes:
    """The record with a config whose Env is a string (its digest made to match)."""
    doc = json.loads(record.read_bytes())
    config = image_config({"Env": "PATH=/x"})
    doc.update(config=base64.b64encode(config).decode(), configDigest=sha(config))
    return json.dumps(doc).encode()


BAD_RECORDS: dict[str, Callable[[Path], bytes]] = {
    "deep": lambda record: deep(),
    "deep-inside": lambda record: record.read_bytes()[:-2] + b', "x": ' + deep() + b"}",
    "ill-typed-config": _ill_typed,
    "layers-string": lambda record: json.dumps(
        dict(json.loads(record.read_bytes()), layers="x")).encode(),
    "version-true": lambda record: json.dumps(
        dict(json.loads(record.read_bytes()), version=True)).encode(),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_bad_record_is_ignored_and_pruned(work: Path, case: str) -> None:
    layout, record = _recorded(work)
    cache = work / "cache"
    record.write_bytes(BAD_RECORDS[case](record))
    warning = f"fusebundle: warning: ignoring the corrupt image record {record}: "

    r = cli("cache", "ls", cache=cache)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(warning) and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr

    # Another command: the store has nothing usable, the layout gives the image again.
    r = config_of(work, f"oci:{layout}")
    assert r.returncode == 0 and r.stderr.startswith(warning), r.stderr
    assert json.loads(r.stdout)["config.json"]["process"]["args"] == ["/bin/true"]

    record.write_bytes(BAD_RECORDS[case](record))  # the config run wrote a good one again
    r = cli("cache", "prune", cache=cache)
    assert r.returncode == 0, r.stderr
    assert f"removed corrupt image record {record}" in r.stdout
    assert not record.exists()
    assert cli("cache", "ls", cache=cache).stderr == ""


def test_deep_record_beside_a_good_one(work: Path) -> None:
    """A stray deep file in images/ leaves the good record usable by every command."""
    layout, record = _recorded(work)
    stray = record.with_name("0" * 64 + ".json")
    stray.write_bytes(deep())
    r = cli("config", work / "sys.yml", "--from", "store", "--platform", "linux/amd64",
            cache=work / "cache")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config.json"]["process"]["args"] == ["/bin/true"]
    r = cli("cache", "ls", cache=work / "cache")
    assert r.returncode == 0 and REF.split(":")[0] in r.stdout
    assert r.stderr == (f"fusebundle: warning: ignoring the corrupt image record {stray}: "
                        f"nested more than {jsondoc.MAX_DEPTH} deep\n")


# -- token answers from our fake registry -------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    reg = FakeRegistry(auth="bearer").start()
    reg.put("fb/app", "1", make_image([{"etc/motd": b"hi\n"}]))
    yield reg
    reg.stop()


TOKENS: dict[str, tuple[Callable[[str], bytes], str]] = {
    "expires_in-1e999": (lambda t: b'{"token": "%s", "expires_in": 1e999}' % t.encode(),
                         "field 'expires_in' is not a finite number"),
    "expires_in-string": (lambda t: json.dumps({"token": t, "expires_in": "300"}).encode(),
                          "field 'expires_in' is a string, not an integer"),
    "expires_in-fraction": (lambda t: json.dumps({"token": t, "expires_in": 1.5}).encode(),
                            "field 'expires_in' is a number, not an integer"),
    "expires_in-huge": (lambda t: json.dumps({"token": t, "expires_in": 1 << 64}).encode(),
                        "field 'expires_in' is 18446744073709551616, outside"),
    "token-list": (lambda t: json.dumps({"token": [t]}).encode(),
                   "field 'token' is a list, not a string"),
    "deep": (lambda t: deep(), f"nested more than {jsondoc.MAX_DEPTH} deep"),
}


@pytest.mark.parametrize("case", sorted(TOKENS))
def test_odd_token_answer_is_one_line(fake: FakeRegistry, tmp_path: Path, case: str) -> None:
    answer, words = TOKENS[case]
    fake.token_answer = answer
    reg = Registry(docker_config=str(tmp_path))
    with pytest.raises(RegistryError) as e:
        reg.resolve(f"{fake.address}/fb/app:1", AMD64)
    text = str(e.value)
    assert "\n" not in text and text.startswith(f"registry {fake.address}: fb/app: the token "
                                                f"service {fake.address}'s answer: ")
    assert words in text
    for token in fake.tokens:
        assert token not in text


def test_odd_token_answer_through_the_cli(fake: FakeRegistry, work: Path) -> None:
    fake.token_answer = TOKENS["expires_in-1e999"][0]
    (work / "sys.yml").write_text(f"onboot:\n  - name: app\n    image: {fake.address}/fb/app:1\n")
    r = cli("pull", work / "sys.yml", "--from", "registry", "--platform", "linux/amd64",
            cache=work / "cache")
    fails(r, 1, "field 'expires_in' is not a finite number")
    store_clean(work / "cache")


def test_good_token_lifetimes() -> None:
    assert token_answer(b'{"token": "t", "expires_in": 900}', "w") == ("t", 900)
    assert token_answer(b'{"access_token": "t"}', "w") == ("t", 60)  # the spec's default
    assert token_answer(b'{"token": null, "access_token": "u", "expires_in": null}', "w") == (
        "u", 60)
    assert token_answer(b"not json", "w") == ("", 0)  # "sent no token", as before


# -- hypothesis: any structure, any types, any depth --------------------------------------------
SCALARS = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
           | st.floats(allow_nan=False) | st.text(max_size=8))
ANY = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=12)
# Most documents flat, some buried deeper than the bound (up to three times it).
DEPTHS = st.one_of(st.just(0), st.just(0), st.integers(0, 3 * jsondoc.MAX_DEPTH))


def either(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a well-typed value, else any JSON value at all (so whole documents often pass)."""
    return st.sampled_from([good] * 9 + [ANY]).flatmap(lambda chosen: chosen)


def buried(doc: Any, depth: int) -> bytes:
    """`doc` as JSON, inside `depth` levels of lists (a deep document of the same kind)."""
    return b"[" * depth + json.dumps(doc).encode() + b"]" * depth


def one_line_error(e: BaseException) -> None:
    text = str(e)
    assert text and "\n" not in text, repr(text)
    event("refused")


STRINGS = st.lists(either(st.text(max_size=6)), max_size=3)
CONTAINER_CONFIG = st.fixed_dictionaries({}, optional={
    "Env": either(STRINGS), "Entrypoint": either(st.text(max_size=6) | STRINGS),
    "Cmd": either(st.text(max_size=6) | STRINGS), "WorkingDir": either(st.text(max_size=6)),
    "Labels": either(st.dictionaries(st.text(max_size=4), either(st.text(max_size=6)),
                                     max_size=3)),
    "User": ANY})
PLATFORM = st.fixed_dictionaries({}, optional={
    "os": either(st.just("linux")), "architecture": either(st.sampled_from(["amd64", "arm64"])),
    "variant": either(st.just("v8")), "os.features": either(STRINGS)})
DIGESTS = either(st.sampled_from([sha(b"a"), sha(b"b")])) | st.just("md5:00")


def descriptor(*media_types: str) -> st.SearchStrategy[dict[str, Any]]:
    """A descriptor of one of `media_types`, its fields mostly well typed."""
    return st.fixed_dictionaries({
        "mediaType": either(st.sampled_from(media_types)), "digest": DIGESTS}, optional={
        "size": either(st.integers(-1, 100)), "platform": either(PLATFORM),
        "annotations": either(st.dictionaries(st.sampled_from([mf.REF_NAME, "x"]),
                                              either(st.just(REF)), max_size=2))})


IMAGE_CONFIG = st.fixed_dictionaries({
    "rootfs": either(st.fixed_dictionaries({"diff_ids": either(st.lists(
        either(st.just(sha(LAYER))), min_size=1, max_size=1))}, optional={
        "type": either(st.just("layers"))}))}, optional={
    "architecture": either(st.just("amd64")), "os": either(st.just("linux")),
    "variant": either(st.just("")), "config": either(CONTAINER_CONFIG)})
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(either(CONTAINER_CONFIG))
def test_property_container_config(inner: Any) -> None:
    try:
        out = jsondoc.container_config(inner, "w")
    except UserError as e:
        one_line_error(e)
        return
    event("accepted")
    assert isinstance(inner, dict) or inner is None
    for key in ("Env", "Entrypoint", "Cmd"):
        if key in out and out[key] is not None:
            assert all(isinstance(s, str) for s in out[key])
            given_value = inner[key]  # type: ignore[index]
            want = [given_value] if isinstance(given_value, str) and key != "Env" else [
                "" if s is None else s for s in given_value]
            assert out[key] == want
    if "WorkingDir" in out:
        assert isinstance(out["WorkingDir"], str)
    labels = out.get("Labels") or {}
    assert all(isinstance(v, str) for v in labels.values())
    try:
        label = image_label(out, "w")
    except ConfigError as e:
        one_line_error(e)
    else:
        assert label is None or isinstance(label, dict)


@FAST
@given(either(st.fixed_dictionaries(
    {"manifests": either(st.lists(descriptor(mf.OCI_MANIFEST, mf.OCI_INDEX), max_size=3))},
    optional={"schemaVersion": either(st.just(2)), "mediaType": either(st.just(mf.OCI_INDEX))})),
    DEPTHS)
def test_property_index(index: Any, depth: int) -> None:
    data = buried(index, depth if depth > jsondoc.MAX_DEPTH else 0)
    try:
        doc = mf.load_json(data, "w")
        chosen = mf.choose(doc, AMD64, "w")
    except UserError as e:
        one_line_error(e)
        return
    event("accepted")
    assert chosen in index["manifests"]
    assert chosen["mediaType"] in mf.MANIFEST_TYPES | mf.INDEX_TYPES
    plat = chosen.get("platform")
    if isinstance(plat, dict):  # else: no descriptor named this platform, one without any
        assert (plat.get("os"), plat.get("architecture")) == ("linux", "amd64")


@FAST
@given(either(st.fixed_dictionaries({
    "schemaVersion": either(st.just(2)), "config": either(descriptor(mf.OCI_CONFIG)),
    "layers": either(st.lists(descriptor(mf.OCI_LAYER, mf.OCI_LAYER_GZIP), max_size=3))},
    optional={"mediaType": either(st.just(mf.OCI_MANIFEST))})), DEPTHS)
def test_property_manifest(manifest: Any, depth: int) -> None:
    data = buried(manifest, depth if depth > jsondoc.MAX_DEPTH else 0)
    try:
        config, layers = mf.parse_manifest(data, "w")
    except UserError as e:
        one_line_error(e)
        return
    event("accepted")
    assert config is manifest["config"] or config == manifest["config"]
    assert config["mediaType"] in mf.CONFIG_TYPES and mf.is_sha256(config["digest"])
    assert layers == manifest["layers"]
    assert all(d["mediaType"] in mf.LAYER_TYPES and mf.is_sha256(d["digest"]) for d in layers)


@FAST
@given(either(IMAGE_CONFIG), DEPTHS)
def test_property_image_config(config: Any, depth: int) -> None:
    data = buried(config, depth) if depth > jsondoc.MAX_DEPTH else json.dumps(config).encode()
    for check in (lambda: mf.config_diff_ids(data, "w"),
                  lambda: mf.check_platform(data, AMD64, "w"),
                  lambda: jsondoc.image_container_config(data, "w")):
        try:
            out = check()
        except UserError as e:
            one_line_error(e)
            continue
        event("accepted")
        assert isinstance(config, dict)
        if isinstance(out, list):
            assert out == config["rootfs"]["diff_ids"]
        elif isinstance(out, str):  # amd64 asked without a variant takes any variant
            assert out.split("/")[:2] == ["linux", "amd64"]


class MemFiles(dict[str, bytes]):
    """`Files` over a dict of members, for the save archive's reader without a tar."""

    def exists(self, path: str) -> bool:
        return path in self

    def read(self, path: str, limit: int = mf.MAX_METADATA) -> bytes:
        return self[path]

    def open(self, path: str) -> io.BytesIO:
        return io.BytesIO(self[path])


@FAST
@given(either(st.lists(st.fixed_dictionaries({
    "Config": either(st.just("c.json")), "RepoTags": either(st.lists(
        either(st.just(REF)), max_size=2)),
    "Layers": either(st.lists(either(st.just("l1/layer.tar")), min_size=1, max_size=1))}),
    min_size=1, max_size=2)), IMAGE_CONFIG, DEPTHS)
def test_property_save_manifest(items: Any, config: Any, depth: int) -> None:
    archive = DockerArchive("/nonexistent.tar")
    manifest = buried(items, depth) if depth > jsondoc.MAX_DEPTH else json.dumps(items).encode()
    archive.files = MemFiles({"manifest.json": manifest, "c.json": json.dumps(config).encode(),
                              "l1/layer.tar": LAYER})  # type: ignore[assignment]
    archive.files.member = lambda p: (  # type: ignore[attr-defined]
        Extent(Source("/nonexistent.tar"), 0, len(LAYER)) if p in archive.files else None)
    try:
        image = archive.resolve(REF, AMD64)
    except UserError as e:
        one_line_error(e)
        return
    event("accepted")
    assert image.config_bytes == json.dumps(config).encode()
    assert [x.diff_id for x in image.layers] == config["rootfs"]["diff_ids"]
    assert isinstance(image.config, dict)


def _good_record() -> dict[str, Any]:
    config = image_config()
    return {"version": 1, "name": "docker.io/fbtest/odd:1", "ref": REF, "platform": "linux/amd64",
            "source": "oci:x", "manifestDigest": sha(b"m"), "configDigest": sha(config),
            "config": base64.b64encode(config).decode(),
            "layers": [{"digest": sha(LAYER), "diffID": sha(LAYER), "mediaType": mf.OCI_LAYER,
                        "size": len(LAYER)}], "stored": "2026-01-01T00:00:00Z"}


@FAST
@given(st.dictionaries(st.sampled_from(sorted(_good_record())), ANY, max_size=3),
       CONTAINER_CONFIG, DEPTHS)
def test_property_record(changes: dict[str, Any], inner: Any, depth: int) -> None:
    doc = _good_record()
    config = image_config(inner) if inner else image_config()
    doc.update(config=base64.b64encode(config).decode(), configDigest=sha(config))
    doc.update(changes)
    data = buried(doc, depth) if depth > jsondoc.MAX_DEPTH else json.dumps(doc).encode()
    name, platform = doc.get("name"), doc.get("platform")
    path = "/x/" + (records.file_name(name, platform) if isinstance(name, str)
                    and isinstance(platform, str) else "y.json")
    try:
        record = records.decode(data, path)
    except records.BadRecord as e:
        one_line_error(e)
        return
    event("accepted")
    # A record that reads is one every command can use: its config decodes.
    assert isinstance(record.image.config, dict)
    assert record.image.name == name and record.image.platform == platform


@FAST
@given(either(st.fixed_dictionaries({}, optional={
    "token": either(st.text(max_size=6)), "access_token": either(st.text(max_size=6)),
    "expires_in": either(st.integers(-100, 1 << 40)) | st.just(float("inf"))})), DEPTHS)
def test_property_token_answer(doc: Any, depth: int) -> None:
    data = buried(doc, depth) if depth > jsondoc.MAX_DEPTH else json.dumps(doc).encode()
    try:
        token, lifetime = token_answer(data, "w")
    except RegistryError as e:
        one_line_error(e)
        return
    event("accepted")
    assert isinstance(token, str) and isinstance(lifetime, int)
    if token:
        assert token in (doc.get("token"), doc.get("access_token"))


@FAST
@given(ANY, DEPTHS)
def test_property_layout_index_json(doc: Any, depth: int) -> None:
    """index.json through the layout reader: any document, any depth, one line or a NotFound."""
    data = buried(doc, depth) if depth > jsondoc.MAX_DEPTH else json.dumps(doc).encode()
    reader = LayoutReader(MemFiles({"oci-layout": b'{"imageLayoutVersion":"1.0.0"}',  # type: ignore[arg-type]
                                    "index.json": data}), "oci:x")
    with pytest.raises(UserError) as e:
        reader.resolve(REF, AMD64)
    one_line_error(e.value)


def test_bound_is_below_the_interpreter_limit() -> None:
    """The bound must trip before CPython's own recursion guard would, so it is the one seen."""
    assert sys.getrecursionlimit() - 100 > jsondoc.MAX_DEPTH
    assert isinstance(jsondoc.parse(b"[" * jsondoc.MAX_DEPTH + b"]" * jsondoc.MAX_DEPTH, "w"),
                      list)
    with pytest.raises(jsondoc.TooDeep, match=r"^w: nested more than 512 deep$"):
        jsondoc.parse(b"[" * (jsondoc.MAX_DEPTH + 1) + b"]" * (jsondoc.MAX_DEPTH + 1), "w")


# -- the engine's inspect: its answer is typed like every other document -----------------------
def _engine_answering(path: Path, config: Any) -> threading.Thread:
    """A unix socket that answers one image inspect with `config` as the image's Config (a
    real engine's typed structs never write such an answer: a fault only a fake can make)."""
    body = json.dumps({"Id": sha(b"image"), "Config": config, "Size": 3}).encode()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_engine_inspect_is_decoded_as_docker_does(tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"
    thread = _engine_answering(sock, {"Entrypoint": "abc", "Cmd": None, "Env": ["A=1"]})
    info = DockerEngine(f"unix://{sock}").inspect(REF, pull=False)
    thread.join(10)
    assert info.config["Entrypoint"] == ["abc"] and info.config["Env"] == ["A=1"]
    assert info.id == sha(b"image") and info.size == 3


def test_engine_inspect_with_a_string_env_is_one_line(tmp_path: Path) -> None:
    sock = tmp_path / "engine.sock"
    thread = _engine_answering(sock, {"Env": "PATH=/x"})
    with pytest.raises(UserError) as e:
        DockerEngine(f"unix://{sock}").inspect(REF, pull=False)
    thread.join(10)
    assert str(e.value) == (f"image {REF}: inspect: field 'config.Env' is a string, "
                            "not a list of strings")


# -- the registry's manifests and indexes, and docker's config.json -----------------------------
def test_registry_deep_manifest_and_string_platform(fake: FakeRegistry, tmp_path: Path) -> None:
    fake.auth = ""
    fake.manifests[("fb/deep", "1")] = (mf.OCI_MANIFEST, deep())
    index = json.dumps({"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": [
        {"mediaType": mf.OCI_MANIFEST, "digest": sha(b"m"), "size": 1,
         "platform": "linux/amd64"}]}).encode()
    fake.manifests[("fb/plat", "1")] = (mf.OCI_INDEX, index)
    reg = Registry(docker_config=str(tmp_path))
    with pytest.raises(UserError) as e:
        reg.resolve(f"{fake.address}/fb/deep:1", AMD64)
    assert str(e.value) == (f"registry {fake.address}: {fake.address}/fb/deep:1: manifest "
                            f"{sha(deep())}: nested more than {jsondoc.MAX_DEPTH} deep")
    with pytest.raises(UserError) as e:
        reg.resolve(f"{fake.address}/fb/plat:1", AMD64)
    assert str(e.value).endswith(f"manifest {sha(b'm')}: field 'platform' is a string, "
                                 "not an object")


def test_deep_docker_config_is_one_line(fake: FakeRegistry, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(deep())
    with pytest.raises(RegistryError, match=r"^docker config .*: unreadable \(RecursionError\)$"):
        Registry(docker_config=str(tmp_path)).resolve(f"{fake.address}/fb/app:1", AMD64)
