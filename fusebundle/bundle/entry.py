"""Entry: one item of the tree, whichever renderer shows it."""

from __future__ import annotations

import array
from collections.abc import Mapping
from dataclasses import dataclass


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
    data: bytes | None = None  # content made by the tool
    src: str | None = None  # else content read from this file at `offset`
    offset: int = 0
    sparse: array.array[int] | None = None  # a sparse member's fragments there (read_sparse)


def directory(path: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    """A directory the tool makes (mtime 0, as the reference writes them)."""
    return Entry(path=path, type="d", mode=mode, uid=uid, gid=gid)


def regular(path: bytes, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    """A regular file whose content the tool holds."""
    return Entry(path=path, type="f", mode=mode, uid=uid, gid=gid, size=len(data), data=data)
