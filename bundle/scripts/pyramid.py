"""Writing tiled pyramidal TIFFs a band of rows at a time: slides, the demo and predicted masks.

The layout is the one cuCIM, MONAI's ``WSIReader``, QuPath and napari all read: level 0 and each
2x reduction as pages of the main IFD chain (``subfiletype=1``), tiled. Level ``k`` has shape
``ceil(H / 2**k) x ceil(W / 2**k)``, so a level-0 location that is a multiple of ``2**k`` maps
exactly onto level ``k`` in cuCIM. Memory stays bounded by one band of rows per level; reduced
levels wait on disk: deflated (``zlib``, masks and heatmaps) as level 0 streams, or as pixels in a
temporary zarr store for the codecs tifffile applies itself.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
import zarr
from skimage.measure import block_reduce

from .files import atomic_path
from .resample import reduced_shape

__all__ = ["level_shape", "num_levels", "pool_mask", "reduce2x", "write_pyramid"]

BandReader = Callable[[int, int], np.ndarray]
ENCODERS = min(os.cpu_count() or 1, 8)  # threads deflating tiles


def level_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
    """``(height, width)`` of pyramid ``level`` for a level-0 ``shape`` (ceil division by ``2**level``)."""
    return reduced_shape(shape, 2**level)


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
    """Reduce a 2D mask by ``factor``: ``skimage.measure.block_reduce`` named by what it keeps (ceil
    shape; the padding counts as background).

    Args:
        mask: ``(h, w)`` array.
        factor: reduction per side.
        how: ``"max"`` (any pixel set) or ``"mean"`` (fraction set, as float).

    Returns:
        ``(ceil(h / factor), ceil(w / factor))`` array.
    """
    return block_reduce(mask, (factor, factor), np.mean if how == "mean" else np.max, cval=0)


def _tiles(
    read_band: BandReader, shape: tuple[int, int], channels: int, tile: int, on_band: Callable[[int, np.ndarray], None]
) -> Iterator[np.ndarray]:
    """Yield ``tile x tile`` tiles in row-major order, reading one band of rows at a time."""
    height, width = shape
    for y0 in range(0, height, tile):
        band = np.asarray(read_band(y0, min(y0 + tile, height)))
        if band.ndim == 2:
            band = band[..., None]
        if band.shape != (min(tile, height - y0), width, channels):
            raise ValueError(
                f"band at row {y0} has shape {band.shape}, expected {(min(tile, height - y0), width, channels)}"
            )
        on_band(y0, band)
        yield from _row_of_tiles(band, tile)


def _row_of_tiles(band: np.ndarray, tile: int) -> Iterator[np.ndarray]:
    """The tiles of a ``(h <= tile, w, c)`` band, left to right, padded with zeros past its edges."""
    rows, width, channels = band.shape
    padded = np.zeros((tile, -(-width // tile) * tile, channels), dtype=band.dtype)
    padded[:rows, :width] = band
    for x0 in range(0, width, tile):
        yield padded[:, x0 : x0 + tile] if channels > 1 else padded[:, x0 : x0 + tile, 0]


class _Deflater:
    """Deflates tiles as TIFF stores them (``zlib``) in a pool of threads (the encoder releases
    the GIL); the empty (all-zero) tile is encoded only once: most tiles of a mask, or of glass in
    a heatmap, are empty, and deflating each was wasted work.

    Args:
        level: zlib level, or None for the default.
        workers: threads.
    """

    def __init__(self, level: int | None, workers: int = ENCODERS) -> None:
        self.level, self.lookahead = level, 2 * workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="deflate")
        self._empty: bytes | None = None

    def submit(self, tile: np.ndarray) -> Future | bytes:
        """Start deflating a tile (copied, so its band may go); the empty tile's bytes at once."""
        if tile.any():
            return self._pool.submit(imagecodecs.zlib_encode, np.ascontiguousarray(tile), self.level)
        if self._empty is None:
            self._empty = imagecodecs.zlib_encode(np.ascontiguousarray(tile), self.level)
        return self._empty

    def queue(self, pending: deque[Future | bytes], tile: np.ndarray) -> Iterator[bytes]:
        """Start deflating ``tile`` behind ``pending``; yield, in order, the tiles it pushes past the lookahead."""
        pending.append(self.submit(tile))
        while len(pending) > self.lookahead:
            yield _encoded(pending.popleft())

    def in_order(self, tiles: Iterator[np.ndarray]) -> Iterator[bytes]:
        """Deflated tiles in their order, a bounded number of them in flight."""
        pending: deque[Future | bytes] = deque()
        for tile in tiles:
            yield from self.queue(pending, tile)
        while pending:
            yield _encoded(pending.popleft())

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _encoded(item: Future | bytes) -> bytes:
    return item.result() if isinstance(item, Future) else item


class _SpilledLevel:
    """One reduced level of a deflated pyramid, made while the level above streams: its rows are
    gathered into rows of tiles, deflated, and kept in order in a scratch file until the level is
    written, so memory holds a row of tiles whatever the slide's size.

    Args:
        path: the scratch file.
        shape: the level's ``(height, width)``.
        tile: tile side.
        deflater: the encoder.
    """

    def __init__(self, path: Path, shape: tuple[int, int], tile: int, deflater: _Deflater) -> None:
        self.shape, self.tile, self.deflater = shape, tile, deflater
        self._file = open(path, "w+b")  # noqa: SIM115 - open until the level is written
        self._sizes: list[int] = []
        self._pending: deque[Future | bytes] = deque()
        self._rows: list[np.ndarray] = []  # rows not yet a whole row of tiles
        self._received = 0

    def add(self, band: np.ndarray) -> np.ndarray | None:
        """Take the level's next ``(h, w, c)`` rows; return the row of tiles they complete, if any."""
        self._rows.append(band)
        self._received += len(band)
        if sum(map(len, self._rows)) < self.tile and self._received < self.shape[0]:
            return None
        rows = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
        self._rows = []
        for tile in _row_of_tiles(rows, self.tile):
            for data in self.deflater.queue(self._pending, tile):
                self._spill(data)
        return rows

    def _spill(self, data: bytes) -> None:
        self._file.write(data)
        self._sizes.append(len(data))

    def tiles(self) -> Iterator[bytes]:
        """The level's deflated tiles in order, read back from the scratch file."""
        while self._pending:
            self._spill(_encoded(self._pending.popleft()))
        self._file.seek(0)
        for size in self._sizes:
            yield self._file.read(size)

    def close(self) -> None:
        self._file.close()


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
        quality: JPEG quality when ``compression="jpeg"``; the deflate level (1-9, default 6) for ``"zlib"``.
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


def _write_levels(
    tmp: Path,
    read_band: BandReader,
    shape: tuple[int, int],
    channels: int,
    levels: int,
    tile: int,
    codec: dict,
    reduce: str,
    resolution_um: float | None,
) -> None:
    """Write every level to ``tmp``, each reduced level built from the one above while it is read."""
    with (
        tempfile.TemporaryDirectory(prefix=".pyramid-", dir=tmp.parent) as scratch,
        tifffile.TiffWriter(tmp, bigtiff=True) as writer,
    ):
        if codec["compression"] == "zlib":
            _write_deflated(
                writer,
                Path(scratch),
                read_band,
                shape,
                channels,
                levels,
                tile,
                (codec["compressionargs"] or {}).get("level"),
                reduce,
                resolution_um,
            )
            return
        reader = read_band
        for level in range(levels):
            level_hw = level_shape(shape, level)
            reduced = None
            if level + 1 < levels:
                reduced = zarr.create_array(
                    store=f"{scratch}/level{level + 1}.zarr",
                    shape=(*level_shape(shape, level + 1), channels),
                    chunks=(tile // 2, level_hw[1], channels),
                    dtype=np.uint8,
                    fill_value=0,
                )

            def keep_reduced(y0: int, band: np.ndarray, target=reduced) -> None:
                if target is not None:
                    target[y0 // 2 : y0 // 2 + -(-band.shape[0] // 2)] = reduce2x(band, reduce)

            tiles = _tiles(reader, level_hw, channels, tile, keep_reduced)
            writer.write(tiles, **_page(level, level_hw, channels, tile, resolution_um), **codec)
            if reduced is not None:
                reader = lambda y0, y1, source=reduced: source[y0:y1]  # noqa: E731


def _write_deflated(
    writer: tifffile.TiffWriter,
    scratch: Path,
    read_band: BandReader,
    shape: tuple[int, int],
    channels: int,
    levels: int,
    tile: int,
    zlib_level: int | None,
    reduce: str,
    resolution_um: float | None,
) -> None:
    """The ``zlib`` pyramid: every reduced level is made and deflated while level 0 streams, so
    once level 0 is written the rest only copies bytes (tifffile stores tiles given as bytes as they are)."""
    deflater = _Deflater(zlib_level)
    reduced = [
        _SpilledLevel(scratch / f"level{level}.tiles", level_shape(shape, level), tile, deflater)
        for level in range(1, levels)
    ]

    def cascade(y0: int, band: np.ndarray) -> None:
        for level in reduced:
            band = level.add(reduce2x(band, reduce))
            if band is None:
                return

    try:
        tiles = deflater.in_order(_tiles(read_band, shape, channels, tile, cascade))
        writer.write(tiles, **_page(0, shape, channels, tile, resolution_um), compression="zlib")
        for level, spilled in enumerate(reduced, start=1):
            writer.write(
                spilled.tiles(), **_page(level, spilled.shape, channels, tile, resolution_um), compression="zlib"
            )
    finally:
        deflater.close()
        for spilled in reduced:
            spilled.close()


def _page(level: int, shape: tuple[int, int], channels: int, tile: int, resolution_um: float | None) -> dict:
    """tifffile's ``write`` arguments for one pyramid level."""
    page = {
        "shape": (*shape, channels) if channels > 1 else shape,
        "dtype": np.uint8,
        "tile": (tile, tile),
        "photometric": "rgb" if channels == 3 else "minisblack",
        "subfiletype": 0 if level == 0 else 1,
        "metadata": None,
    }
    if resolution_um:
        per_cm = 1e4 / (resolution_um * 2**level)
        page.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    return page
