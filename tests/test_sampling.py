"""Sampling units and the split of slides into folds (scripts/sampling.py)."""

from __future__ import annotations

import pytest
from conftest import disc_slide, write_slide
from scripts.prepare import prepare_slide
from scripts.rle import rle_encode
from scripts.sampling import sampling_units, split_slides


def test_every_glomerulus_once_plus_random_units(tmp_path):
    image, mask = disc_slide()
    slide = prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2, rle_encode(mask))
    units = sampling_units([slide, slide], random_per_slide=3)
    assert len(units) == 2 * (2 + 3)
    assert sum("bbox" in unit for unit in units) == 4
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


def test_fold_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="fold"):
        split_slides({"a": 1, "b": 2}, 4, 4)


def test_anywhere_fraction_splits_the_random_units(tmp_path):
    image, mask = disc_slide()
    slide = prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2, rle_encode(mask))
    regions = [unit["region"] for unit in sampling_units([slide], random_per_slide=8, anywhere_fraction=0.25)]
    assert regions.count("glomerulus") == 2 and regions.count("tissue") == 6 and regions.count("anywhere") == 2
