"""Kaggle Dice (scripts/metrics.py): counts accumulated band by band, the empty cases, the mean over
slides, the ignite metric that scores each slide as a whole, and its small per-slide error maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from conftest import disc_slide, write_slide
from scripts.metrics import (
    DiceCounts,
    SlideDice,
    dice_score,
    map_downsample,
    mean_dice,
    pool_any_into,
    rle_dice,
)
from scripts.prepare import prepare_slide
from scripts.pyramid import pool_mask
from scripts.rle import rle_encode
from scripts.stitching import SlideStitchers, TissueWindows
from scripts.store import LABEL, read_window


def masks(prediction_rows, truth_rows):
    return np.array(prediction_rows, np.uint8), np.array(truth_rows, np.uint8)


def test_dice_of_a_hand_computed_case():
    prediction, truth = masks([[1, 1, 0], [1, 0, 0]], [[1, 0, 0], [1, 1, 1]])
    # |X & Y| = 2, |X| = 3, |Y| = 4
    assert dice_score(prediction, truth) == pytest.approx(4 / 7)


def test_both_empty_is_one_and_one_empty_is_zero():
    empty = np.zeros((4, 4), np.uint8)
    some = empty.copy()
    some[1, 2] = 1
    assert dice_score(empty, empty) == 1.0
    assert dice_score(some, empty) == 0.0 and dice_score(empty, some) == 0.0
    assert dice_score(some, some) == 1.0


def test_counts_accept_any_nonzero_values_and_tensors():
    prediction, truth = masks([[3, 0], [255, 1]], [[1, 1], [0, 1]])
    counts = DiceCounts()
    counts.add(torch.from_numpy(prediction), torch.from_numpy(truth).bool())
    assert (counts.intersection, counts.predicted, counts.truth) == (2, 3, 3)
    assert counts.dice == pytest.approx(4 / 6)


def test_counts_over_blocks_equal_the_whole_mask():
    rng = np.random.default_rng(0)
    prediction, truth = rng.random((2, 30, 40)) < [[[0.3]], [[0.4]]]
    counts = DiceCounts()
    for x0 in range(0, 40, 7):
        counts.add(prediction[:, x0 : x0 + 7], truth[:, x0 : x0 + 7])
    assert counts.dice == pytest.approx(dice_score(prediction, truth))
    assert counts.truth == truth.sum() and counts.predicted == prediction.sum()


def test_mean_dice_is_the_mean_over_slides_and_nan_without_slides():
    assert mean_dice({"a": 1.0, "b": 0.5, "c": 0.0}) == pytest.approx(0.5)
    assert math.isnan(mean_dice({}))


def block(values):
    return torch.tensor(values, dtype=torch.float32)[None]  # (1, h, w) like a decollated prediction


ROI, OVERLAP = 64, 0.25


@pytest.fixture()
def labelled(tmp_path):
    slides = []
    for slide_id, seed in (("s1", 1), ("s2", 2)):
        image, mask = disc_slide(shape=(400, 500), discs=((150, 180, 50), (260, 330, 40)), seed=seed)
        path = write_slide(tmp_path / f"{slide_id}.tiff", image)
        slides.append(prepare_slide(slide_id, path, tmp_path / "cache", 2, rle_encode(mask)))
    return slides


def window_outputs(windows, predict):
    """Evaluator-style outputs: one item per window, ``pred`` from ``predict(label window)``."""
    outputs = []
    for item in windows.datalist:
        meta = {**item, "location": np.asarray(item["location"])}
        y, x = (v // item["downscale"] for v in item["location"])
        label = read_window(item["store"], LABEL, y, x, ROI, ROI).astype(np.float32)
        outputs.append(
            {"image": MetaTensor(torch.zeros(3, ROI, ROI), meta=meta), "pred": torch.from_numpy(predict(label))[None]}
        )
    return outputs


def test_slide_dice_of_perfect_windows_is_one_per_slide(labelled):
    windows = TissueWindows(labelled, ROI, OVERLAP)
    metric = SlideDice(windows)
    metric.update(window_outputs(windows, lambda label: label))
    assert metric.per_slide() == {"s1": 1.0, "s2": 1.0} and metric.compute() == 1.0


def test_slide_dice_scores_each_slide_whole_and_averages_slides(labelled):
    windows = TissueWindows(labelled, ROI, OVERLAP, "centre")
    metric = SlideDice(windows, threshold=0.5)
    outputs = window_outputs(windows, lambda label: label)
    empty = [{**o, "pred": torch.zeros_like(o["pred"])} if o["image"].meta["slide_id"] == "s2" else o for o in outputs]
    metric.update(empty)
    assert metric.per_slide() == {"s1": 1.0, "s2": 0.0} and metric.compute() == 0.5


def test_slide_dice_attached_to_an_engine_resets_each_run(labelled):
    windows = TissueWindows(labelled[:1], ROI, OVERLAP)
    outputs = window_outputs(windows, lambda label: label)
    engine = Engine(lambda engine, batch: batch)
    SlideDice(windows).attach(engine, "dice")
    engine.run([outputs[i : i + 3] for i in range(0, len(outputs), 3)])
    assert engine.state.metrics["dice"] == 1.0
    zeros = [{**o, "pred": torch.zeros_like(o["pred"])} for o in outputs]
    engine.run([zeros])
    assert engine.state.metrics["dice"] == 0.0  # only the second run's windows


def test_any_pooling_band_by_band_equals_pooling_the_whole_mask():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 29)) < 0.05
    for downsample in (1, 2, 4, 8, 64):
        small = np.zeros((-(-37 // downsample), -(-29 // downsample)), bool)
        for start, stop in ((0, 5), (5, 6), (6, 19), (19, 37)):  # bands off the block edges
            pool_any_into(small, mask[start:stop], start, downsample)
        assert np.array_equal(small, pool_mask(mask, downsample, "max"))
    assert [map_downsample(shape, 64) for shape in ((64, 10), (65, 10), (10, 200), (1, 1))] == [1, 2, 4, 1]


def stitched_slides(outputs, windows, threshold=0.5):
    """Reference: each slide's whole stitched prediction (thresholded) and its whole label."""
    stitchers, full = SlideStitchers(windows), {}
    for output in outputs:
        meta = output["image"].meta
        _, bands, _ = stitchers.add(meta, output["pred"][0].numpy())
        shape = tuple(-(-v // meta["downscale"]) for v in meta["shape"])
        prediction = full.setdefault(meta["slide_id"], (np.zeros(shape, bool), meta["store"]))[0]
        for row, band in bands:
            prediction[row : row + len(band)] = band > threshold
    return {
        slide: (prediction, read_window(store, LABEL, 0, 0, *prediction.shape) != 0)
        for slide, (prediction, store) in full.items()
    }


@pytest.mark.parametrize("map_size, downsample", [(20, 16), (64, 4), (1000, 1)])
def test_error_maps_are_the_pooled_whole_slide_masks_and_leave_dice_unchanged(labelled, map_size, downsample):
    windows = TissueWindows(labelled, ROI, OVERLAP)
    outputs = window_outputs(windows, lambda label: np.roll(label, 6, axis=1))  # misses and false alarms
    metric, plain = SlideDice(windows, map_size=map_size), SlideDice(windows, map_size=None)
    metric.update(outputs)
    plain.update(outputs)
    reference = stitched_slides(outputs, windows)
    maps, stores = metric.error_maps(), {s.slide_id: s.store for s in labelled}
    assert sorted(maps) == ["s1", "s2"] and plain.error_maps() == {}
    for slide, (prediction, truth) in reference.items():
        assert prediction.shape == (200, 250) and (prediction & ~truth).any() and (truth & ~prediction).any()
        small = maps[slide]
        assert small.downsample == downsample and small.downscale == 2 and small.store == stores[slide]
        assert max(small.prediction.shape) <= map_size
        assert np.array_equal(small.prediction, pool_mask(prediction, downsample, "max"))
        assert np.array_equal(small.truth, pool_mask(truth, downsample, "max"))
        assert metric.per_slide()[slide] == pytest.approx(dice_score(prediction, truth))
    assert metric.per_slide() == plain.per_slide() and 0.0 < metric.compute() < 1.0


def test_error_maps_are_cleared_with_each_run(labelled):
    windows = TissueWindows(labelled[:1], ROI, OVERLAP)
    outputs = window_outputs(windows, lambda label: label)
    metric = SlideDice(windows, map_size=64)
    engine = Engine(lambda engine, batch: batch)
    metric.attach(engine, "dice")
    engine.run([outputs])
    assert metric.error_maps()["s1"].prediction.any()
    engine.run([[{**o, "pred": torch.zeros_like(o["pred"])} for o in outputs]])
    maps = metric.error_maps()["s1"]
    assert not maps.prediction.any() and maps.truth.any()  # only the second run's (empty) prediction


def test_rle_dice_scores_two_slides_masks_from_their_runs_as_the_mask_dice():
    rng = np.random.default_rng(0)
    truth = rng.random((37, 53)) > 0.6
    predicted = truth.copy()
    predicted[5:20, 10:40] = ~predicted[5:20, 10:40]
    expected = dice_score(predicted, truth)
    assert 0 < expected < 1
    assert rle_dice(rle_encode(predicted), rle_encode(truth), truth.shape) == pytest.approx(expected)
    assert rle_dice(rle_encode(truth), rle_encode(truth), truth.shape) == 1.0
    assert rle_dice("", "", truth.shape) == 1.0  # both empty: Kaggle's 1
