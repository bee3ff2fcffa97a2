"""Kaggle Dice (scripts/metrics.py): counts accumulated band by band, the empty cases, the mean over
slides, and the ignite metric that scores each slide as a whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import disc_slide, write_slide
from ignite.engine import Engine
from monai.data import MetaTensor
from scripts.metrics import DiceCounts, SlideDice, dice_score, mean_dice
from scripts.prepare import prepare_slide, read_window
from scripts.rle import rle_encode
from scripts.stitching import blend_weights
from scripts.wsi_inference import window_datalist


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


def window_outputs(slides, predict):
    """Evaluator-style outputs: one item per window, ``pred`` from ``predict(label window)``."""
    outputs = []
    for item in window_datalist(slides, ROI, OVERLAP):
        meta = {**item, "location": np.asarray(item["location"])}
        y, x = (v // item["downscale"] for v in item["location"])
        label = read_window(item["store"], "label", y, x, ROI, ROI).astype(np.float32)
        outputs.append({"image": MetaTensor(torch.zeros(3, ROI, ROI), meta=meta),
                        "pred": torch.from_numpy(predict(label))[None]})
    return outputs


def test_slide_dice_of_perfect_windows_is_one_per_slide(labelled):
    metric = SlideDice(blend_weights(ROI, "gaussian", OVERLAP), OVERLAP)
    metric.update(window_outputs(labelled, lambda label: label))
    assert metric.per_slide() == {"s1": 1.0, "s2": 1.0} and metric.compute() == 1.0


def test_slide_dice_scores_each_slide_whole_and_averages_slides(labelled):
    metric = SlideDice(blend_weights(ROI, "centre", OVERLAP), OVERLAP, threshold=0.5)
    outputs = window_outputs(labelled, lambda label: label)
    empty = [{**o, "pred": torch.zeros_like(o["pred"])} if o["image"].meta["slide_id"] == "s2" else o for o in outputs]
    metric.update(empty)
    assert metric.per_slide() == {"s1": 1.0, "s2": 0.0} and metric.compute() == 0.5


def test_slide_dice_attached_to_an_engine_resets_each_run(labelled):
    outputs = window_outputs(labelled[:1], lambda label: label)
    engine = Engine(lambda engine, batch: batch)
    SlideDice(blend_weights(ROI, "gaussian", OVERLAP), OVERLAP).attach(engine, "dice")
    engine.run([outputs[i : i + 3] for i in range(0, len(outputs), 3)])
    assert engine.state.metrics["dice"] == 1.0
    zeros = [{**o, "pred": torch.zeros_like(o["pred"])} for o in outputs]
    engine.run([zeros])
    assert engine.state.metrics["dice"] == 0.0  # only the second run's windows
