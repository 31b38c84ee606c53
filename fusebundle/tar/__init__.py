"""The tar format, both ways, knowing nothing of images.

`header`: fields, PAX and GNU records, global records, sparse maps and the bounds one archive
may ask of us; `scan`: the one-pass scanner's hot loop; `index`: `IndexEntry` and the columnar
`TarIndex` saved beside a tar; `colfile`: the saved indexes' file format (narrowed columns and
blobs, used in place through mmap); `feed`: the scan of a tar while it is being written.
"""

from fusebundle.tar.index import IndexEntry, Stamp, TarIndex, open_index, read_sparse

__all__ = ["IndexEntry", "Stamp", "TarIndex", "open_index", "read_sparse"]
