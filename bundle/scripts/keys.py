"""Keys of datalist items and of the metadata that travels with each window or patch.

A datalist item is a :class:`scripts.prepare.PreparedSlide` as a dict (:data:`SLIDE_ID`,
:data:`IMAGE`, :data:`SHAPE`, :data:`DOWNSCALE`, :data:`STORE`: its field names) plus where the
window is (:data:`LOCATION`, :data:`SIZE`: MONAI's ``WSIPatchKeys``); a training sampling unit
(:mod:`scripts.sampling`) adds its kind (:data:`UNIT_KIND`) and what its centre is drawn from.
:class:`scripts.datasets.SlideRegionDataset` copies :data:`WINDOW_META_KEYS` into
each window's metadata and adds :data:`PATH` (MONAI's) and :data:`READ_ERROR`.
"""

from __future__ import annotations

from monai.utils import WSIPatchKeys

__all__ = [
    "BBOX",
    "CENTRE",
    "DOWNSCALE",
    "GLOMERULUS_UNIT",
    "GRID_UNIT",
    "HARD_UNIT",
    "IMAGE",
    "LOCATION",
    "PATH",
    "RANDOM_UNIT",
    "READ_ERROR",
    "SHAPE",
    "SIZE",
    "SLIDE_ID",
    "STORE",
    "UNIT_KIND",
    "WEIGHTS",
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

UNIT_KIND = "region"  # a training sampling unit's kind, one of:
GLOMERULUS_UNIT = "glomerulus"  # centre in the unit's BBOX, a labelled glomerulus's level-0 [y0, x0, y1, x1]
RANDOM_UNIT = "random"  # centre drawn from the slide's region map with the unit's WEIGHTS per region class
HARD_UNIT = "hard"  # centre in a box of the network's mined false positives (scripts.mining), else as RANDOM_UNIT
GRID_UNIT = "grid"  # the unit's fixed level-0 CENTRE
BBOX = "bbox"
WEIGHTS = "weights"
CENTRE = "centre"
