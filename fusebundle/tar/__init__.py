"""The tar format, both ways, knowing nothing of images.

`extent`: `Extent` (where a regular file's bytes are) and its `Source`, whose guard says whether
the offsets still hold, read by every renderer, and `SourceFds`, the sources' descriptors kept
open; `header`: fields, PAX and GNU records, global records, sparse maps and the bounds one
archive may ask of us; `scan`: the one-pass scanner's hot loop; `index`: `IndexEntry` and the
columnar `TarIndex` saved beside a tar; `colfile`: the saved indexes' file format (narrowed
columns and blobs, used in place through mmap); `feed`: the scan of a tar while it is being
written.
"""

from fusebundle.tar.extent import Extent, Source, SourceFds, body_size
from fusebundle.tar.index import IndexEntry, Stamp, TarIndex, open_index, read_sparse

__all__ = ["Extent", "IndexEntry", "Source", "SourceFds", "Stamp", "TarIndex", "body_size",
           "open_index", "read_sparse"]
