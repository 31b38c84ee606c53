"""The sibling preload reads dense spans of small files only (issue 22): the rule, and a mount
where small files interleaved with large ones are left to their own reads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from support.imagetools import RootfsBuilder
from support.mounts import NO_OPEN_MOUNT, _resident_pages, app_layout, mounted

from fusebundle.fs import preload
from fusebundle.fs.preload import GAP, HEADER, dense_spans

SMALL = {f"s{i:02d}": f"small {i}\n".encode() * (i + 3) for i in range(8)}
LARGE = os.urandom(preload.PRELOAD + 4096)  # too large to preload, and wider than GAP

pytestmark = NO_OPEN_MOUNT  # the same mount preconditions as test_fs_noopen


def test_side_by_side_small_files_make_one_span() -> None:
    # Tiny files, each after its 512-byte header: mostly headers, yet all of them small files.
    members = [(10 + i, 512 + i * 1024, 100) for i in range(5)]
    assert dense_spans(members) == [(512, 512 + 4 * 1024 + 100, [0, 1, 2, 3, 4])]


def test_a_large_member_between_small_files_splits_the_span() -> None:
    members = [(1, 512, 3000), (2, 4096, 3000), (3, 4096 + 3000 + GAP + 1, 3000),
               (4, 4096 + 3000 + GAP + 1 + 3584, 3000)]
    assert [run for _, _, run in dense_spans(members)] == [[0, 1], [2, 3]]


def test_a_lone_small_file_is_not_read_ahead() -> None:
    members = [(1, 512, 3000), (2, 512 + 3000 + GAP + 1, 3000)]
    assert dense_spans(members) == []


def test_a_span_mostly_of_other_bytes_is_not_read() -> None:
    # Two small files GAP apart: the run holds them, but its bytes are mostly someone else's.
    own = 200
    members = [(1, 0, own), (2, GAP, own)]
    assert GAP - own - 2 * HEADER > 2 * own
    assert dense_spans(members) == []
    # The same two files with their headers between them are read.
    assert dense_spans([(1, 0, own), (2, 1024, own)]) == [(0, 1024 + own, [0, 1])]


def test_a_span_larger_than_the_bound_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preload, "PRELOAD_SPAN", 4096)
    members = [(i, i * 1024, 1000) for i in range(8)]
    assert dense_spans(members) == []


def test_members_out_of_order_are_sorted_by_offset() -> None:
    members = [(3, 2048, 100), (1, 0, 100), (2, 1024, 100)]
    assert dense_spans(members) == [(0, 2148, [1, 2, 0])]


def _rootfs() -> RootfsBuilder:
    b = RootfsBuilder().dir("dense").dir("mixed")
    for name, data in SMALL.items():
        b.file(f"dense/{name}", data)
    for name, data in SMALL.items():
        b.file(f"mixed/{name}", data)
        b.file(f"mixed/{name}.large", LARGE)  # between every two small files, in the tar too
    return b


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return app_layout(tmp_path_factory.mktemp("layout"), _rootfs())


def test_small_files_between_large_ones_are_not_sent_ahead(layout: Path, tmp_path: Path) -> None:
    # Plus: a store needs the kernel to know the inode, which a lean listing does not give.
    with mounted(layout, tmp_path, "--listing=plus") as root:
        for d in ("dense", "mixed"):
            os.listdir(root / d)
            assert (root / d / "s00").read_bytes() == SMALL["s00"]
        time.sleep(0.5)  # the preload runs after the reply
        # Side by side in the tar: sent with the first read (the preload works here) ...
        for name in list(SMALL)[1:]:
            assert _resident_pages(root / "dense" / name) == (1, 1), name
        # ... one by one between large files: reading them ahead would read the large files.
        for name in list(SMALL)[1:]:
            assert _resident_pages(root / "mixed" / name)[0] == 0, name
        for name, data in SMALL.items():
            assert (root / "mixed" / name).read_bytes() == data
