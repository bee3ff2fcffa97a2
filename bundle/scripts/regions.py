"""The region map of a slide: where cortex, medulla, other tissue and glass are, for sampling.

HuBMAP ships ``<id>-anatomical-structure.json`` with ``Cortex`` and ``Medulla`` polygons (and
sometimes other classes); glomeruli sit in the cortex, so training draws most of its random patch
centres there. The map is a small ``uint8`` array at the tissue mask's resolution:

==== ============ =======================================================================
code name         pixels
==== ============ =======================================================================
0    background   neither tissue nor inside an annotated region (glass)
1    cortex       inside a ``Cortex`` polygon
2    medulla      inside a ``Medulla`` polygon
3    other        inside a polygon of any other class, or tissue outside every polygon
4    tissue       tissue on a slide that has no region file
==== ============ =======================================================================

Class names are matched case-insensitively; unknown names count as ``other``. Sampling draws
from classes of codes (:data:`SAMPLING_CLASSES`): ``other`` is other tissue and glass together.
"""

from __future__ import annotations

import numpy as np

from .annotations import Annotation, rasterize
from .errors import InputError

__all__ = ["REGION_CODES", "SAMPLING_CLASSES", "check_inside", "region_map"]

REGION_CODES = {"background": 0, "cortex": 1, "medulla": 2, "other": 3, "tissue": 4}
SAMPLING_CLASSES = {"cortex": (1,), "medulla": (2,), "other": (0, 3), "tissue": (4,)}  # class -> codes
ANNOTATED = {"cortex": REGION_CODES["cortex"], "medulla": REGION_CODES["medulla"]}  # classes with their own code


def check_inside(annotations: list[Annotation], shape: tuple[int, int], where: str) -> None:
    """Raise when a polygon lies wholly outside the slide (the file belongs to another slide, or
    its coordinates are not level-0 pixels); polygons that cross the edge are fine.

    Args:
        annotations: polygons at level 0 (``[x, y]``).
        shape: the slide's level-0 ``(height, width)``.
        where: the file, for the message.

    Raises:
        InputError: naming the file, the polygon and the slide size.
    """
    height, width = shape
    for number, annotation in enumerate(annotations):
        x, y = annotation.rings[0][:, 0], annotation.rings[0][:, 1]
        if x.max() < 0 or y.max() < 0 or x.min() >= width or y.min() >= height:
            raise InputError(
                f"{where}: polygon {number} ({annotation.name}) at x {x.min():.0f}..{x.max():.0f}, "
                f"y {y.min():.0f}..{y.max():.0f} lies outside the {width} x {height} slide; check that the "
                "file belongs to this slide and holds level-0 pixel coordinates"
            )


def region_map(regions: list[Annotation] | None, tissue: np.ndarray, downsample: int) -> np.ndarray:
    """The region codes of a slide at the tissue mask's resolution.

    Args:
        regions: the slide's region polygons at level 0, or None when it has no region file.
        tissue: the tissue mask, ``(h, w)`` at ``1 / downsample`` of level 0.
        downsample: level-0 pixels per mask pixel.

    Returns:
        ``(h, w)`` ``uint8`` codes (see :data:`REGION_CODES`).
    """
    tissue = tissue.astype(bool)
    if regions is None:
        return np.where(tissue, REGION_CODES["tissue"], REGION_CODES["background"]).astype(np.uint8)
    codes = np.where(tissue, REGION_CODES["other"], REGION_CODES["background"]).astype(np.uint8)
    by_code: dict[int, list[Annotation]] = {}
    for annotation in regions:
        code = ANNOTATED.get(annotation.name.lower(), REGION_CODES["other"])
        by_code.setdefault(code, []).append(annotation)
    # other classes first, medulla last: where polygons overlap, the more specific class wins
    for code in (REGION_CODES["other"], REGION_CODES["cortex"], REGION_CODES["medulla"]):
        if code in by_code:
            codes[rasterize(by_code[code], tissue.shape, scale=1 / downsample) > 0] = code
    return codes
