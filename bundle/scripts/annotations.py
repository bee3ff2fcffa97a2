"""QuPath GeoJSON in and out: glomerulus and region polygons, to masks and back.

HuBMAP ships ``<id>.json`` (glomeruli) and ``<id>-anatomical-structure.json`` (Cortex, Medulla, ...)
as QuPath exports: a list (or a ``FeatureCollection``) of ``Feature`` objects whose ``Polygon`` or
``MultiPolygon`` coordinates are ``[x, y]`` at level 0 and whose class is
``properties.classification.name``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon
from skimage.measure import find_contours

from .errors import InputError
from .files import write_text_atomic

__all__ = ["Annotation", "PolygonTracer", "mask_to_annotations", "rasterize", "read_annotations", "write_annotations"]


@dataclass(frozen=True)
class Annotation:
    """One polygon with its class.

    Attributes:
        name: classification name, e.g. ``"glomerulus"`` or ``"Cortex"``.
        rings: exterior ring first, then holes; each an ``(n, 2)`` float array of ``[x, y]`` at level 0.
    """

    name: str
    rings: tuple[np.ndarray, ...]


def read_annotations(path: str | os.PathLike) -> list[Annotation]:
    """Read a QuPath GeoJSON file; a MultiPolygon becomes one :class:`Annotation` per polygon.

    Args:
        path: the ``.json`` / ``.geojson`` file.

    Returns:
        The polygons, in file order; features of other geometry types are skipped.

    Raises:
        InputError: the file is not JSON or not a list of GeoJSON features.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable GeoJSON file ({error}); export it again from QuPath") from None
    features = document.get("features") if isinstance(document, dict) else document
    if not isinstance(features, list):
        raise InputError(f"{path}: expected a list of GeoJSON features or a FeatureCollection")
    annotations = []
    for number, feature in enumerate(features):
        try:
            annotations.extend(_feature_annotations(feature))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: feature {number} is not a valid polygon ({error!r})") from None
    return annotations


def _feature_annotations(feature: dict) -> list[Annotation]:
    geometry = feature.get("geometry") or {}
    properties = feature.get("properties") or {}
    name = (properties.get("classification") or {}).get("name") or properties.get("name") or "unclassified"
    kind = geometry.get("type")
    if kind == "Polygon":
        polygons = [geometry["coordinates"]]
    elif kind == "MultiPolygon":
        polygons = geometry["coordinates"]
    else:
        return []
    return [
        Annotation(str(name), tuple(np.asarray(ring, dtype=np.float64).reshape(-1, 2) for ring in rings))
        for rings in polygons
        if rings
    ]


def rasterize(
    annotations: list[Annotation], shape: tuple[int, int], scale: float = 1.0, origin: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Fill polygons into a mask (pixel centres inside the exterior and outside every hole).

    Args:
        annotations: polygons at level 0.
        shape: ``(height, width)`` of the mask to fill.
        scale: mask pixels per level-0 pixel (``1 / downscale``).
        origin: level-0 ``(y, x)`` of the mask's top-left pixel (to fill one window of a slide).

    Returns:
        ``uint8`` mask of 0 and 1.
    """
    mask = np.zeros(shape, dtype=np.uint8)
    for annotation in annotations:
        for index, ring in enumerate(annotation.rings):
            rows = (ring[:, 1] - origin[0]) * scale - 0.5 * (1 - scale)
            cols = (ring[:, 0] - origin[1]) * scale - 0.5 * (1 - scale)
            rr, cc = fill_polygon(rows, cols, shape=shape)
            mask[rr, cc] = 1 if index == 0 else 0
    return mask


def mask_to_annotations(
    mask: np.ndarray,
    name: str = "glomerulus",
    scale: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    min_area: float = 0.0,
) -> list[Annotation]:
    """Trace the outlines of a binary mask as polygons.

    Args:
        mask: ``(height, width)`` binary mask.
        name: classification of every polygon.
        scale: level-0 pixels per mask pixel (the downscale of the mask).
        origin: level-0 ``(y, x)`` of the mask's top-left pixel.
        min_area: drop polygons smaller than this many level-0 pixels.

    Returns:
        One annotation per outer contour, coordinates ``[x, y]`` at level 0.
    """
    annotations = []
    for contour in find_contours(np.pad(mask.astype(np.float32), 1), 0.5):
        yx = (contour - 0.5) * scale - 0.5 + np.asarray(origin)  # padded mask index -> level-0 pixel index
        ring = np.round(yx[:, ::-1], 1)
        # shoelace area in (x, y): positive around objects, negative around holes (find_contours' order)
        area = 0.5 * (np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], -1)))
        if area > 0 and area >= min_area:
            annotations.append(Annotation(name, (ring,)))
    return annotations


class PolygonTracer:
    """Outlines of every connected component of a mask too large to hold, traced a row of tiles at
    a time as the mask's rows arrive (top to bottom).

    Each tile is read with ``halo`` extra pixels on every side; a component belongs to the tile
    that holds the top-left corner of its bounding box, so it is traced once, and whole as long
    as it is smaller than ``halo`` (glomeruli are, by far). A row of tiles is traced as soon as
    the rows it reads have arrived, so little is left to trace once the last row comes, and only
    the rows the next row of tiles reads are kept (about ``tile + 2 * halo`` rows of the width).

    Args:
        shape: ``(height, width)`` of the mask.
        scale: level-0 pixels per mask pixel.
        tile: tile side in mask pixels.
        halo: context read around each tile.
        name: classification of every polygon.
        min_area: drop polygons smaller than this many level-0 pixels.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        scale: float = 1.0,
        tile: int = 2048,
        halo: int = 256,
        name: str = "glomerulus",
        min_area: float = 0.0,
    ) -> None:
        self.shape, self.scale = shape, scale
        self.tile, self.halo, self.name, self.min_area = tile, halo, name, min_area
        self.polygons: list[Annotation] = []  # ``[x, y]`` at level 0, in tile order
        self._next_row = 0  # top of the first row of tiles not yet traced
        self._bands: list[tuple[int, np.ndarray]] = []  # (first row, boolean rows): the rows still needed
        self._received = 0  # rows given so far

    def add(self, rows: np.ndarray) -> None:
        """Take the mask's next rows and trace the rows of tiles they complete.

        Args:
            rows: ``(n, width)`` boolean rows following those already given.
        """
        if len(rows):
            self._bands.append((self._received, np.asarray(rows, bool)))
            self._received += len(rows)
        height = self.shape[0]
        while self._next_row < height and min(self._next_row + self.tile + self.halo, height) <= self._received:
            for tx in range(0, self.shape[1], self.tile):
                self._trace_tile(self._next_row, tx)
            self._next_row += self.tile
            needed = self._next_row - self.halo
            self._bands = [(top, band) for top, band in self._bands if top + len(band) > needed]

    def close(self) -> None:
        """Trace the rows of tiles left; rows never given (a slide without windows) are background."""
        self.add(np.zeros((max(self.shape[0] - self._received, 0), self.shape[1]), bool))

    def _read(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        parts = [
            band[max(y0 - top, 0) : y1 - top, x0:x1] for top, band in self._bands if top < y1 and top + len(band) > y0
        ]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _trace_tile(self, ty: int, tx: int) -> None:
        """Trace the components whose bounding box starts in the tile at ``(ty, tx)``."""
        (height, width), tile, halo = self.shape, self.tile, self.halo
        y0, x0 = max(ty - halo, 0), max(tx - halo, 0)
        window = self._read(y0, x0, min(ty + tile + halo, height), min(tx + tile + halo, width))
        if not window.any():
            return
        labels, _ = ndimage.label(window)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            top, left = y0 + box[0].start, x0 + box[1].start
            if not (ty <= top < ty + tile and tx <= left < tx + tile):
                continue  # another tile's
            component = labels[box] == index
            # specks far below min_area are not worth tracing (a polygon's area is about its pixels')
            if component.sum() * self.scale**2 >= self.min_area / 2:
                self.polygons += mask_to_annotations(
                    component, self.name, self.scale, (top * self.scale, left * self.scale), self.min_area
                )


def write_annotations(path: str | os.PathLike, annotations: list[Annotation]) -> Path:
    """Write polygons as a QuPath-compatible GeoJSON feature list, atomically.

    Args:
        path: output file.
        annotations: polygons at level 0.

    Returns:
        The path written.
    """
    # one feature at a time: its coordinate lists die before the garbage collector promotes them, where
    # the whole file's (hundreds of thousands of floats) made it walk every object of the process (0.4 s)
    features = (json.dumps(_feature(a)) for a in annotations)
    return write_text_atomic(path, "[" + ", ".join(features) + "]")


def _feature(annotation: Annotation) -> dict:
    return {
        "type": "Feature",
        "id": "PathAnnotationObject",
        "geometry": {"type": "Polygon", "coordinates": [_closed(ring).tolist() for ring in annotation.rings]},
        "properties": {"classification": {"name": annotation.name}, "isLocked": False, "measurements": []},
    }


def _closed(ring: np.ndarray) -> np.ndarray:
    return ring if len(ring) and np.array_equal(ring[0], ring[-1]) else np.vstack([ring, ring[:1]])
