"""fs.reader without a mount: a source that cannot be opened is a SourceError (the FUSE call
turns it into EIO and logs its line), and the reader keeps one descriptor per source."""

from __future__ import annotations

from typing import cast

import pytest

from fusebundle.fs.reader import Reader, SourceError
from fusebundle.fs.tree import Tree
from fusebundle.tar import Extent, Source


def _reader() -> Reader:
    return Reader(cast(Tree, None))  # the tree is only kept: these reads never walk it


def test_a_source_that_cannot_be_opened_is_a_source_error(tmp_path) -> None:
    gone = tmp_path / "gone.tar"
    with pytest.raises(SourceError) as e:
        _reader().source_fd(Extent(Source(str(gone)), 0, 10))
    assert str(e.value) == f"{gone}: cannot open: No such file or directory"


def test_a_source_is_opened_once_and_bytes_in_memory_have_none(tmp_path) -> None:
    path = tmp_path / "layer.tar"
    path.write_bytes(b"0123456789")
    ext = Extent(Source(str(path)), 2, 5)
    reader = _reader()
    assert reader.open_fd(ext) == -1  # the preload's question opens nothing
    fd = reader.source_fd(ext)
    assert reader.source_fd(Extent(Source(str(path)), 0, 1)) == fd
    assert reader.open_fd(ext) == fd
    assert reader.source_fd(b"inline") == -1 and reader.open_fd(b"inline") == -1
    reader.close()
    assert reader.open_fd(ext) == -1
