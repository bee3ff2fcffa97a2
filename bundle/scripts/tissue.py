"""Tissue masks from a low-resolution level: which parts of a slide hold tissue at all.

PAS tissue is stained (saturated) while the glass around it is near-white and grey; a saturation
threshold chosen by Otsu's method, clamped to a sane range so that a slide that is nearly all
tissue (or nearly all glass) is not split in two, separates them. Small specks are dropped and
holes (pale lumens, vessels) filled, so every window that touches tissue is kept.

MONAI's ``ForegroundMask`` thresholds HSV channels (Otsu included) too, but its threshold is not
clamped, and it neither closes gaps, fills holes, drops specks nor grows the mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

__all__ = ["saturation", "tissue_mask"]


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation on a 0-255 scale of an ``(h, w, 3)`` ``uint8`` image."""
    rgb = rgb.astype(np.int32)  # (max - min) * 255 overflows 16 bits
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(high > 0, (high - low) * 255 // np.maximum(high, 1), 0).astype(np.uint8)


def tissue_mask(
    rgb: np.ndarray,
    min_saturation: int = 15,
    max_saturation: int = 40,
    min_object_pixels: int = 16,
    dilation_pixels: int = 2,
) -> np.ndarray:
    """Boolean tissue mask of a low-resolution RGB image.

    Args:
        rgb: ``(h, w, 3)`` ``uint8`` thumbnail of the slide.
        min_saturation: the Otsu threshold is never below this (glass noise stays background).
        max_saturation: nor above this (pale tissue on an all-tissue slide stays tissue); 40 is
            the value HuBMAP solutions used to drop background tiles.
        min_object_pixels: drop tissue specks smaller than this.
        dilation_pixels: grow the mask so windows at the tissue edge are kept.

    Returns:
        ``(h, w)`` boolean mask.
    """
    sat = saturation(rgb)
    level = threshold_otsu(sat) if sat.min() < sat.max() else max_saturation
    mask = sat > np.clip(level, min_saturation, max_saturation)
    # close small gaps; edge padding keeps the closing from eating tissue that touches the border
    mask = ndimage.binary_closing(np.pad(mask, 2, mode="edge"), iterations=2)[2:-2, 2:-2]
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        mask = (sizes >= min_object_pixels)[labels] & mask
    if dilation_pixels:
        mask = ndimage.binary_dilation(mask, iterations=dilation_pixels)
    return mask
