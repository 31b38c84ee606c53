"""Entry: one item of the tree, whichever renderer shows it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fusebundle.tar import Extent


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of the tree, with where its bytes come from."""

    path: bytes
    type: str  # f d l h c b p
    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    size: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] | None = None  # None when there are none
    # A regular file's bytes: made by the tool, or where they are in a source (None: empty).
    # `size` stays a field: pack's walk reads it for every entry.
    body: Extent | bytes | None = None


def directory(path: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    """A directory the tool makes (mtime 0, as the reference writes them)."""
    return Entry(path=path, type="d", mode=mode, uid=uid, gid=gid)


def regular(path: bytes, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    """A regular file whose content the tool holds."""
    return Entry(path=path, type="f", mode=mode, uid=uid, gid=gid, size=len(data), body=data)
