"""Slides resampled to a working scale that no pyramid level holds: the geometry of a non-integer
number of level-0 pixels per working pixel, and the band readers built on it.

A working pixel ``r`` covers level-0 pixels ``[r * factor, (r + 1) * factor)``; its centre lies at
level-0 position ``(r + 0.5) * factor``. Images are resampled on those centres with an anti-aliasing
prefilter, labels are sampled at them, and working-resolution probabilities go back to level 0 by the
bilinear upsampling of ``torch.nn.functional.interpolate`` (``align_corners=False``), worked out per
block so a slide's mask is made a band at a time. For a power of two, the stock pieces do the same
work exactly (a pyramid level, :func:`scripts.pyramid.pool_mask`, ``F.interpolate`` with an integer
``scale_factor``), and are used instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

__all__ = ["bilinear_neighbours", "label_band_reader", "level0_start", "reduced_shape", "resampled_band_reader"]

BandReader = Callable[[int, int], np.ndarray]
COLUMNS = 4096  # working columns resampled at a time (bounds the floating-point copy of a band)


def reduced_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """``(height, width)`` of an image of level-0 ``shape`` at ``factor`` level-0 pixels per pixel: ceil division.
    Numbers given as strings (as datalist metadata may carry them) are read as numbers."""
    factor = float(factor)
    if factor.is_integer():
        return -(-int(shape[0]) // int(factor)), -(-int(shape[1]) // int(factor))
    # a fractional factor is not exact in binary (1400 / 2.8 is 500.00000000000006): a millionth of a pixel is none
    return math.ceil(int(shape[0]) / factor - 1e-6), math.ceil(int(shape[1]) / factor - 1e-6)


def level0_start(row: int, factor: float) -> int:
    """The first level-0 row (or column) whose nearest working row is ``row`` or below it: the
    level-0 rows that working rows ``[a, b)`` decide are ``[level0_start(a), level0_start(b))``."""
    return math.ceil(row * factor - 0.5)


def bilinear_neighbours(start: int, stop: int, factor: float, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices on either side of output pixels ``[start, stop)`` of a bilinear upsampling by
    ``factor`` over ``size`` source pixels, and the weight of the second (as torch computes them)."""
    position = np.maximum((np.arange(start, stop) + 0.5) / factor - 0.5, 0.0)
    first = np.minimum(position.astype(np.int64), size - 1)
    second = np.minimum(first + 1, size - 1)
    return first, second, (position - first).astype(np.float32)


def resampled_band_reader(
    read_band: BandReader, shape: tuple[int, int], factor: float, out_width: int | None = None
) -> BandReader:
    """``read(y0, y1)``: rows of an image resampled by ``1 / factor`` from level-0 bands.

    The stock piece is ``skimage.transform.rescale(anti_aliasing=True)``: the same Gaussian prefilter
    (sigma ``(factor - 1) / 2`` when shrinking) and linear interpolation, but over a whole image; this
    reads only the level-0 rows a band needs, with a margin for the filter, so a slide streams.

    Args:
        read_band: ``read_band(y0, y1)`` of level-0 rows as ``(h, W, 3) uint8``.
        shape: level-0 ``(height, width)``.
        factor: level-0 pixels per output pixel (above 1 shrinks, below 1 enlarges).
        out_width: the output's width; default: that of :func:`reduced_shape` (a pyramid level read in
            place of level 0 may round it otherwise).

    Returns:
        A reader of output rows ``[y0, y1)`` as ``uint8`` ``(y1 - y0, out_width, 3)``.
    """
    out_width = out_width or reduced_shape(shape, factor)[1]
    height, width = shape
    sigma = max((factor - 1) / 2, 0.0)
    margin = math.ceil(4 * sigma) + 2

    def read(y0: int, y1: int) -> np.ndarray:
        s0 = max(math.floor(y0 * factor) - margin, 0)
        s1 = min(math.ceil(y1 * factor) + margin, height)
        band = read_band(s0, s1)
        out = np.empty((y1 - y0, out_width, band.shape[2]), np.uint8)
        for x0 in range(0, out_width, COLUMNS):
            x1 = min(x0 + COLUMNS, out_width)
            c0 = max(math.floor(x0 * factor) - margin, 0)
            c1 = min(math.ceil(x1 * factor) + margin, width)
            part = band[:, c0:c1].astype(np.float32)
            if sigma:
                part = ndimage.gaussian_filter(part, (sigma, sigma, 0), mode="nearest")
            offset = ((y0 + 0.5) * factor - 0.5 - s0, (x0 + 0.5) * factor - 0.5 - c0, 0)
            resampled = ndimage.affine_transform(
                part, (factor, factor, 1), offset=offset, output_shape=(y1 - y0, x1 - x0, part.shape[2]), order=1,
                mode="nearest",
            )  # fmt: skip
            out[:, x0:x1] = np.clip(resampled + 0.5, 0, 255)
        return out

    return read


def label_band_reader(read_columns: BandReader, shape: tuple[int, int], factor: float) -> BandReader:
    """``read(c0, c1)``: working columns of a level-0 mask, each working pixel the level-0 pixel at its centre.

    The stock piece for a power of two is :func:`scripts.pyramid.pool_mask` (a working pixel is
    foreground when half its level-0 pixels are); between two levels, the pixels a working pixel covers
    are not whole, so it takes the one at its centre.

    Args:
        read_columns: ``read_columns(c0, c1)`` of level-0 columns as an ``(H, c1 - c0)`` mask.
        shape: level-0 ``(height, width)``.
        factor: level-0 pixels per working pixel.

    Returns:
        A reader of working columns ``[c0, c1)`` as a ``bool`` mask of the height of :func:`reduced_shape`.
    """
    height, width = shape
    rows = _centres(reduced_shape(shape, factor)[0], factor, height)

    def read(c0: int, c1: int) -> np.ndarray:
        cols = _centres(c1, factor, width)[c0:]
        band = read_columns(int(cols[0]), int(cols[-1]) + 1)
        return band[rows][:, cols - cols[0]] != 0

    return read


def _centres(count: int, factor: float, size: int) -> np.ndarray:
    """The level-0 index at the centre of each of the first ``count`` working pixels."""
    return np.minimum(((np.arange(count) + 0.5) * factor).astype(np.int64), size - 1)
