"""The tar format, both ways, knowing nothing of images.

`index`: the one-pass header scan and the columnar index saved beside a tar; `colfile`: the
saved indexes' file format (narrowed columns and blobs, used in place through mmap).
"""

from fusebundle.tar.index import IndexEntry, TarIndex, open_index, read_sparse

__all__ = ["IndexEntry", "TarIndex", "open_index", "read_sparse"]
