"""Writing results atomically in the formats users open: ``submission.csv`` (Kaggle),
``metrics.csv``, pyramidal mask TIFFs (QuPath, napari), preview PNGs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import imagecodecs
import numpy as np
from scipy import ndimage

from .files import atomic_path, write_csv
from .pyramid import write_pyramid

__all__ = ["outline_overlay", "write_mask_tiff", "write_png", "write_submission"]


def write_submission(path: str | os.PathLike, predictions: dict[str, str]) -> Path:
    """Write a Kaggle ``submission.csv`` (``id,predicted``) atomically, one row per slide in order."""
    return write_csv(path, ("id", "predicted"), predictions.items())


def write_mask_tiff(
    path: str | os.PathLike,
    read_rows: Callable[[int, int], np.ndarray],
    shape: tuple[int, int],
    resolution_um: float | None = None,
) -> Path:
    """Write a level-0 binary mask as a tiled pyramidal 8-bit TIFF (0/255), band by band.

    Args:
        path: output ``.tiff``.
        read_rows: ``read_rows(y0, y1)`` gives rows ``[y0, y1)`` of 0 and 1 (``uint8``); called top to
            bottom, so it may wait for a mask still being made.
        shape: ``(height, width)`` of the mask.
        resolution_um: microns per pixel, when known.

    Returns:
        The path written.
    """
    # deflate level 1: 2.6x faster than the default 6 on a real mask's tiles, for files 2.5x larger (0.9 MB
    # against 0.37 MB for a 137-megapixel slide's level 0): the CPU goes to the network instead
    return write_pyramid(
        path,
        lambda y0, y1: read_rows(y0, y1) * np.uint8(255),
        shape,
        channels=1,
        compression="zlib",
        quality=1,
        reduce="max",
        resolution_um=resolution_um,
    )


def outline_overlay(
    image: np.ndarray, masks: Sequence[tuple[np.ndarray, tuple[int, int, int]]], width: int = 1
) -> np.ndarray:
    """Draw the outlines of binary masks over an RGB image.

    Args:
        image: ``(h, w, 3)`` ``uint8``.
        masks: ``(mask, rgb colour)`` pairs; each mask ``(h, w)``.
        width: outline width in pixels.

    Returns:
        A copy of ``image`` with the outlines drawn.
    """
    overlay = image.copy()
    for mask, colour in masks:
        mask = mask.astype(bool)
        edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
        overlay[edge] = colour
    return overlay


def write_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an ``(h, w, 3)`` or ``(h, w)`` ``uint8`` image as PNG atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(image)))
    return Path(path)
