"""The per-slide zarr store: the names of its arrays and attributes, and every read of it.

:mod:`scripts.prepare` builds a store (streaming, atomically) with these names; every other module
reads stores through the functions here and never spells a key itself.

Arrays: :data:`LABEL` (working resolution, labelled slides only), :data:`TISSUE` and :data:`REGIONS`
(the tissue mask's resolution: :data:`TISSUE_DOWNSAMPLE` level-0 pixels per pixel; region codes in
:mod:`scripts.regions`). Attributes: :data:`SLIDE_ID`, :data:`SHAPE` (level 0), :data:`DOWNSCALE`,
:data:`TISSUE_DOWNSAMPLE`, :data:`GLOMERULI` (level-0 boxes ``[y0, x0, y1, x1]``), :data:`MPP` and
:data:`MPP_SOURCE` (the slide's microns per level-0 pixel and what stated it, :mod:`scripts.scale`) and
:data:`FINGERPRINT` (what the store was built from).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr

from .scale import SlideScale

__all__ = [
    "DOWNSCALE",
    "FINGERPRINT",
    "GLOMERULI",
    "LABEL",
    "MPP",
    "MPP_SOURCE",
    "REGIONS",
    "SHAPE",
    "SLIDE_ID",
    "TISSUE",
    "TISSUE_DOWNSAMPLE",
    "has_label",
    "open_store",
    "read_fingerprint",
    "read_glomeruli",
    "read_regions",
    "read_scale",
    "read_tissue",
    "read_window",
]

LABEL = "label"
TISSUE = "tissue"
REGIONS = "regions"

SLIDE_ID = "slide_id"
SHAPE = "shape"
DOWNSCALE = "downscale"
TISSUE_DOWNSAMPLE = "tissue_downsample"
GLOMERULI = "glomeruli"
MPP = "mpp"
MPP_SOURCE = "mpp_source"
FINGERPRINT = "fingerprint"


def open_store(store: str | os.PathLike, mode: str = "r") -> zarr.Group:
    """The store's zarr group (``mode`` ``"w"`` creates an empty one)."""
    return zarr.open_group(store, mode=mode)


def read_fingerprint(store: str | os.PathLike) -> str | None:
    """The fingerprint a complete store was built from; ``None`` where there is no readable store."""
    try:
        return open_store(store).attrs.get(FINGERPRINT)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
        return None


def has_label(store: str | os.PathLike) -> bool:
    """Whether the store holds a label mask (a slide with RLE or polygons)."""
    return LABEL in open_store(store)


def read_glomeruli(store: str | os.PathLike) -> list[list[int]]:
    """The labelled glomeruli's level-0 boxes ``[y0, x0, y1, x1]`` (empty for an unlabelled slide)."""
    return list(open_store(store).attrs[GLOMERULI])


def read_scale(store: str | os.PathLike) -> SlideScale:
    """The slide's scale as preparation found it (a store without one: ``SlideScale(None, "none")``)."""
    attrs = open_store(store).attrs
    return SlideScale(attrs.get(MPP), attrs.get(MPP_SOURCE, "none"))


def read_tissue(store: str | os.PathLike) -> tuple[np.ndarray, int]:
    """``(tissue mask as bool, level-0 pixels per mask pixel)``."""
    group = open_store(store)
    return group[TISSUE][:] > 0, int(group.attrs[TISSUE_DOWNSAMPLE])


def read_regions(store: str | os.PathLike) -> tuple[np.ndarray, int]:
    """``(region map of codes, level-0 pixels per map pixel)``; codes in :mod:`scripts.regions`."""
    group = open_store(store)
    return group[REGIONS][:], int(group.attrs[TISSUE_DOWNSAMPLE])


def read_window(store: str | os.PathLike, name: str, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """Read ``[y0, y0 + height) x [x0, x0 + width)`` of an array in a store; outside it reads as 0.

    Args:
        store: the zarr store.
        name: :data:`LABEL`, :data:`TISSUE` or :data:`REGIONS`.
        y0: top row (may be negative).
        x0: left column (may be negative).
        height: rows to read.
        width: columns to read.

    Returns:
        ``(height, width)`` array of the array's dtype.
    """
    array = zarr.open_array(Path(store) / name, mode="r")
    window = np.zeros((height, width), dtype=array.dtype)
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + height, array.shape[0]), min(x0 + width, array.shape[1])
    if bottom > top and right > left:
        window[top - y0 : bottom - y0, left - x0 : right - x0] = array[top:bottom, left:right]
    return window
