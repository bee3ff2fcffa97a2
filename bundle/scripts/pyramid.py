"""Writing tiled pyramidal TIFFs a band of rows at a time: slides, the demo and predicted masks.

The layout is the one cuCIM, MONAI's ``WSIReader``, QuPath and napari all read: level 0 and each
2x reduction as pages of the main IFD chain (``subfiletype=1``), tiled. Level ``k`` has shape
``ceil(H / 2**k) x ceil(W / 2**k)``, so a level-0 location that is a multiple of ``2**k`` maps
exactly onto level ``k`` in cuCIM. Memory stays bounded by one band of rows per level; reduced
levels wait in a temporary zarr store on disk.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
import zarr

from .files import atomic_path

__all__ = ["level_shape", "num_levels", "pool_mask", "reduce2x", "write_pyramid"]

BandReader = Callable[[int, int], np.ndarray]


def level_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    """``(height, width)`` of pyramid ``level`` for a level-0 ``shape`` (ceil division by ``2**level``)."""
    scale = 2**level
    return -(-shape[0] // scale), -(-shape[1] // scale)


def num_levels(shape: tuple[int, int], smallest: int = 512) -> int:
    """Number of levels so that the last one is at most ``smallest`` pixels on its longer side."""
    levels = 1
    while max(level_shape(shape, levels - 1)) > smallest:
        levels += 1
    return levels


def reduce2x(band: np.ndarray, how: str = "mean") -> np.ndarray:
    """Halve a ``(h, w, c)`` band, padding odd edges by repetition (ceil shape).

    Args:
        band: image band, ``uint8``.
        how: ``"mean"`` for images, ``"max"`` for masks (a thin structure never vanishes).

    Returns:
        The ``(ceil(h/2), ceil(w/2), c)`` band.
    """
    h, w = band.shape[:2]
    padded = np.pad(band, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    # the four pixels of each 2 x 2 block as strided views (much faster than a reshape and reduce)
    corners = padded[0::2, 0::2], padded[1::2, 0::2], padded[0::2, 1::2], padded[1::2, 1::2]
    if how == "max":
        return np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    total = corners[0].astype(np.uint16) + corners[1] + corners[2] + corners[3]
    return ((total + 2) >> 2).astype(band.dtype)


def pool_mask(mask: np.ndarray, factor: int, how: str = "max") -> np.ndarray:
    """Reduce a 2D mask by ``factor`` (ceil shape; the padding counts as background).

    Args:
        mask: ``(h, w)`` array.
        factor: reduction per side.
        how: ``"max"`` (any pixel set) or ``"mean"`` (fraction set, as float).

    Returns:
        ``(ceil(h / factor), ceil(w / factor))`` array.
    """
    h, w = mask.shape
    padded = np.pad(mask, ((0, -h % factor), (0, -w % factor)))
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.mean(axis=(1, 3)) if how == "mean" else blocks.max(axis=(1, 3))


def _tiles(read_band: BandReader, shape: tuple[int, int], channels: int, tile: int,
           on_band: Callable[[int, np.ndarray], None]) -> Iterator[np.ndarray]:
    """Yield ``tile x tile`` tiles in row-major order, reading one band of rows at a time."""
    height, width = shape
    for y0 in range(0, height, tile):
        band = np.asarray(read_band(y0, min(y0 + tile, height)))
        if band.ndim == 2:
            band = band[..., None]
        if band.shape != (min(tile, height - y0), width, channels):
            raise ValueError(f"band at row {y0} has shape {band.shape}, expected {(min(tile, height - y0), width, channels)}")
        on_band(y0, band)
        padded = np.zeros((tile, -(-width // tile) * tile, channels), dtype=band.dtype)
        padded[: band.shape[0], :width] = band
        for x0 in range(0, width, tile):
            yield padded[:, x0 : x0 + tile] if channels > 1 else padded[:, x0 : x0 + tile, 0]


def _deflated(tiles: Iterator[np.ndarray], level: int | None) -> Iterator[bytes]:
    """Tiles deflated as TIFF stores them (``zlib``), the empty (all-zero) tile encoded only once:
    most tiles of a mask, or of glass in a heatmap, are empty, and deflating each was wasted work."""
    empty = None
    for tile in tiles:
        if tile.any():
            yield imagecodecs.zlib_encode(np.ascontiguousarray(tile), level)
            continue
        if empty is None:
            empty = imagecodecs.zlib_encode(np.ascontiguousarray(tile), level)
        yield empty


def write_pyramid(
    path: str | os.PathLike,
    read_band: BandReader,
    shape: tuple[int, int],
    channels: int = 3,
    levels: int | None = None,
    tile: int = 512,
    compression: str | None = "lzw",
    quality: int | None = None,
    reduce: str = "mean",
    resolution_um: float | None = None,
) -> Path:
    """Write a tiled pyramidal TIFF atomically (to a temporary name, then renamed).

    Args:
        path: output file.
        read_band: ``read_band(y0, y1)`` returns level-0 rows ``[y0, y1)`` as ``(y1 - y0, W, channels)``
            ``uint8``; it is called once per band of ``tile`` rows, top to bottom.
        shape: level-0 ``(height, width)``.
        channels: 3 for RGB, 1 for a mask.
        levels: number of levels; default: down to about 512 pixels.
        tile: tile size in pixels (a multiple of 16).
        compression: tifffile compression: ``"lzw"`` (lossless; cuCIM reads it without complaint),
            ``"zlib"`` (lossless, faster and smaller for masks; cuCIM reads it but warns), ``"jpeg"``, or ``None``.
        quality: JPEG quality when ``compression="jpeg"``.
        reduce: ``"mean"`` (images) or ``"max"`` (masks) for the reduced levels.
        resolution_um: microns per pixel at level 0, recorded for viewers when known.

    Returns:
        The path written.
    """
    levels = levels or num_levels(shape)
    codec = {"compression": compression, "compressionargs": {"level": quality} if quality else None}
    with atomic_path(path) as tmp:
        _write_levels(tmp, read_band, shape, channels, levels, tile, codec, reduce, resolution_um)
    return Path(path)


def _write_levels(tmp: Path, read_band: BandReader, shape: tuple[int, int], channels: int, levels: int,
                  tile: int, codec: dict, reduce: str, resolution_um: float | None) -> None:
    """Write every level to ``tmp``; each reduced level is built from the one above while it is written."""
    photometric = "rgb" if channels == 3 else "minisblack"
    with tempfile.TemporaryDirectory(prefix=".pyramid-", dir=tmp.parent) as scratch, tifffile.TiffWriter(
        tmp, bigtiff=True
    ) as writer:
        reader = read_band
        for level in range(levels):
            level_hw = level_shape(shape, level)
            reduced = None
            if level + 1 < levels:
                reduced = zarr.create_array(
                    store=f"{scratch}/level{level + 1}.zarr", shape=(*level_shape(shape, level + 1), channels),
                    chunks=(tile // 2, level_hw[1], channels), dtype=np.uint8, fill_value=0,
                )

            def keep_reduced(y0: int, band: np.ndarray, target=reduced) -> None:
                if target is not None:
                    target[y0 // 2 : y0 // 2 + -(-band.shape[0] // 2)] = reduce2x(band, reduce)

            extra = {}
            if resolution_um:
                per_cm = 1e4 / (resolution_um * 2**level)
                extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tiles = _tiles(reader, level_hw, channels, tile, keep_reduced)
            if codec["compression"] == "zlib":  # tifffile stores tiles given as bytes as they are
                tiles = _deflated(tiles, (codec["compressionargs"] or {}).get("level"))
            writer.write(
                tiles,
                shape=(*level_hw, channels) if channels > 1 else level_hw,
                dtype=np.uint8, tile=(tile, tile), photometric=photometric, **codec,
                subfiletype=0 if level == 0 else 1, metadata=None, **extra,
            )
            if reduced is not None:
                reader = lambda y0, y1, source=reduced: source[y0:y1]  # noqa: E731
