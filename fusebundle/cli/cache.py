"""`fusebundle cache ls` and `fusebundle cache prune`: what the layer store holds, and cleanup.

    fusebundle cache ls                 # images (ref, manifest digest, platform, source), layers
    fusebundle cache prune              # drop layers no cached image uses; never one in use

Both read the store under --cache-dir; the engine exports beside it (exports/) are not theirs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from fusebundle.images import default_cache_dir
from fusebundle.store import Store

SHORT = 12  # hex digits of a digest in a table, as docker shows image IDs


def _cache_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the cache to look at (default: $FUSEBUNDLE_CACHE_DIR or "
                        "$XDG_CACHE_HOME/fusebundle)")


def add_args(c: argparse.ArgumentParser,
             cache_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """The verbs `cache ls` and `cache prune` under `cache`'s parser (made by the fusebundle
    command)."""
    add = cache_args or _cache_args
    c.description = "The image layers and image records fusebundle keeps."
    verbs = c.add_subparsers(dest="cache_command", required=True, parser_class=type(c))
    ls = verbs.add_parser("ls", help="list the stored images and layers",
                          description="List the stored images (reference, manifest digest, "
                                      "platform, source) and layers (size, images using "
                                      "each), with totals.")
    add(ls)
    ls.add_argument("--no-trunc", action="store_true", help="show whole digests")
    ls.add_argument("--json", action="store_true",
                    help="one JSON document: images, layers, merged indexes, the cache's root")
    ls.set_defaults(run=cmd_ls)
    pr = verbs.add_parser("prune", help="remove layers no stored image uses",
                          description="Remove the layers that no stored image uses, and "
                                      "temporary files left by interrupted runs. A layer a "
                                      "running mount, pack or pull uses is kept.")
    add(pr)
    pr.set_defaults(run=cmd_prune)


def human(n: int) -> str:
    """Bytes as 512 B, 1.5 KiB, 12.3 MiB, 2.0 GiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1023.95:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def _short(digest: str, whole: bool) -> str:
    if whole or not digest:
        return digest or "-"
    algo, _, hex_ = digest.partition(":")
    return f"{algo}:{hex_[:SHORT]}"


def table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    out = []
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)] + [r[-1]]
        out.append("  ".join(cells).rstrip())
    return out


def _store(args: argparse.Namespace) -> Store:
    return Store(args.cache_dir or default_cache_dir())


def cmd_ls(args: argparse.Namespace) -> int:
    """fusebundle cache ls: the stored images, then the stored layers, then totals."""
    store = _store(args)
    whole = args.no_trunc
    images = store.images()
    layers = store.layers(images)
    if getattr(args, "json", False):
        print(json.dumps(_ls_doc(store, images, layers), indent=2))
        return 0
    size_of = {x.diff_id: x.size for x in layers}
    rows = []
    for r in images:
        im = r.image
        have = [x.diff_id for x in im.layers if x.diff_id in size_of]
        rows.append((im.name, _short(im.manifest_digest, whole), im.platform,
                     f"{len(have)}/{len(im.layers)}", human(sum(size_of[d] for d in have)),
                     r.stored.replace("T", " ").removesuffix("Z"), im.source))
    if rows:
        print("\n".join(table(("IMAGE", "MANIFEST", "PLATFORM", "LAYERS", "SIZE",
                               "STORED (UTC)", "SOURCE"), rows)))
    else:
        print("no images")
    print()
    lrows = [(_short(x.diff_id, whole), human(x.size), ", ".join(x.used_by) or "-")
             for x in layers]
    if lrows:
        print("\n".join(table(("LAYER", "SIZE", "USED BY"), lrows)))
    else:
        print("no layers")
    total = sum(x.size for x in layers)
    unused = [x for x in layers if not x.used_by]
    print()
    print(f"{len(images)} image{'s' * (len(images) != 1)}, {len(layers)} "
          f"layer{'s' * (len(layers) != 1)}, {human(total)} ({total} bytes) in {store.root}")
    merged = store.merged()
    if merged:
        n = sum(size for _, size in merged)
        print(f"{len(merged)} merged image index{'es' * (len(merged) != 1)}, {human(n)} "
              f"({n} bytes)")
    if unused:
        n = sum(x.size for x in unused)
        them = "them" if len(unused) > 1 else "it"
        print(f"{len(unused)} layer{'s' * (len(unused) != 1)} ({human(n)}) used by no image: "
              f"`fusebundle cache prune` removes {them}")
    return 0


def _ls_doc(store: Store, images: list[Any], layers: list[Any]) -> dict[str, Any]:
    """What `cache ls --json` prints: every field whole, sizes in bytes."""
    size_of = {x.diff_id: x.size for x in layers}
    return {
        "root": store.root,
        "images": [{"name": r.image.name, "manifest_digest": r.image.manifest_digest or None,
                    "config_digest": r.image.config_digest, "platform": r.image.platform,
                    "source": r.image.source, "stored": r.stored,
                    "layers": [{"diff_id": x.diff_id, "present": x.diff_id in size_of}
                               for x in r.image.layers]} for r in images],
        "layers": [{"diff_id": x.diff_id, "size": x.size, "used_by": x.used_by}
                   for x in layers],
        "merged": [{"path": p, "size": n} for p, n in store.merged()],
    }


def cmd_prune(args: argparse.Namespace) -> int:
    """fusebundle cache prune: remove what no image uses and say what was kept and why."""
    store = _store(args)
    report = store.prune()
    for x in report.removed:
        print(f"removed layer {x.diff_id}  {human(x.size)}")
    for x in report.in_use:
        print(f"kept layer {x.diff_id}  {human(x.size)}  (in use by a running fusebundle)")
    for path, n in report.temps:
        print(f"removed temporary file {path}  {human(n)}")
    for path, n in report.merged:
        print(f"removed merged index {path}  {human(n)}")
    for path, why in report.bad_records:
        print(f"removed corrupt image record {path}: {why}")
    print(f"freed {human(report.freed)} ({report.freed} bytes); kept {report.kept} "
          f"layer{'s' * (report.kept != 1)} used by stored images")
    return 0
