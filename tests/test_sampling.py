"""Sampling units and the split of slides into folds (scripts/sampling.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from conftest import disc_slide, write_slide
from scripts.prepare import prepare_slide
from scripts.rle import rle_encode
from scripts.sampling import class_weights, grid_units, sampling_units, split_slides


def test_every_glomerulus_once_plus_random_and_hard_units(tmp_path):
    image, mask = disc_slide()
    slide = prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2, rle_encode(mask))
    units = sampling_units([slide, slide], random_per_slide=3)
    assert len(units) == 2 * (2 + 3)
    assert sum("bbox" in unit for unit in units) == 4
    units = sampling_units([slide, slide], random_per_slide=3, hard_per_slide=2)
    assert [unit["region"] for unit in units].count("hard") == 4 and len(units) == 2 * (2 + 3 + 2)
    assert all(unit["level"] == 1 and unit["store"] == slide.store for unit in units)


@pytest.mark.parametrize("count", [2, 3, 7, 15])
def test_split_is_by_slide_deterministic_and_covers_every_slide_once(count):
    slides = {f"id{i}": f"slide{i}" for i in range(count)}
    folds = [split_slides(slides, 4, fold, seed=0) for fold in range(4)]
    for train, val in folds:
        assert val and train and not set(train) & set(val)
        assert sorted(train + val) == sorted(slides.values())
    if count >= 4:  # each slide validates in exactly one fold
        assert sorted(s for _, val in folds for s in val) == sorted(slides.values())
    assert split_slides(slides, 4, 1, seed=0) == folds[1]
    assert split_slides(dict(reversed(slides.items())), 4, 1, seed=0) == folds[1]  # order-independent


def test_without_hold_out_every_slide_trains():
    slides = {f"s{i}": i for i in range(5)}
    train, val = split_slides(slides, 4, 0, seed=0, hold_out=False)
    assert sorted(train) == list(range(5)) and val == []


def test_fold_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="fold"):
        split_slides({"a": 1, "b": 2}, 4, 4)


def test_random_units_carry_the_region_weights(tmp_path):
    image, mask = disc_slide()
    slide = prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2, rle_encode(mask))
    units = sampling_units([slide], random_per_slide=8, region_weights={"cortex": 0.5, "medulla": 0.3, "other": 0.2})
    assert [u["region"] for u in units].count("random") == 8
    weights = units[-1]["weights"]
    assert weights == pytest.approx({"cortex": 0.5, "medulla": 0.3, "other": 0.2, "tissue": 0.8})  # tissue: c + m


@pytest.mark.parametrize("weights", [{"cortex": -1}, {"cortex": 0, "medulla": 0, "other": 0}, {"cortx": 1}])
def test_bad_region_weights_are_rejected(weights):
    with pytest.raises(ValueError, match="region_weights"):
        class_weights(weights)


def test_grid_tiles_cover_the_tissue_and_drop_the_glass(tmp_path):
    image, mask = disc_slide()
    slide = prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2, rle_encode(mask))
    units = grid_units([slide], patch_size=64, min_tissue=0.5)  # 128 level-0 pixels per tile: 6 x 8 tiles
    centres = [tuple(u["centre"]) for u in units]
    assert all(u["region"] == "grid" for u in units) and len(set(centres)) == len(centres)
    assert (64 + 128 * 2, 64 + 128 * 3) in centres  # the middle of the tissue ellipse
    assert (64, 64) not in centres and (64 + 128 * 5, 64 + 128 * 6) not in centres  # glass corners
    assert 20 <= len(units) < 48
    assert len(grid_units([slide], patch_size=64, min_tissue=0.0)) == 48


def test_folds_are_stratified_by_glomerulus_count():
    slides = {
        f"id{i}": SimpleNamespace(name=f"id{i}", glomeruli=count)
        for i, count in enumerate([0, 1, 2, 3, 50, 60, 70, 80, 500, 600, 700, 800])
    }
    for fold in range(4):
        _, val = split_slides(slides, 4, fold, seed=1)
        counts = sorted(s.glomeruli for s in val)
        assert len(val) == 3 and counts[0] < 10 and 10 < counts[1] < 100 and counts[2] > 100
