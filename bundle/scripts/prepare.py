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
from .resample import label_band_reader, reduced_shape
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


def working_shape(shape: Sequence[int], downscale: float) -> tuple[int, int]:
    """``(height, width)`` at the working resolution of a slide of level-0 ``shape``: ceil division by
    ``downscale`` (fractional for a slide resampled between pyramid levels). Datalist items carry ``shape``
    and ``downscale``; whatever needs the working size asks here."""
    return reduced_shape(shape, downscale)


@dataclass(frozen=True)
class PreparedSlide:
    """A slide ready for training or inference; plain values, so it travels in MONAI datalists.

    Windows, patches and the store are in ``image``'s pixels; outputs in the slide file's own, which
    differ only for a slide resampled to the working scale (:func:`scripts.scale.working_resolution`).

    Attributes:
        slide_id: the HuBMAP id.
        image: a TIFF cuCIM can read (the slide itself or its canonical copy).
        shape: ``image``'s level-0 ``[height, width]``.
        level: ``image``'s pyramid level at the working resolution.
        downscale: ``image``'s level-0 pixels per working pixel.
        level0_shape: the slide file's level-0 ``[height, width]``, where outputs are made.
        level0_scale: the slide file's level-0 pixels per working pixel (fractional when resampled).
        store: the zarr store of this slide.
        has_label: whether the store holds a ``label`` array.
        glomeruli: number of labelled glomeruli (0 when unlabelled).
    """

    slide_id: str
    image: str
    shape: tuple[int, int]
    level: int
    downscale: int
    level0_shape: tuple[int, int]
    level0_scale: float
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
    resample: float | None = None,
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
        resample: level-0 pixels per working pixel of a slide resampled to the working scale (its
            copy is read at ``downscale`` 1); None: a pyramid level is read as it is.

    Returns:
        The prepared slide.

    Raises:
        SlideError: the image cannot be read; RleError: the RLE does not fit the image;
        InputError: an annotation file is unreadable or lies outside the slide.
    """
    cache_dir = Path(cache_dir)
    scale = scale or SlideScale(None, "none")
    image = ensure_readable(image_path, cache_dir / "slides", downscale, resample)
    layout = inspect_slide(image, downscale)
    level0_shape = layout.shape if resample is None else inspect_slide(image_path).shape
    level0_scale = downscale if resample is None else resample
    tissue_options = dict(tissue_options or {})
    inputs = [
        _file_key(image_path),
        downscale,
        resample,
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
        logger.info("preparing %s (label, tissue, regions and glomerulus boxes at 1/%.4g)", slide_id, level0_scale)
        label = _label_bands(slide_id, level0_shape, rle, polygons)
        if label is not None:
            label = _working_label(label, level0_shape, downscale, resample)
        region_polygons = _annotations_inside(regions, level0_shape) if regions is not None else None
        _build_store(
            store,
            fingerprint,
            slide_id,
            image,
            layout.shape,
            downscale,
            level0_scale / downscale,
            label,
            region_polygons,
            tissue_options,
            scale,
        )
    return PreparedSlide(
        slide_id,
        str(image),
        tuple(layout.shape),
        working_level(layout, downscale),
        downscale,
        tuple(level0_shape),
        level0_scale,
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


def _working_label(read_band: BandReader, shape: tuple[int, int], downscale: int, resample: float | None) -> BandReader:
    """``read(c0, c1)``: working columns of a level-0 mask read a band of columns at a time.

    A working pixel is foreground when at least half of its level-0 pixels are; on a slide
    resampled between levels, when the level-0 pixel at its centre is (:func:`scripts.resample.label_band_reader`).
    """
    if resample is not None:
        return label_band_reader(read_band, shape, resample)
    width = shape[1]
    return lambda c0, c1: pool_mask(read_band(c0 * downscale, min(c1 * downscale, width)), downscale, "mean") >= 0.5


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
    image_scale: float,
    label: BandReader | None,
    regions: list[Annotation] | None,
    tissue_options: dict,
    scale: SlideScale,
) -> None:
    """Write the store under a temporary name, then swap it in.

    ``shape`` and ``downscale`` are the image's; ``image_scale`` is the slide file's level-0 pixels per
    image pixel (1 unless the image is a resampled copy), which brings the regions' polygons to the image.
    """
    tmp = store.with_name(f".{store.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    group = open_store(tmp, mode="w")
    thumbnail, tissue_downsample = read_thumbnail(image)
    tissue = tissue_mask(thumbnail, **tissue_options)
    group.create_array(TISSUE, data=tissue.astype(np.uint8), chunks=(CHUNK, CHUNK))
    regions_map = region_map(regions, tissue, tissue_downsample * image_scale)
    group.create_array(REGIONS, data=regions_map, chunks=(CHUNK, CHUNK))
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


def _write_label(group: zarr.Group, shape: tuple[int, int], downscale: int, read_working: BandReader) -> list:
    """Write ``label`` at the working resolution a band of columns at a time; return glomerulus boxes.

    Args:
        group: the store being written.
        shape: the image's level-0 ``(height, width)``.
        downscale: the image's level-0 pixels per working pixel.
        read_working: ``read_working(c0, c1)``, working columns of the label (:func:`_working_label`).

    Returns:
        Boxes ``[y0, x0, y1, x1]`` in the image's level-0 pixels, found on a further pooled copy so
        memory stays small.
    """
    height, width = shape
    work_shape = working_shape(shape, downscale)
    label = group.create_array(LABEL, shape=work_shape, chunks=(CHUNK, CHUNK), dtype=np.uint8, fill_value=0)
    pooled = np.zeros(level_shape(work_shape, BOX_POOL.bit_length() - 1), dtype=bool)
    for col in range(0, work_shape[1], CHUNK):
        work = read_working(col, min(col + CHUNK, work_shape[1]))
        label[:, col : col + work.shape[1]] = work
        boxes_band = pool_mask(work, BOX_POOL, "max")
        pooled_col = col // BOX_POOL
        pooled[:, pooled_col : pooled_col + boxes_band.shape[1]] |= boxes_band
    components, _ = ndimage.label(pooled)
    scale = downscale * BOX_POOL
    return [
        [rows.start * scale, cols.start * scale, min(rows.stop * scale, height), min(cols.stop * scale, width)]
        for rows, cols in ndimage.find_objects(components)
    ]
