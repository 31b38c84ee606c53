"""`fusebundle image ls|cat|export|inspect` and `fusebundle diff`: one image looked into, no config.

    fusebundle image ls alpine:3.19 /etc -l          # entries, each with the layer that gave it
    fusebundle image cat oci:./layout:1.0 /etc/os-release
    fusebundle image export docker-daemon:app:1 /srv -o srv.tar
    fusebundle image inspect docker://localhost:5000/app:1
    fusebundle diff app:1 app:2 --json

An image is spelled as skopeo spells it (`images.refspec`); what these commands show is the
image's own filesystem (`bundle.imagefs`), none of docker's container artefacts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fusebundle.bundle import Entry, ImageFS, build_view
from fusebundle.bundle.imagefs import ROOT, PathError, Row, split
from fusebundle.cli.session import open_image, open_session
from fusebundle.config import load_config
from fusebundle.errors import UserError
from fusebundle.images.refspec import SPELLINGS
from fusebundle.pack import check_output, write
from fusebundle.tar import Extent, Source, TarIndex
from fusebundle.tar.extent import CHUNK

TYPES = {"f": "file", "d": "dir", "l": "symlink", "h": "hardlink", "c": "char", "b": "block",
         "p": "fifo"}
_IFMT = {"f": stat.S_IFREG, "h": stat.S_IFREG, "d": stat.S_IFDIR, "l": stat.S_IFLNK,
         "c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
SHORT = 12  # hex digits of a diff_id in `ls -l`, as docker shows image IDs
DIFF_SAME, DIFF_DIFFERENT, DIFF_TROUBLE = 0, 1, 2  # as diff(1) exits


def add_image_args(im: argparse.ArgumentParser,
                   image_args: Callable[[argparse.ArgumentParser], None]) -> Any:
    """The verbs under `image`'s parser (made by the fusebundle command); returns their
    subparsers (for `image mount`)."""
    im.description = ("Look inside one image without a config. IMAGE is spelled as skopeo "
                      f"does: {SPELLINGS}. What is shown is the image as its layers make it, "
                      "without docker's container artefacts.")
    verbs = im.add_subparsers(dest="image_command", required=True, parser_class=type(im))
    ls = verbs.add_parser("ls", help="list entries, with the layer that gives each",
                          description="List the entries at PATHs (default /): type, mode, "
                                      "owner, size, mtime, link target, and the topmost layer "
                                      "whose tar holds the entry (0 = the bottom layer).")
    image_args(ls)
    ls.add_argument("image", metavar="IMAGE")
    ls.add_argument("paths", nargs="*", metavar="PATH", help="default: /")
    ls.add_argument("-R", "--recursive", action="store_true", help="list subtrees too")
    ls.add_argument("-l", "--long", action="store_true", help="every field, one entry a line")
    ls.add_argument("--json", action="store_true",
                    help="one JSON object a line: path, type, mode, uid, gid, size, mtime, "
                         "link, layer, diff_id (and sha256 with --digest)")
    ls.add_argument("--layer", type=int, metavar="N",
                    help="list layer N's own entries (0 = the bottom), whiteouts included")
    ls.add_argument("--digest", action="store_true", help="add each file's sha256")
    ls.set_defaults(run=cmd_ls, more="paths")

    cat = verbs.add_parser("cat", help="print files of an image",
                           description="Write the bytes of the files at PATHs to stdout. "
                                       "Symlinks are followed inside the image, as in a chroot.")
    image_args(cat)
    cat.add_argument("image", metavar="IMAGE")
    cat.add_argument("paths", nargs="+", metavar="PATH")
    cat.set_defaults(run=cmd_cat, more="paths")

    ex = verbs.add_parser("export", help="write the image's filesystem (or a subtree) as a tar",
                          description="Write the image's filesystem, or the subtree at PATH, "
                                      "as one tar in the image's order; written atomically "
                                      "like pack.")
    image_args(ex)
    ex.add_argument("image", metavar="IMAGE")
    ex.add_argument("path", nargs="?", metavar="PATH", help="a subtree (default: all)")
    ex.add_argument("-o", "--output", required=True, metavar="OUT.tar",
                    help="output file, written atomically; '-' for stdout")
    ex.set_defaults(run=cmd_export)

    ins = verbs.add_parser("inspect", help="the image's reference, source, config and layers",
                           description="Print as JSON: the normalised reference, the source, "
                                       "the manifest and config digests, the platform, the "
                                       "config as the image has it, and the layers.")
    image_args(ins)
    ins.add_argument("image", metavar="IMAGE")
    ins.set_defaults(run=cmd_inspect)
    return verbs


def add_diff_args(d: argparse.ArgumentParser,
                  image_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """The arguments of `diff` (its parser, made with DIFF_HELP)."""
    d.description = ("Compare A and B (each an image or a config file): the paths added, "
                     "removed and changed, and what changed. Exit 0 when equal, 1 when they "
                     "differ, 2 on an error.")
    image_args(d)
    d.add_argument("a", metavar="A")
    d.add_argument("b", metavar="B")
    d.add_argument("--json", action="store_true", help="one JSON object a line")
    d.set_defaults(run=cmd_diff)


# ------------------------------------------------------------------------------ output
_text: Callable[[bytes], str] = os.fsdecode  # a name as the terminal shows it


_quote = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _mtime(ns: int) -> str:
    """An mtime as json.dumps writes it: whole seconds as an int, else a float (its repr)."""
    sec, rest = divmod(ns, 1_000_000_000)
    return str(sec) if not rest else repr(ns / 1e9)


def row_json(row: Row, digest: str | None = None, with_digest: bool = False) -> str:
    """One `ls --json` line, as json.dumps writes the object (built by hand: 100k lines)."""
    link = "null" if row.link is None else _quote(_text(row.link))
    layer = "null" if row.layer is None else row.layer
    diff_id = "null" if row.diff_id is None else f'"{row.diff_id}"'
    line = (f'{{"path": {_quote("/" + _text(row.path))}, "type": "{TYPES[row.type]}", '
            f'"mode": "{row.mode:04o}", "uid": {row.uid}, "gid": {row.gid}, '
            f'"size": {row.size}, "mtime": {_mtime(row.mtime_ns)}, '
            f'"link": {link}, "layer": {layer}, "diff_id": {diff_id}')
    if with_digest:
        line += ', "sha256": ' + ("null" if digest is None else f'"{digest}"')
    return line + "}"


def row_long(row: Row, digest: str | None = None) -> str:
    """One `ls -l` line: mode owner size mtime layer path [-> target]."""
    when = datetime.datetime.fromtimestamp(row.mtime_ns // 1_000_000_000, datetime.UTC)
    layer = "-" if row.layer is None else f"{row.layer}:{(row.diff_id or '')[7:7 + SHORT]}"
    link = ""
    if row.type == "l":
        link = f" -> {_text(row.link or b'')}"
    elif row.type == "h":
        link = f" => /{_text(row.link or b'')}"
    size = f"{row.dev[0]}, {row.dev[1]}" if row.dev is not None else row.size  # as ls -l
    extra = f"  {digest}" if digest else ""
    return (f"{stat.filemode(_IFMT[row.type] | row.mode)} {row.uid:>5} {row.gid:>5} "
            f"{size:>10} {when:%Y-%m-%d %H:%M} {layer:<15} /{_text(row.path)}{link}{extra}")


EMIT_BATCH = 1024  # lines joined into one write: a write call per line is ~10 % of ls -R


def _emit(lines: Iterable[str]) -> None:
    out = sys.stdout
    batch: list[str] = []
    try:
        for line in lines:
            batch.append(line)
            if len(batch) >= EMIT_BATCH:
                out.write("\n".join(batch) + "\n")
                batch.clear()
    finally:  # what was made before an error is written, as line by line it would be
        if batch:
            out.write("\n".join(batch) + "\n")


# ------------------------------------------------------------------------------ image ls
def cmd_ls(args: argparse.Namespace) -> int:
    """fusebundle image ls: the entries at the paths, each with its layer."""
    handle = open_image(args, args.image)
    paths = [os.fsencode(p) for p in args.paths or ["/"]]
    fs = None if args.layer is not None else ImageFS(handle)  # --layer: no merge needed
    if fs is None:
        rows = _layer_rows(handle, args.layer, paths, args.recursive)
    else:
        rows = _rows(fs, paths, args.recursive)

    def digest_of(row: Row) -> str | None:
        if row.type not in "fh" or fs is None and row.type == "h":
            return None
        if fs is None:
            return _layer_digest(handle.layer_index(args.layer), row.path)
        i = fs.idx.find(row.path)
        return None if i is None else fs.sha256(i)

    def lines() -> Iterator[str]:
        for row in rows:
            digest = digest_of(row) if args.digest else None
            if args.json:
                yield row_json(row, digest, args.digest)
            elif args.long:
                yield row_long(row, digest)
            else:
                yield "/" + _text(row.path) + (f"  {digest}" if digest else "")

    _emit(lines())
    return 0


def _rows(fs: ImageFS, paths: list[bytes], recursive: bool) -> Iterator[Row]:
    """Each path's entry, or for a directory its children (its subtree with -R)."""
    tops = [fs.resolve(p, follow=not split(p) or p.endswith(b"/")) for p in paths]  # all first
    for i in tops:
        if fs.type_of(i) != "d":
            yield fs.row(i)
        elif recursive:
            yield from fs.rows(fs.subtree(i))
        else:
            yield from map(fs.row, fs.children(i))


def _layer_rows(handle: Any, n: int, paths: list[bytes], recursive: bool) -> Iterator[Row]:
    """Layer n's own entries (whiteouts as they are) at the paths."""
    count = len(handle.image.layers)
    if not 0 <= n < count:
        raise UserError(f"--layer {n}: out of range (image {handle.image.ref} has {count} "
                        f"layer{'s' * (count != 1)}: 0 to {count - 1})")
    idx = handle.layer_index(n)
    diff_id = handle.image.layers[n].diff_id
    wanted = [b"/".join(split(p)) for p in paths]
    for p in wanted:
        if p and idx.find(p) is None and not _has_below(idx, p):
            raise PathError(f"image {handle.image.ref}: layer {n}: /{_text(p)}: not in this "
                            "layer")
    return _layer_walk(idx, n, diff_id, wanted, recursive)


def _layer_digest(idx: TarIndex, name: bytes) -> str | None:
    i = idx.find(name)
    if i is None:
        return None
    e = idx.entry(i)
    return _digest(Entry(path=e.name, type="f", mode=e.mode, size=e.size, body=idx.extent(i)))


def _has_below(idx: TarIndex, p: bytes) -> bool:
    return any(e.name.startswith(p + b"/") for e in idx)


def _layer_walk(idx: TarIndex, n: int, diff_id: str, wanted: list[bytes], recursive: bool
                ) -> Iterator[Row]:
    for p in wanted:
        depth = p.count(b"/") + 1 if p else 0
        for e in idx:
            if not e.name or not (e.name == p or not p or e.name.startswith(p + b"/")):
                continue
            if e.name != p and not recursive and e.name.count(b"/") != depth:
                continue
            yield Row(e.name, e.type, e.mode, e.uid, e.gid, e.size if e.type == "f" else 0,
                      e.mtime_ns, e.linkname if e.type in "lh" else None, n, diff_id,
                      (e.devmajor, e.devminor) if e.type in "cb" else None)


# ------------------------------------------------------------------------------ image cat
def cmd_cat(args: argparse.Namespace) -> int:
    """fusebundle image cat: the bytes of files, symlinks followed inside the image."""
    fs = ImageFS(open_image(args, args.image))
    found = []
    for p in args.paths:  # every path checked before a byte is written
        i = fs.resolve(os.fsencode(p))
        kind = fs.type_of(i)
        if kind not in "fh":
            what = {"d": "is a directory", "c": "is a character device",
                    "b": "is a block device", "p": "is a fifo"}[kind]
            raise PathError(f"image {fs.ref}: /{p.lstrip('/')}: {what}, not a file")
        found.append(i)
    sys.stdout.flush()
    fd = sys.stdout.fileno()
    for i in found:
        for chunk in fs.chunks(i):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    return 0


# ------------------------------------------------------------------------------ export
def cmd_export(args: argparse.Namespace) -> int:
    """fusebundle image export: the image's filesystem (or a subtree) as one tar."""
    check_output(args.output)  # a bad -o is said before the image is fetched, as pack does
    if args.output == "-" and os.isatty(sys.stdout.fileno()):
        raise UserError("refusing to write a tar to a terminal; use -o FILE or a pipe")
    fs = ImageFS(open_image(args, args.image))
    top = ROOT if args.path is None else fs.resolve(os.fsencode(args.path))
    write(fs.pieces(top), args.output)
    return 0


# ------------------------------------------------------------------------------ inspect
def inspect_doc(handle: Any) -> dict[str, Any]:
    """What `image inspect` prints."""
    im = handle.image
    return {"reference": im.name, "source": im.source, "manifest_digest": im.manifest_digest
            or None, "config_digest": im.config_digest, "platform": im.platform,
            "config": json.loads(im.config_bytes),
            "layers": [{"digest": x.digest, "diff_id": x.diff_id, "media_type": x.media_type,
                        "size": x.size if x.size >= 0 else None} for x in im.layers]}


def cmd_inspect(args: argparse.Namespace) -> int:
    """fusebundle image inspect: the image's reference, source, config and layers as JSON."""
    print(json.dumps(inspect_doc(open_image(args, args.image)), indent=2))
    return 0


# ------------------------------------------------------------------------------ diff
def _side(args: argparse.Namespace, what: str) -> Any:
    """An image's own merged index, or a config's bundle tree as path -> entry."""
    if os.path.isfile(what):
        args.configs = [what]
        cfg = load_config([what])
        session = open_session(args)
        view = build_view(cfg, session.resolve, resolve_layout=session.resolve_layout)
        # a path met twice (prefix dirs): the last wins, as when the tar is extracted
        return {e.path: e for e in view.entries()}
    return open_image(args, what).own_index()


def _by_path(side: Any) -> dict[bytes, Any]:
    return side if isinstance(side, dict) else {e.name: e for e in side}


def _walk_key(name: bytes) -> bytes:
    return name.replace(b"/", b"\x00")  # the merged index's order ('/' below every byte)


def _joined(a: Any, b: Any) -> Iterator[tuple[bytes, Any, Any]]:
    """Two images' entries side by side: both merged indexes are in walk order, so one pass
    over their name columns joins them.  A name whose entry is the same header of the same
    stored layer tar (same diff_id) on both sides is equal without making either entry."""
    ca, cb = a.columns(), b.columns()
    tar_of_b = {p: n for n, p in enumerate(b.layer_paths)}
    same_tar = [tar_of_b.get(p, -1) for p in a.layer_paths]  # a's layer -> b's, or -1
    src_a, src_b = a._srcs, b._srcs
    hard = ord("h")
    i = j = 0
    while i < len(a) or j < len(b):
        x = _name(ca, i) if i < len(a) else None
        y = _name(cb, j) if j < len(b) else None
        if x == y:
            if not (ca.offsets[i] == cb.offsets[j] and ca.types[i] == cb.types[j] != hard
                    and same_tar[src_a[i]] == src_b[j]):
                yield x, a.entry(i), b.entry(j)
            i, j = i + 1, j + 1
        elif y is None or (x is not None and _walk_key(x) < _walk_key(y)):
            yield x, a.entry(i), None
            i += 1
        else:
            yield y, None, b.entry(j)
            j += 1


def _name(c: Any, i: int) -> bytes:
    return bytes(c.names[c.name_ends[i - 1] if i else 0 : c.name_ends[i]])


def _pairs(a: Any, b: Any) -> Iterator[tuple[bytes, Any, Any]]:
    if not isinstance(a, dict) and not isinstance(b, dict):
        yield from _joined(a, b)
        return
    a, b = _by_path(a), _by_path(b)
    for path in sorted(a.keys() | b.keys()):
        yield path, a.get(path), b.get(path)


def _same_bytes(a: Any, b: Any) -> bool:
    """Content equal: the index decides when both are the same bytes of the same tar (same
    diff_id, same file) or of different sizes; else both are hashed."""
    if a.size != b.size:
        return False
    x, y = _body(a), _body(b)
    if not isinstance(x, Extent) or not isinstance(y, Extent):
        return _bytes(a) == _bytes(b)
    if x.source.path == y.source.path and x.offset == y.offset:
        return True
    return _digest(a) == _digest(b)


def _body(e: Any) -> Extent | bytes | None:
    """Where an entry's bytes are: a view's `Entry` says, an index's `IndexEntry` is in its
    tar (no guard: a diff reads once)."""
    if isinstance(e, Entry):
        return e.body
    return Extent(Source(e.src), e.offset, e.size, e.sparse)


def _bytes(e: Any) -> bytes:
    body = _body(e)
    return body if isinstance(body, bytes) else b"".join(_chunks(e))


def _chunks(e: Any) -> Iterator[bytes | bytearray]:
    """The bytes of an entry (a view's or an index's), a MiB at a time."""
    body = _body(e)
    if not isinstance(body, Extent):
        if body is not None:
            yield body
        return
    if not body.size:
        return
    with open(body.source.path, "rb") as f:
        for pos in range(0, body.size, CHUNK):
            yield body.read(f.fileno(), pos, CHUNK)


def _digest(e: Any) -> str:
    import hashlib
    h = hashlib.sha256()
    for chunk in _chunks(e):
        h.update(chunk)
    return h.hexdigest()


def changes(a: Any, b: Any) -> list[str]:
    """What differs between two entries of one path (empty: equal); a view's `Entry` or an
    index's `IndexEntry`, which share these fields."""
    if a.type != b.type:
        return ["type"]
    out = []
    if a.type == "f" and not _same_bytes(a, b):
        out.append("content")
    if a.mode != b.mode:
        out.append("mode")
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append("owner")
    if a.type == "f" and a.size != b.size:
        out.append("size")
    if a.linkname != b.linkname or (a.type in "cb" and (a.devmajor, a.devminor) != (
            b.devmajor, b.devminor)):
        out.append("link" if a.type in "lh" else "device")
    if dict(a.xattrs or {}) != dict(b.xattrs or {}):
        out.append("xattrs")
    return out


def cmd_diff(args: argparse.Namespace) -> int:
    """fusebundle diff: paths added, removed and changed between A and B; exit as diff(1)."""
    try:
        found = []
        for path, a, b in _pairs(_side(args, args.a), _side(args, args.b)):
            if b is None:
                found.append((path, "removed", []))
            elif a is None:
                found.append((path, "added", []))
            else:
                what = changes(a, b)
                if what:
                    found.append((path, "changed", what))
    except UserError as e:
        print(f"fusebundle: {e}", file=sys.stderr)
        return DIFF_TROUBLE
    for path, change, what in found:
        if args.json:
            print(json.dumps({"path": "/" + _text(path), "change": change, "what": what}))
        else:
            mark = {"removed": "-", "added": "+", "changed": "M"}[change]
            detail = f"  ({', '.join(what)})" if what else ""
            print(f"{mark} /{_text(path)}{detail}")
    return DIFF_DIFFERENT if found else DIFF_SAME
