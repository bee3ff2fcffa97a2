"""Tissue masks from thumbnails (scripts/tissue.py): saturation, the Otsu threshold and its clamp,
specks dropped, holes filled, and a real PAS tile."""

from __future__ import annotations

import numpy as np

from conftest import shared_path
from scripts.pyramid import reduce2x
from scripts.tissue import saturation, tissue_mask

SHAPE = (200, 260)


def glass(shape=SHAPE, seed=0, noise=4):
    rng = np.random.default_rng(seed)
    return np.clip(238 + rng.integers(-noise, noise + 1, (*shape, 3)), 0, 255).astype(np.uint8)


def paint(image, region, colour, seed=1, noise=10):
    rng = np.random.default_rng(seed)
    image[region] = np.clip(np.array(colour) + rng.integers(-noise, noise + 1, (int(region.sum()), 3)), 0, 255)
    return image


def ellipse(shape=SHAPE, centre=(100, 120), radii=(70, 95)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 < 1


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_saturation_of_known_colours():
    rgb = np.array(
        [[[255, 255, 255], [0, 0, 0], [200, 100, 150], [10, 5, 5], [238, 230, 234], [255, 127, 200]]], np.uint8
    )
    assert saturation(rgb).tolist() == [[0, 0, 127, 127, 8, 128]]


def test_saturation_of_strongly_saturated_colours():
    rgb = np.array([[[255, 0, 0], [129, 0, 0], [140, 10, 130], [0, 150, 0]]], np.uint8)
    assert saturation(rgb).tolist() == [[255, 255, 236, 255]]


def test_pink_blob_on_glass_is_tissue_and_glass_is_not():
    blob = ellipse()
    image = paint(glass(), blob, (205, 125, 175))
    mask = tissue_mask(image)
    assert mask.dtype == bool and mask.shape == SHAPE
    assert iou(mask, blob) > 0.9
    assert mask[blob].all()  # the dilation only grows it
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    far = ((yy - 100) / 75) ** 2 + ((xx - 120) / 100) ** 2 > 1  # beyond the 2-pixel dilation
    assert not mask[far].any()


def test_without_dilation_the_mask_is_the_blob():
    blob = ellipse()
    mask = tissue_mask(paint(glass(), blob, (205, 125, 175)), dilation_pixels=0)
    assert iou(mask, blob) > 0.98


def test_all_white_image_has_no_tissue():
    assert not tissue_mask(np.full((60, 80, 3), 255, np.uint8)).any()
    assert not tissue_mask(glass((60, 80), noise=3)).any()


def test_all_tissue_slide_is_not_split_by_otsu():
    image = paint(glass(), np.ones(SHAPE, bool), (230, 180, 210), noise=3)  # pale tissue, saturation about 55
    image = paint(image, ellipse(), (170, 60, 150), seed=2)  # strongly stained, saturation about 165
    sat = saturation(image)
    assert 45 < sat[~ellipse()].mean() < 65 and sat[ellipse()].mean() > 140
    assert tissue_mask(image).mean() > 0.99  # Otsu would split near 100; the clamp to 40 keeps the pale part


def test_threshold_never_drops_below_min_saturation():
    image = glass(noise=2)
    image[:, :130] = 242  # two flat shades of glass: Otsu would separate them
    image[:, :130, 0] = 250  # saturation about 8
    assert not tissue_mask(image).any()


def test_tiny_speck_is_removed():
    blob = ellipse(centre=(100, 90), radii=(60, 70))
    speck = np.zeros(SHAPE, bool)
    speck[20:23, 230:233] = True  # 9 pixels, fewer than min_object_pixels
    image = paint(paint(glass(), blob, (205, 125, 175)), speck, (170, 60, 150), seed=3)
    mask = tissue_mask(image)
    assert not mask[10:35, 220:245].any() and mask[blob].all()
    assert tissue_mask(image, min_object_pixels=4)[21, 231]  # kept when allowed


def test_hole_inside_tissue_is_filled():
    blob = ellipse()
    hole = np.zeros(SHAPE, bool)
    hole[85:115, 100:140] = True  # a pale lumen, far wider than the closing reaches
    image = paint(glass(), blob, (205, 125, 175))
    image[hole] = glass()[hole]
    mask = tissue_mask(image, dilation_pixels=0)
    assert mask[hole].all() and iou(mask, blob) > 0.98


def test_real_tile_stained_tissue_is_kept_and_glass_is_not():
    from imagecodecs import imread

    image = imread(shared_path("data", "aidpath_glomeruli", "images", "10003.png"))[..., :3]
    for _ in range(3):
        image = reduce2x(image)  # 1024 -> 128, the scale of a slide thumbnail
    mask = tissue_mask(image)
    stained = saturation(image) > 40
    assert stained.mean() > 0.3
    assert mask[stained].mean() > 0.97
    top = image[:20]
    white = top.min(axis=-1) > 200
    assert white.mean() > 0.8 and (~mask[:20][white]).mean() > 0.9
