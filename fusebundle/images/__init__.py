"""From a reference to an image the view can index.

`handle`: what every image handle offers (`ImageHandle`, `PullableImage`); `resolver`: which
source each image comes from (--from in order, or the default);
`layered`: an image of stored layers, fetched on first use; `flatten`: layer indexes -> one
export-like merged index (whiteouts, walk order, link election), or the image's own;
`exported`: the engine exports' cache; `layout`: an image as an OCI layout tar, for volumes
with `format: oci`; `refspec`: an image spelled as skopeo spells it (transport, where, which image).
"""

from fusebundle.images.exported import Cache, LazyImage, default_cache_dir
from fusebundle.images.handle import ImageHandle, PullableImage, Pulled
from fusebundle.images.layered import LayeredImage
from fusebundle.images.layout import LayoutImage
from fusebundle.images.resolver import Resolver

__all__ = ["Cache", "ImageHandle", "LayeredImage", "LayoutImage", "LazyImage", "PullableImage",
           "Pulled", "Resolver", "default_cache_dir"]
