"""Each package's face: the names it exports (`__all__`) are pinned here, so that a change to
what the rest of the house may use is a deliberate edit of this list, not a side effect."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import fusebundle

FACES = {
    "fusebundle.cli": ["main"],
    "fusebundle.pack": ["FORMATS", "check_output", "pack", "write"],
    "fusebundle.fs": ["Operations", "Tree", "serve"],
    "fusebundle.bundle": ["Entry", "ImageFS", "Members", "View", "build_view", "directory",
                          "flat", "image_view", "regular"],
    "fusebundle.images": ["Cache", "ImageHandle", "LayeredImage", "LayoutImage", "LazyImage",
                          "PullableImage", "Pulled", "Resolver", "default_cache_dir"],
    "fusebundle.store": ["BadLayer", "CorruptLayer", "ImageRecord", "LayerInfo", "PruneReport",
                         "Store", "StoreError"],
    "fusebundle.sources": ["TRANSPORTS", "ImageInfo", "LayerRef", "LayerSource", "NotFound",
                           "Options", "Platform", "ResolvedImage", "Transport"],
    "fusebundle.config": ["Config", "Container", "FileSpec", "Volume", "load_config"],
    "fusebundle.tar": ["Extent", "IndexEntry", "Source", "SourceFds", "Stamp", "TarIndex",
                       "body_size", "open_index", "read_sparse"],
}


def test_every_package_has_a_pinned_face() -> None:
    packages = {f"fusebundle.{m.name}" for m in pkgutil.iter_modules(fusebundle.__path__)
                if m.ispkg}
    assert packages == set(FACES)


@pytest.mark.parametrize("name", sorted(FACES))
def test_face_exports(name: str) -> None:
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(FACES[name])
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


def test_no_module_imports_another_modules_private_names() -> None:
    # A module's `_name` is its own: what another module needs is part of its face.
    root = Path(fusebundle.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("fusebundle")):
                found += [f"{path.relative_to(root)}:{node.lineno}: {a.name}"
                          for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []
