"""The per-slide zarr store: label mask at the working resolution, tissue mask, region map,
glomerulus boxes.

Built once per slide, streaming (the level-0 mask is decoded from RLE, or filled from the
glomerulus polygons where a slide has no RLE, one band of columns at a time), and reused while its
inputs are unchanged: the store records a fingerprint of the slide file (path, size, modification
time), the RLE, the annotation files, the downscale and the tissue settings, and is rebuilt when
any of them changes. Stores are written to a temporary folder and renamed, so a killed run never
leaves a store that looks complete.

Its arrays and attributes are named, and read, in :mod:`scripts.store`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage

from .annotations import Annotation, rasterize, read_annotations
from .pyramid import level_shape, pool_mask
from .regions import check_inside, region_map
from .rle import decode_columns, parse_rle
from .scale import SlideScale
from .slides import ensure_readable, inspect_slide, read_thumbnail, working_level
from .store import (
    DOWNSCALE,
    FINGERPRINT,
    GLOMERULI,
    LABEL,
    MPP,
    MPP_SOURCE,
    REGIONS,
    SHAPE,
    SLIDE_ID,
    TISSUE,
    TISSUE_DOWNSAMPLE,
    has_label,
    open_store,
    read_fingerprint,
    read_glomeruli,
)
from .tissue import tissue_mask

__all__ = ["PreparedSlide", "prepare_slide", "working_shape"]

logger = logging.getLogger(__name__)

STORE_VERSION = 2
CHUNK = 1024  # working-resolution pixels per chunk side
BOX_POOL = 4  # glomerulus boxes are found at working resolution / BOX_POOL (bounded memory)


def working_shape(shape: Sequence[int], downscale: int) -> tuple[int, int]:
    """``(height, width)`` at the working resolution of a slide of level-0 ``shape``: ceil division by
    ``downscale``. Datalist items carry ``shape`` and ``downscale``; whatever needs the working size asks here."""
    return -(-int(shape[0]) // int(downscale)), -(-int(shape[1]) // int(downscale))


@dataclass(frozen=True)
class PreparedSlide:
    """A slide ready for training or inference; plain values, so it travels in MONAI datalists.

    Attributes:
        slide_id: the HuBMAP id.
        image: a TIFF cuCIM can read (the slide itself or its canonical copy).
        shape: level-0 ``[height, width]``.
        level: the pyramid level at the working resolution.
        downscale: level-0 pixels per working pixel.
        store: the zarr store of this slide.
        has_label: whether the store holds a ``label`` array.
        glomeruli: number of labelled glomeruli (0 when unlabelled).
    """

    slide_id: str
    image: str
    shape: tuple[int, int]
    level: int
    downscale: int
    store: str
    has_label: bool
    glomeruli: int = 0

    def as_dict(self) -> dict:
        """The fields as a plain dict (for datalist items)."""
        return asdict(self)

    @property
    def working_shape(self) -> tuple[int, int]:
        """``(height, width)`` at the working resolution (:func:`working_shape`)."""
        return working_shape(self.shape, self.downscale)


def prepare_slide(
    slide_id: str,
    image_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    downscale: int,
    rle: str | None = None,
    tissue_options: dict | None = None,
    polygons: str | os.PathLike | None = None,
    regions: str | os.PathLike | None = None,
    scale: SlideScale | None = None,
) -> PreparedSlide:
    """Make a slide cuCIM-readable and build (or reuse) its zarr store.

    Args:
        slide_id: the id (already checked to be a safe file name).
        image_path: the slide TIFF.
        cache_dir: folder for canonical slide copies (``slides/``) and stores (``stores/``).
        downscale: working resolution, a power of two.
        rle: the slide's mask as Kaggle RLE, or None.
        tissue_options: keyword arguments of :func:`scripts.tissue.tissue_mask`.
        polygons: glomerulus polygons (QuPath GeoJSON), the label where ``rle`` is None; a slide
            with neither is unlabelled.
        regions: region polygons (``<id>-anatomical-structure.json``), or None to map tissue only.
        scale: the slide's microns per pixel and what stated it (:func:`scripts.scale.slide_scale`),
            recorded in the store for the slide's summary; None: not known.

    Returns:
        The prepared slide.

    Raises:
        SlideError: the image cannot be read; RleError: the RLE does not fit the image;
        InputError: an annotation file is unreadable or lies outside the slide.
    """
    cache_dir = Path(cache_dir)
    scale = scale or SlideScale(None, "none")
    image = ensure_readable(image_path, cache_dir / "slides", downscale)
    layout = inspect_slide(image, downscale)
    tissue_options = dict(tissue_options or {})
    inputs = [
        _file_key(image_path),
        downscale,
        tissue_options,
        hashlib.sha1((rle or "").encode()).hexdigest(),
        rle is None,
        _file_key(polygons) if rle is None else None,
        _file_key(regions),
        [scale.mpp, scale.source],
        STORE_VERSION,
    ]
    fingerprint = hashlib.sha1(json.dumps(inputs).encode()).hexdigest()
    store = cache_dir / "stores" / f"{slide_id}.zarr"
    if read_fingerprint(store) != fingerprint:
        logger.info("preparing %s (label, tissue, regions and glomerulus boxes at 1/%d)", slide_id, downscale)
        label = _label_bands(slide_id, layout.shape, rle, polygons)
        region_polygons = _annotations_inside(regions, layout.shape) if regions is not None else None
        _build_store(
            store, fingerprint, slide_id, image, layout.shape, downscale, label, region_polygons, tissue_options, scale
        )
    return PreparedSlide(
        slide_id,
        str(image),
        tuple(layout.shape),
        working_level(layout, downscale),
        downscale,
        str(store),
        has_label(store),
        len(read_glomeruli(store)),
    )


def _file_key(path: str | os.PathLike | None) -> list | None:
    """What identifies a file's content cheaply: its absolute path, size and modification time."""
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _annotations_inside(path: str | os.PathLike, shape: tuple[int, int]) -> list[Annotation]:
    annotations = read_annotations(path)
    check_inside(annotations, shape, str(path))
    return annotations


BandReader = Callable[[int, int], np.ndarray]


def _label_bands(
    slide_id: str, shape: tuple[int, int], rle: str | None, polygons: str | os.PathLike | None
) -> BandReader | None:
    """``read(col0, col1)``: level-0 columns ``[col0, col1)`` of the slide's mask, from RLE or polygons."""
    height, width = shape
    if rle is not None:
        starts, lengths = parse_rle(rle, height * width, slide_id)
        return lambda col0, col1: decode_columns(starts, lengths, height, col0, col1)
    if polygons is None:
        return None
    annotations = _annotations_inside(polygons, shape)
    spans = [(a.rings[0][:, 0].min(), a.rings[0][:, 0].max()) for a in annotations]

    def read(col0: int, col1: int) -> np.ndarray:
        in_band = [a for a, (x0, x1) in zip(annotations, spans, strict=True) if x1 >= col0 - 1 and x0 <= col1]
        return rasterize(in_band, (height, col1 - col0), origin=(0, col0))

    return read


def _build_store(
    store: Path,
    fingerprint: str,
    slide_id: str,
    image: Path,
    shape: tuple[int, int],
    downscale: int,
    label: BandReader | None,
    regions: list[Annotation] | None,
    tissue_options: dict,
    scale: SlideScale,
) -> None:
    """Write the store under a temporary name, then swap it in."""
    tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    group = open_store(tmp, mode="w")
    thumbnail, tissue_downsample = read_thumbnail(image)
    tissue = tissue_mask(thumbnail, **tissue_options)
    group.create_array(TISSUE, data=tissue.astype(np.uint8), chunks=(CHUNK, CHUNK))
    group.create_array(REGIONS, data=region_map(regions, tissue, tissue_downsample), chunks=(CHUNK, CHUNK))
    boxes = _write_label(group, shape, downscale, label) if label is not None else []
    group.attrs.update(
        {
            SLIDE_ID: slide_id,
            SHAPE: list(shape),
            DOWNSCALE: downscale,
            TISSUE_DOWNSAMPLE: tissue_downsample,
            GLOMERULI: boxes,
            MPP: scale.mpp,
            MPP_SOURCE: scale.source,
            FINGERPRINT: fingerprint,
        }
    )
    shutil.rmtree(store, ignore_errors=True)
    os.replace(tmp, store)


def _write_label(group: zarr.Group, shape: tuple[int, int], downscale: int, read_band: BandReader) -> list:
    """Pool the level-0 mask band by band into ``label`` at the working resolution; return glomerulus boxes.

    A working pixel is foreground when at least half of its level-0 pixels are. Boxes are
    ``[y0, x0, y1, x1]`` at level 0, found on a further pooled copy so memory stays small.
    """
    height, width = shape
    work_shape = working_shape(shape, downscale)
    label = group.create_array(LABEL, shape=work_shape, chunks=(CHUNK, CHUNK), dtype=np.uint8, fill_value=0)
    pooled = np.zeros(level_shape(work_shape, BOX_POOL.bit_length() - 1), dtype=bool)
    band_columns = CHUNK * downscale
    for col in range(0, width, band_columns):
        band = read_band(col, min(col + band_columns, width))
        work = pool_mask(band, downscale, "mean") >= 0.5
        label[:, col // downscale : col // downscale + work.shape[1]] = work
        boxes_band = pool_mask(work, BOX_POOL, "max")
        pooled_col = col // downscale // BOX_POOL
        pooled[:, pooled_col : pooled_col + boxes_band.shape[1]] |= boxes_band
    components, _ = ndimage.label(pooled)
    scale = downscale * BOX_POOL
    return [
        [rows.start * scale, cols.start * scale, min(rows.stop * scale, height), min(cols.stop * scale, width)]
        for rows, cols in ndimage.find_objects(components)
    ]
