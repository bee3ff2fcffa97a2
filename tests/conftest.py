"""Shared test setup: the bundle's code importable as ``scripts``, paths, and small fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(BUNDLE))


def shared_path(*parts: str) -> Path:
    """A path under ``../shared``; the calling test is skipped when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def write_slide(path: Path, image, compression: str | None = "jpeg") -> Path:
    """Write an ``(h, w, 3)`` uint8 array as a tiled pyramidal slide TIFF (the bundle's own layout)."""
    from scripts.pyramid import write_pyramid

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_pyramid(
        path,
        lambda y0, y1: image[y0:y1],
        image.shape[:2],
        tile=256,
        compression=compression,
        quality=95 if compression == "jpeg" else None,
    )


def smooth_rgb(shape: tuple[int, int]):
    """Gradients plus a 32-pixel checkerboard (aligned to JPEG blocks), so a shift of one pixel shows."""
    import numpy as np

    yy, xx = np.mgrid[: shape[0], : shape[1]]
    checker = ((yy // 32 + xx // 32) % 2 * 40)[..., None]
    return (
        np.stack([60 + yy * 150 // shape[0], 40 + xx * 150 // shape[1], 120 + (yy + xx) * 80 // sum(shape)], -1)
        + checker
    ).astype(np.uint8)


def disc_slide(shape=(700, 900), discs=((300, 300, 80), (450, 650, 60)), seed: int = 0):
    """A slide with a pink tissue ellipse and dark purple discs; returns ``(image, mask of the discs)``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    image = np.full((height, width, 3), 240, np.uint8)
    tissue = ((yy - height / 2) / (height * 0.45)) ** 2 + ((xx - width / 2) / (width * 0.45)) ** 2 < 1
    image[tissue] = (215, 140, 185)
    mask = np.zeros(shape, np.uint8)
    for cy, cx, radius in discs:
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[disc] = (140, 50, 130)
        mask[disc] = 1
    noise = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8), mask


def patch_dimensions(path: Path, width: int, height: int) -> None:
    """Make a stripped TIFF's header claim ``width x height`` pixels (one strip), its data unchanged."""
    import struct

    import tifffile

    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        for code, value in ((256, width), (257, height), (278, height)):  # ImageWidth, ImageLength, RowsPerStrip
            fmt = "<I" if tags[code].dtype == 4 else "<H"
            data[tags[code].valueoffset : tags[code].valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
