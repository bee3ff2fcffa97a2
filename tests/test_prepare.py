"""The per-slide zarr store (scripts/prepare.py): labels at the working resolution from RLE,
tissue, glomerulus boxes, caching keyed on the inputs, and the working shape."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr

from conftest import disc_slide, write_slide
from scripts.errors import InputError, SlideError
from scripts.prepare import prepare_slide, working_shape
from scripts.pyramid import pool_mask
from scripts.regions import REGION_CODES
from scripts.rle import RleError, rle_encode


@pytest.fixture()
def slide(tmp_path):
    image, mask = disc_slide()
    path = write_slide(tmp_path / "train" / "s1.tiff", image)
    return path, mask


def test_label_is_the_rle_mask_at_the_working_resolution(slide, tmp_path):
    path, mask = slide
    prepared = prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask))
    label = zarr.open_group(prepared.store, mode="r")["label"][:]
    assert label.shape == (350, 450)
    np.testing.assert_array_equal(label, pool_mask(mask, 2, "mean") >= 0.5)
    assert prepared.level == 1 and prepared.shape == (700, 900) and prepared.has_label


def test_glomerulus_boxes_cover_each_disc(slide, tmp_path):
    path, mask = slide
    prepared = prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask))
    boxes = sorted(zarr.open_group(prepared.store, mode="r").attrs["glomeruli"])
    assert len(boxes) == 2
    for (y0, x0, y1, x1), (cy, cx, radius) in zip(boxes, [(300, 300, 80), (450, 650, 60)], strict=True):
        assert y0 <= cy - radius + 1 and y1 >= cy + radius - 1 and x0 <= cx - radius + 1 and x1 >= cx + radius - 1
        assert y1 - y0 <= 2 * radius + 16  # pooled at 1/8 of level 0: at most one pooled pixel of slack per side


def test_tissue_mask_covers_the_tissue_not_the_glass(slide, tmp_path):
    path, mask = slide
    group = zarr.open_group(prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask)).store, mode="r")
    tissue, downsample = group["tissue"][:].astype(bool), group.attrs["tissue_downsample"]
    assert tissue[300 // downsample, 300 // downsample] and tissue[350 // downsample, 450 // downsample]
    assert not tissue[0, 0] and not tissue[-1, -1]


def test_store_is_reused_until_an_input_changes(slide, tmp_path):
    path, mask = slide
    first = prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask))
    stamp = os.stat(os.path.join(first.store, "zarr.json")).st_mtime_ns
    prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask))
    assert os.stat(os.path.join(first.store, "zarr.json")).st_mtime_ns == stamp
    mask[:20, :20] = 1  # a changed RLE rebuilds the store
    rebuilt = prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask))
    assert zarr.open_group(rebuilt.store, mode="r")["label"][0, 0] == 1
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # so does a touched slide
    prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask))
    assert os.stat(os.path.join(first.store, "zarr.json")).st_mtime_ns != stamp
    assert not [p for p in os.listdir(tmp_path / "cache" / "stores") if p.startswith(".")]


def test_unlabelled_slide_has_tissue_but_no_label(slide, tmp_path):
    path, _ = slide
    prepared = prepare_slide("s1", path, tmp_path / "cache", 2)
    group = zarr.open_group(prepared.store, mode="r")
    assert not prepared.has_label and "label" not in group and "tissue" in group


def test_rle_that_does_not_fit_names_the_slide(slide, tmp_path):
    path, _ = slide
    with pytest.raises(RleError, match="s1.*ends past the image"):
        prepare_slide("s1", path, tmp_path / "cache", 2, f"{700 * 900} 5")


def test_unreadable_slide_is_a_slide_error(tmp_path):
    bad = tmp_path / "bad.tiff"
    bad.write_text("not a tiff")
    with pytest.raises(SlideError, match="bad.tiff"):
        prepare_slide("bad", bad, tmp_path / "cache", 2, "")


def _write_features(path, features):
    path.write_text(
        json.dumps(
            [
                {"type": "Feature", "geometry": geometry, "properties": {"classification": {"name": name}}}
                for name, geometry in features
            ]
        )
    )
    return path


def _disc_polygon(cy, cx, radius, points=90):
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    ring = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return {"type": "Polygon", "coordinates": [np.vstack([ring, ring[:1]]).tolist()]}


def test_polygons_label_a_slide_without_rle(slide, tmp_path):
    path, mask = slide
    polygons = _write_features(
        tmp_path / "s1.json", [("glomerulus", _disc_polygon(300, 300, 80)), ("glomerulus", _disc_polygon(450, 650, 60))]
    )
    prepared = prepare_slide("s1", path, tmp_path / "cache", 2, polygons=polygons)
    label = zarr.open_group(prepared.store, mode="r")["label"][:].astype(bool)
    expected = pool_mask(mask, 2, "mean") >= 0.5
    assert prepared.has_label and prepared.glomeruli == 2
    assert (label != expected).mean() < 0.002  # polygon edges vs the pixel discs
    assert prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask)).glomeruli == 2


def test_region_file_fills_the_region_map(slide, tmp_path):
    path, mask = slide
    cortex = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[0, 0], [450, 0], [450, 700], [0, 700], [0, 0]]],
            [[[450, 0], [900, 0], [900, 200], [450, 200], [450, 0]]],
        ],
    }
    regions = _write_features(tmp_path / "s1-anatomical-structure.json", [("Cortex", cortex)])
    prepared = prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask), regions=regions)
    group = zarr.open_group(prepared.store, mode="r")
    codes, downsample = group["regions"][:], group.attrs["tissue_downsample"]
    assert codes[300 // downsample, 200 // downsample] == REGION_CODES["cortex"]
    assert codes[100 // downsample, 700 // downsample] == REGION_CODES["cortex"]  # second polygon of the MultiPolygon
    assert codes[450 // downsample, 650 // downsample] == REGION_CODES["other"]  # tissue, no region
    assert codes[690 // downsample, 890 // downsample] == REGION_CODES["background"]
    no_file = zarr.open_group(prepare_slide("s2", path, tmp_path / "cache", 2, rle_encode(mask)).store, mode="r")
    assert no_file["regions"][450 // downsample, 650 // downsample] == REGION_CODES["tissue"]


def test_polygons_outside_the_slide_are_a_clear_error(slide, tmp_path):
    path, _ = slide
    polygons = _write_features(tmp_path / "s1.json", [("glomerulus", _disc_polygon(3000, 3000, 80))])
    with pytest.raises(InputError, match=r"s1\.json: polygon 0 \(glomerulus\).*outside the 900 x 700 slide"):
        prepare_slide("s1", path, tmp_path / "cache", 2, polygons=polygons)


@pytest.mark.parametrize(("shape", "downscale", "expected"), [((700, 900), 2, (350, 450)), ((701, 9), 4, (176, 3))])
def test_working_shape_rounds_a_partial_working_pixel_up(shape, downscale, expected):
    assert working_shape(shape, downscale) == expected
    assert working_shape([str(v) for v in shape], str(downscale)) == expected  # as datalist metadata carries them


def test_a_slide_between_pyramid_levels_is_prepared_from_its_copy_at_the_working_scale(slide, tmp_path):
    """2.5 level-0 pixels per working pixel: the image read is a resampled copy whose level 0 is the
    working resolution; label, glomerulus boxes and regions are in the copy's pixels, while the
    prepared slide keeps the file's own level 0 for the outputs."""
    path, mask = slide
    cortex = {"type": "Polygon", "coordinates": [[[0, 0], [450, 0], [450, 700], [0, 700], [0, 0]]]}
    regions = _write_features(tmp_path / "s1-anatomical-structure.json", [("Cortex", cortex)])
    prepared = prepare_slide("s1", path, tmp_path / "cache", 1, rle_encode(mask), regions=regions, resample=2.5)
    assert (prepared.shape, prepared.downscale, prepared.level) == ((280, 360), 1, 0)
    assert (prepared.level0_shape, prepared.level0_scale, prepared.working_shape) == ((700, 900), 2.5, (280, 360))
    assert prepared.image != str(path) and prepared.glomeruli == 2
    group = zarr.open_group(prepared.store, mode="r")
    rows, cols = (((np.arange(n) + 0.5) * 2.5).astype(int) for n in (280, 360))
    np.testing.assert_array_equal(group["label"][:], mask[np.ix_(rows, cols)])
    for y0, x0, y1, x1 in group.attrs["glomeruli"]:  # boxes in the copy's pixels
        assert y1 <= 280 and x1 <= 360 and mask[int((y0 + y1) / 2 * 2.5), int((x0 + x1) / 2 * 2.5)]
    codes, downsample = group["regions"][:], group.attrs["tissue_downsample"]
    assert codes[120 // downsample, 80 // downsample] == REGION_CODES["cortex"]  # level 0 (300, 200)
    assert codes[180 // downsample, 260 // downsample] == REGION_CODES["other"]  # level 0 (450, 650)
    # the same slide read at downscale 2 keeps its own pixels
    assert prepare_slide("s2", path, tmp_path / "cache", 2, rle_encode(mask)).level0_scale == 2
