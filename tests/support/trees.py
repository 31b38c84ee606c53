"""A tree as comparable data: from a merged index, or from a directory on disk (the oracles'
unpacked trees); docker's init-layer paths left out of both."""

from __future__ import annotations

import os
from pathlib import Path

from fusebundle.tar.index import TarIndex

INIT_NAMES = {b".dockerenv", b"dev", b"dev/console", b"dev/pts", b"dev/shm", b"etc",
              b"etc/hostname", b"etc/hosts", b"etc/mtab", b"etc/resolv.conf", b"proc", b"sys"}


def data(idx: TarIndex, i: int) -> bytes:
    e = idx.entry(i)
    with open(idx.data_path(i), "rb") as f:
        return os.pread(f.fileno(), e.size, e.offset)


def tree_of_merged(m: TarIndex) -> tuple[dict[bytes, tuple], set[frozenset[bytes]]]:
    import hashlib
    tree: dict[bytes, tuple] = {}
    groups: dict[bytes, set[bytes]] = {}
    for i, e in enumerate(m):
        if e.name in INIT_NAMES:
            continue
        if e.type == "h":
            groups.setdefault(e.linkname, {e.linkname}).add(e.name)
            target = tree[e.linkname]
            tree[e.name] = target
            continue
        digest = hashlib.sha256(data(m, i)).hexdigest() if e.type == "f" else None
        tree[e.name] = (e.type, e.mode, e.uid, e.gid, e.size if e.type == "f" else 0, digest,
                        e.linkname if e.type == "l" else b"")
    return tree, {frozenset(g) for g in groups.values()}


def tree_of_dir(root: Path) -> tuple[dict[bytes, tuple], set[frozenset[bytes]]]:
    import hashlib
    import stat as st
    tree: dict[bytes, tuple] = {}
    inodes: dict[int, set[bytes]] = {}
    top = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(top):
        for base in dirnames + filenames:
            path = os.path.join(dirpath, base)
            name = path[len(top) + 1:]
            if name in INIT_NAMES:
                continue
            s = os.lstat(path)
            kind = {st.S_IFREG: "f", st.S_IFDIR: "d", st.S_IFLNK: "l", st.S_IFCHR: "c",
                    st.S_IFBLK: "b", st.S_IFIFO: "p"}[st.S_IFMT(s.st_mode)]
            digest = None
            if kind == "f":
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                if s.st_nlink > 1:
                    inodes.setdefault(s.st_ino, set()).add(name)
            tree[name] = (kind, st.S_IMODE(s.st_mode), s.st_uid, s.st_gid,
                          s.st_size if kind == "f" else 0, digest,
                          os.readlink(path) if kind == "l" else b"")
    return tree, {frozenset(g) for g in inodes.values() if len(g) > 1}


def mapped_layer(tar: Path, files: int, name: str = "f{i:06d}") -> TarIndex:
    """A one-layer tar at `tar` of `files` files in directories of 100 (each file's base name
    `name` formatted with its number i), indexed, and that index loaded mapped."""
    from support.imagetools import RootfsBuilder

    b = RootfsBuilder()
    for i in range(files):
        if i % 100 == 0:
            b.dir(f"d{i // 100:04d}")
        b.file(f"d{i // 100:04d}/" + name.format(i=i))
    b.write(tar)
    TarIndex.scan(str(tar)).save(f"{tar}.idx")
    idx = TarIndex.load(f"{tar}.idx", str(tar))
    assert idx is not None
    return idx

