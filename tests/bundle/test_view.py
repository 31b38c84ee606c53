"""The view's filter on tars that `docker export` would never write but other sources may."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support.imagetools import RootfsBuilder

from fusebundle.bundle.view import (
    HOSTS,
    NO_RESOLV,
    PINNED_MTIME_NS,
    Graft,
    build_view,
    graft_entries,
)
from fusebundle.config.load import Config, Container
from fusebundle.sources.base import ImageInfo
from fusebundle.tar.index import TarIndex


@dataclass
class TarImage:
    """An image handle over a tar on disk (the engine is not involved in these tests)."""

    info: ImageInfo
    path: Path

    def index(self) -> TarIndex:
        return TarIndex.scan(str(self.path))

    def nested_index(self, name: bytes) -> TarIndex:
        raise AssertionError("no nested tars here")


def _image(tmp_path: Path, r: RootfsBuilder, name: str = "img") -> TarImage:
    path = r.write(tmp_path / f"{name}.tar")
    return TarImage(ImageInfo(ref=f"local/{name}", id=f"sha256:{name}", config={}), path)


def _graft(img: TarImage, prefix: bytes = b"p/", resolv: bytes | None = None) -> dict:
    return {e.path: e for e in graft_entries(Graft(prefix=prefix, image=img,
                                                   resolv_link=resolv))}


def test_symlinked_etc_files_become_regular_files(tmp_path) -> None:
    r = RootfsBuilder().dir("etc").file("etc/real-hosts", "x").symlink("etc/hosts", "real-hosts")
    r.symlink("etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf")
    out = _graft(_image(tmp_path, r))
    assert out[b"p/etc/hosts"].type == "f" and out[b"p/etc/hosts"].body == HOSTS
    assert out[b"p/etc/hosts"].mode == 0o644  # a symlink's 0777 would be wrong for a file
    assert out[b"p/etc/resolv.conf"].body == NO_RESOLV
    assert out[b"p/etc/hosts"].mtime_ns == PINNED_MTIME_NS


def test_dot_slash_names_are_matched_and_prefixed(tmp_path) -> None:
    r = RootfsBuilder(raw_names=True)
    r.dir("./").file("./.dockerenv", "").dir("./etc/").file("./etc/hostname", "h\n")
    r.file("./etc/hosts", "image hosts\n", mode=0o600).file("./etc/keep", "k")
    r.hardlink("./etc/keep2", "./etc/keep").file("./Dockerfile", "FROM x")
    out = _graft(_image(tmp_path, r))
    assert set(out) == {b"p/etc", b"p/etc/hosts", b"p/etc/keep", b"p/etc/keep2"}
    assert out[b"p/etc/hosts"].body == HOSTS and out[b"p/etc/hosts"].mode == 0o600
    assert out[b"p/etc/keep2"].linkname == b"p/etc/keep"


def test_trailing_slash_dev_pts_is_dropped(tmp_path) -> None:
    r = RootfsBuilder(raw_names=True).dir("dev/").dir("dev/pts/").dir("dev/shm/")
    r.dir("dev/mqueue/")
    assert set(_graft(_image(tmp_path, r))) == {b"p/dev", b"p/dev/mqueue"}


def test_hard_link_to_a_dropped_file_keeps_its_bytes(tmp_path) -> None:
    r = RootfsBuilder().dir("etc").file("etc/hostname", "box\n")
    r.hardlink("etc/name", "etc/hostname")
    img = _image(tmp_path, r)
    out = _graft(img)
    name = out[b"p/etc/name"]
    assert name.type == "f" and name.size == 4
    with open(img.path, "rb") as f:
        f.seek(name.body.offset)
        assert f.read(name.size) == b"box\n"


def test_init_resolv_conf_is_a_symlink_keeping_owner(tmp_path) -> None:
    r = RootfsBuilder().dir("etc").file("etc/resolv.conf", "nameserver 1.1.1.1\n", uid=7)
    out = _graft(_image(tmp_path, r), prefix=b"", resolv=b"/run/resolvconf/resolv.conf")
    link = out[b"etc/resolv.conf"]
    assert (link.type, link.linkname, link.uid) == ("l", b"/run/resolvconf/resolv.conf", 7)


def test_dedup_key_is_the_string_unless_asked_for_ids(tmp_path) -> None:
    img = _image(tmp_path, RootfsBuilder().dir("etc").file("etc/motd", "m"))

    def resolve(ref: str) -> TarImage:
        return img  # two strings, one image ID

    cfg = Config(onboot=[
        Container("onboot", 0, "a", "one:1", {"name": "a", "image": "one:1"}, "t"),
        Container("onboot", 1, "b", "two:1", {"name": "b", "image": "two:1"}, "t")])
    by_string = [e.path for e in build_view(cfg, resolve).entries()]
    by_id = [e.path for e in build_view(cfg, resolve, share_by_id=True).entries()]
    assert by_string.count(b"containers/onboot/001-b/lower/etc/motd") == 1
    assert b"containers/onboot/001-b/lower" not in by_id
