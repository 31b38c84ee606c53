"""Hostile YAML (issue 17, defects 3, 7, 11, 12): configs and image labels each end in one line.

Every CLI case runs with 1 GiB of address space and a timeout, and must leave nothing in the
output directory or the store, whose `cache ls` still works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.offline import one_line, run_fb, store_listable

from fusebundle.config import load_config, metadata, schema, yamlload
from fusebundle.config import runtime as oci
from fusebundle.errors import ConfigError, UserError


def _pack(tmp_path: Path, cfg: Path, timeout: float = 60) -> object:
    return run_fb(tmp_path / "store", "pack", "-q", cfg, "-o", tmp_path / "out" / "b.tar",
                  timeout=timeout)


def _clean(tmp_path: Path) -> None:
    assert list((tmp_path / "out").iterdir()) == []
    store_listable(tmp_path / "store")


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path


def _config(tmp_path: Path, text: str | bytes) -> Path:
    cfg = tmp_path / "system.yml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    return cfg


def _bomb() -> str:
    """The issue's 17 KB config: 1,000 services aliasing one whose 1,000 mounts alias one mount
    with 1,000 options (10**9 nodes once expanded)."""
    opts = "x: &o [" + ",".join(["rw"] * 1000) + "]\n"
    mount = "m: &m {destination: /x, type: bind, source: /x, options: *o}\n"
    entry = "e: &e {name: a, image: alpine, mounts: [" + ",".join(["*m"] * 1000) + "]}\n"
    return opts + mount + entry + "services: [" + ",".join(["*e"] * 1000) + "]\n"


def _laughs(levels: int) -> str:
    """A billion-laughs document in legal places: each level a list of ten of the one below."""
    lines = ["files:", "  - &l0 {path: a, contents: lol}"]
    for i in range(1, levels + 1):
        lines.append(f"  - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


YAML_CASES = {
    "alias-bomb": (_bomb(), ["excessive aliasing"]),
    "billion-laughs": (_laughs(9), ["excessive aliasing"]),
    "self-alias": ("files: &a [*a]\n", ["contains it", "line 1"]),
    "deep-100000": ("files: " + "[" * 100_000 + "]" * 100_000 + "\n",
                    ["nested deeper than 200"]),
    "deep-mapping-10001": ("files: " + "{a: " * 10_001 + "b" + "}" * 10_001 + "\n",
                           ["nested deeper than 200"]),
    "deep-block": ("files:\n" + "".join(" " * i + "-\n" for i in range(1, 300)),
                   ["nested deeper than 200"]),
    "deep-through-aliases": ("a: &d " + "[" * 150 + "]" * 150 + "\nfiles: "
                             + "[" * 100 + "*d" + "]" * 100 + "\n", ["deeper than 200"]),
    "int-5000-digits": ("files:\n  - path: a\n    contents: x\n    uid: " + "9" * 5000 + "\n",
                        ["line 4", "integer of 5000 characters"]),
    "hex-int-5000-digits": ("files:\n  - path: a\n    contents: x\n    uid: 0x" + "f" * 5000
                            + "\n", ["line 4", "integer"]),
    "impossible-date": ("files:\n  - path: a\n    contents: 2001-02-30\n",
                        ["line 3", "day is out of range"]),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_hostile_config_is_one_line(out_dir, case) -> None:
    text, words = YAML_CASES[case]
    r = _pack(out_dir, _config(out_dir, text))
    one_line(r, "system.yml", *words, code=2)
    _clean(out_dir)


def test_aliases_within_the_bound_still_work(out_dir) -> None:
    # anchors shared a few times are what real configs use them for (a merge key here)
    text = "files:\n  - &f {path: etc/a, contents: hi, mode: \"0644\"}\n" + "".join(
        f"  - {{path: etc/f{i}, <<: *f}}\n" for i in range(50))
    r = _pack(out_dir, _config(out_dir, text))
    assert r.returncode == 0, r.stderr


def test_a_fifo_config_is_one_line_at_once(out_dir) -> None:
    fifo = out_dir / "system.yml"
    os.mkfifo(fifo)  # no writer: reading it would wait for ever
    one_line(_pack(out_dir, fifo, timeout=20), "system.yml", "is a FIFO", code=1)
    _clean(out_dir)


def test_dev_zero_as_config_is_one_line(out_dir) -> None:
    one_line(_pack(out_dir, Path("/dev/zero"), timeout=20), "/dev/zero",
             "character device", code=1)
    _clean(out_dir)


@pytest.mark.parametrize("size", [yamlload.MAX_DOCUMENT_BYTES + 1, 1 << 30])
def test_an_oversized_config_is_one_line(out_dir, size) -> None:
    cfg = out_dir / "system.yml"
    with open(cfg, "wb") as f:  # `contents:` of spaces: sparse, so the disk is not filled
        f.write(b"files:\n  - path: a\n    contents: |\n      x\n")
        f.truncate(size)
    one_line(_pack(out_dir, cfg, timeout=20), "system.yml", "larger than 1 MiB", code=2)
    _clean(out_dir)


def test_a_config_just_under_the_cap_packs(out_dir) -> None:
    body = "      " + "y" * 73 + "\n"
    head = "files:\n  - path: big\n    contents: |\n"
    n = (yamlload.MAX_DOCUMENT_BYTES - len(head)) // len(body)
    r = _pack(out_dir, _config(out_dir, head + body * n), timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out_dir / "out" / "b.tar").stat().st_size > n * (len(body) - 6)


# ------------------------------------------------------------------------------ labels
LABEL_CASES = {
    # 1,000 runtime mounts aliasing a list of two mounts aliasing 1,000 options
    "alias-bomb": ("{x: &o [" + ",".join(["rw"] * 1000) + "], mounts: &m ["
                   + ",".join(["{destination: /x, options: *o}"] * 2) + "], "
                   + "runtime: {mounts: [" + ",".join(["*m"] * 1000) + "]}}"),
    "deep": "{command: " + "[" * 100_000 + "]" * 100_000 + "}",
    "int": "{uid: " + "9" * 5000 + "}",
    "self-alias": "&a {command: *a}",
    "too-long": "{command: [" + "x" * (yamlload.MAX_DOCUMENT_BYTES + 1) + "]}",
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_hostile_label_is_a_config_error(case) -> None:
    with pytest.raises(ConfigError) as e:
        schema.parse_label(LABEL_CASES[case], "services[0] (a)")
    assert "\n" not in str(e.value) and str(e.value).startswith("services[0] (a): label")


# ------------------------------------------------------------------- property: any YAML
_SCALARS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["9" * 5000, "0x" + "f" * 200, "-0o777", "1e999", ".nan", "-.inf",
                     "2001-02-30", "2001-12-14t21:59:43.10-05:00", "~", "null", "true",
                     "no", "0666", "''", '"\\u0000"', "!!binary aGk=", "!!binary ?",
                     "!!int x", "!!float y", "!!timestamp 2001-13-01", "!!set {a}",
                     "!!omap [a: 1]", "!!pairs [a: 1]", "!custom x", "*undefined", "<<"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12).map(json.dumps),
)
_KEYS = st.sampled_from([*("kernel", "init", "onboot", "onshutdown", "services", "trust",
                           "files", "volumes", "name", "image", "path", "contents", "source",
                           "uid", "gid", "mode", "mounts", "options", "resources", "memory",
                           "limit", "runtime", "command", "env", "binds", "<<", "? a")])


def _document(anchors: list[str]) -> st.SearchStrategy[str]:
    """Flow-style YAML text: any structure and value type, anchors and aliases among them."""

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        pair = st.tuples(st.one_of(_KEYS, inner), inner).map(lambda kv: f"{kv[0]}: {kv[1]}")
        return st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
            st.lists(pair, max_size=4).map(lambda xs: "{" + ", ".join(xs) + "}"),
            st.tuples(st.sampled_from(anchors), inner).map(lambda a: f"&{a[0]} {a[1]}"),
            st.sampled_from(anchors).map(lambda a: f"*{a}"),
            st.integers(1, 400).map(lambda n: "[" * n + "]" * n),
        )

    return st.recursive(_SCALARS, extend, max_leaves=30)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(doc=_document(["a", "b"]), top=st.sampled_from(["", "files: ", "services: ",
                                                        "onboot: [", "kernel: "]))
def test_any_yaml_is_data_or_one_project_error(tmp_path, doc, top) -> None:
    text = top + doc + ("]" if top.endswith("[") else "") + "\n"
    cfg = tmp_path / "any.yml"
    cfg.write_text(text)
    for load in (lambda: load_config([str(cfg)]),
                 lambda: schema.parse_label(text, "services[0] (a)")):
        try:
            load()
        except UserError as e:
            assert "\n" not in str(e), str(e)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_is_data_or_one_project_error(tmp_path, text) -> None:
    cfg = tmp_path / "any.yml"
    cfg.write_bytes(text.encode("utf-8", "surrogatepass"))
    for load in (lambda: load_config([str(cfg)]),
                 lambda: schema.parse_label(text, "services[0] (a)")):
        try:
            load()
        except UserError as e:
            assert "\n" not in str(e), str(e)


# ------------------------------------------------ labels of real images, through the CLI
ENGINE_LABELS = {
    "alias-bomb": LABEL_CASES["alias-bomb"],
    "deep-20000": "{command: " + "[" * 20_000 + "]" * 20_000 + "}",
    "int-5000-digits": LABEL_CASES["int"],
}


@pytest.fixture(scope="module")
def labelled_images(dockerd, tmp_path_factory) -> dict[str, str]:
    from support.imagetools import RootfsBuilder, import_image

    tmp = tmp_path_factory.mktemp("labels")
    RootfsBuilder().dir("etc").file("etc/motd", "hi\n").write(tmp / "rootfs.tar")
    refs = {}
    for case, label in ENGINE_LABELS.items():
        refs[case] = f"fbtest/hostile-label-{case}:1"
        import_image(dockerd.client, tmp / "rootfs.tar", refs[case],
                     ['CMD ["/bin/sh"]', f"LABEL org.mobyproject.config='{label}'"])
    return refs


@pytest.mark.parametrize("case", sorted(ENGINE_LABELS))
def test_hostile_label_of_an_image_is_one_line(fb, labelled_images, tmp_path, cache_dir,
                                               case) -> None:
    cfg = tmp_path / "system.yml"
    cfg.write_text(f"onboot:\n  - name: a\n    image: {labelled_images[case]}\n")
    (tmp_path / "out").mkdir()
    r = fb("pack", "-q", cfg, "-o", tmp_path / "out" / "b.tar", timeout=120)
    one_line(r, "onboot[0] (a)", "label is not valid YAML", code=2)
    assert list((tmp_path / "out").iterdir()) == []
    assert fb("cache", "ls").returncode == 0


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=True), st.text(max_size=8),
              st.sampled_from(["all", "none", "host", "new", "/a:/b", "/a:/b:ro", "0666",
                               "nofile,1,2", "CAP_SYS_ADMIN", "root", "a", "@pkg:x"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=12)
_FIELDS = sorted(schema._IMAGE_FIELDS)
_ENTRY = st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=4)
_FILE = st.dictionaries(st.sampled_from(["path", "contents", "source", "symlink", "directory",
                                         "metadata", "mode", "uid", "gid", "optional", "x"]),
                        _JSON, max_size=4)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(entry=_ENTRY, file=_FILE, section=st.sampled_from(["onboot", "services", "onshutdown"]))
def test_any_field_value_is_data_or_one_project_error(tmp_path, entry, file, section) -> None:
    # JSON is YAML 1.2: schema-shaped documents whose values have any type and structure
    doc = {section: [{"name": "a", "image": "alpine", **entry}], "files": [file]}
    cfg = tmp_path / "any.yml"
    cfg.write_text(json.dumps(doc))
    label = json.dumps({k: v for k, v in entry.items() if k not in ("name", "image")})
    for load in (lambda: load_config([str(cfg)]),
                 lambda: schema.parse_label(label, "services[0] (a)"),
                 lambda: _config_json(cfg, label)):
        try:
            load()
        except UserError as e:
            assert "\n" not in str(e), str(e)


def _config_json(cfg: Path, label: str) -> None:
    """What pack builds from a loaded config and label: config.json and metadata."""
    loaded = load_config([str(cfg)])
    entry = loaded.containers()[0]
    oci.build_oci(entry.spec, schema.parse_label(label, entry.where),
                  {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}, loaded.id_map(), entry.where,
                  loaded.volume_map())
    metadata.moby_json(loaded)
