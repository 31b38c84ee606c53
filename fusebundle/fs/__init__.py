"""The view served through FUSE (read-only). Importing this package imports pyfuse3 and trio:
only the mount's server does, at one place (`cli.mount.serve`).

`inode`: inode numbers and `Stat`; `tree`: the view as inodes (synthetic nodes, and
the grafts placed among them); `graft_tree`: one graft's arrays over its image's index, saved
beside it; `ops`: the FUSE calls; `reader`: the bytes of regular files out of their sources
(descriptors, mappings, sparse reads, source checks); `preload`: the sibling preload (a
directory's small files sent to the kernel on its first read); `mapped`: a
read-only mapping of a source tar that large reads reply from; `loop`: the server's wait for
requests (poll /dev/fuse, park in trio when idle); `serve`: init, the trio main (requests,
signals, the ready announcement), close.
"""

from fusebundle.fs import serve
from fusebundle.fs.ops import Operations
from fusebundle.fs.tree import Tree

__all__ = ["Operations", "Tree", "serve"]
