"""The tree as data, pure: what the mount shows and the pack writes.

`entry`: `Entry`, one item of the tree; `view`: the `View` (prefix dirs, bundles, grafts of
images, the reference's filter, files, kernel, volumes) built from a config and its images,
walked as entries or with each graft's as one `Members`;
`imagefs`: one image's own filesystem (`ImageFS`, `image_view`) for the image commands.
"""

from fusebundle.bundle.entry import Entry, directory, regular
from fusebundle.bundle.imagefs import ImageFS, image_view
from fusebundle.bundle.view import Members, View, build_view, flat

__all__ = ["Entry", "ImageFS", "Members", "View", "build_view", "directory", "flat",
           "image_view", "regular"]
