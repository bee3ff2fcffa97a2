"""Region maps for sampling (scripts/regions.py): cortex, medulla, other, glass, unannotated tissue."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.annotations import Annotation
from scripts.errors import InputError
from scripts.regions import REGION_CODES, check_inside, region_map


def square(name: str, x0: float, y0: float, x1: float, y1: float) -> Annotation:
    return Annotation(name, (np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float),))


def test_cortex_medulla_other_and_glass_get_their_codes():
    tissue = np.zeros((20, 30), bool)
    tissue[2:18, 2:28] = True
    regions = [
        square("Cortex", 0, 0, 160, 160),
        square("Medulla", 40, 40, 120, 120),
        square("Renal pelvis", 200, 0, 240, 80),
    ]  # an unknown class counts as other
    codes = region_map(regions, tissue, downsample=8)  # level-0 pixel = 8 x mask pixel
    assert codes[1, 1] == REGION_CODES["cortex"]  # inside the cortex polygon, even on glass
    assert codes[10, 10] == REGION_CODES["medulla"]  # the medulla wins where both polygons cover
    assert codes[5, 27] == REGION_CODES["other"]  # the unknown class
    assert codes[15, 22] == REGION_CODES["other"]  # tissue outside every polygon
    assert codes[19, 29] == REGION_CODES["background"]


def test_without_a_region_file_tissue_is_tissue():
    tissue = np.zeros((4, 4), bool)
    tissue[1:3, 1:3] = True
    codes = region_map(None, tissue, downsample=16)
    assert set(np.unique(codes[tissue])) == {REGION_CODES["tissue"]}
    assert set(np.unique(codes[~tissue])) == {REGION_CODES["background"]}


def test_a_polygon_outside_the_slide_is_named():
    check_inside([square("Cortex", -50, -50, 10, 10)], (100, 100), "s1.json")  # crossing the edge is fine
    with pytest.raises(InputError, match=r"s1\.json: polygon 1 \(Medulla\).*outside the 100 x 80 slide"):
        check_inside([square("Cortex", 0, 0, 10, 10), square("Medulla", 500, 10, 600, 20)], (80, 100), "s1.json")
