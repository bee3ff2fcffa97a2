"""Keys of datalist items and of the metadata that travels with each window or patch.

A datalist item is a :class:`scripts.prepare.PreparedSlide` as a dict (:data:`SLIDE_ID`,
:data:`IMAGE`, :data:`SHAPE`, :data:`DOWNSCALE`, :data:`STORE`: its field names) plus where the
window is (:data:`LOCATION`, :data:`SIZE`: MONAI's ``WSIPatchKeys``).
:class:`scripts.datasets.SlideRegionDataset` copies :data:`WINDOW_META_KEYS` into
each window's metadata and adds :data:`PATH` (MONAI's) and :data:`READ_ERROR`.
"""

from __future__ import annotations

from monai.utils import WSIPatchKeys

__all__ = [
    "DOWNSCALE",
    "IMAGE",
    "LOCATION",
    "PATH",
    "READ_ERROR",
    "SHAPE",
    "SIZE",
    "SLIDE_ID",
    "STORE",
    "WINDOW_META_KEYS",
]

SLIDE_ID = "slide_id"
IMAGE = "image"  # in a datalist item the slide file; after loading, the window's pixels
SHAPE = "shape"  # level-0 (height, width) of the image read
DOWNSCALE = "downscale"
STORE = "store"
LOCATION = WSIPatchKeys.LOCATION.value  # level-0 (y, x) of the window's top left corner
SIZE = WSIPatchKeys.SIZE.value  # (height, width) at the working resolution
PATH = WSIPatchKeys.PATH.value
READ_ERROR = "read_error"  # empty when the window was read; else why it reads as glass

WINDOW_META_KEYS = (SLIDE_ID, STORE, DOWNSCALE, SHAPE)  # copied from the datalist item into the metadata
