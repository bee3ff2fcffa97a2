"""Kaggle Dice (scripts/metrics.py): counts accumulated block by block, the empty cases, the mean over
slides, and the ignite metric that scores each slide as a whole."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from scripts.metrics import (
    DiceCounts,
    SlideDice,
    blocks_from_output,
    dice_score,
    mean_dice,
)


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


def test_slide_dice_scores_blocks_of_a_slide_as_one_slide():
    metric = SlideDice(threshold=0.5, output_transform=lambda x: x)
    # slide a, block 1: X = 2, Y = 1, overlap 1; block 2: X = 0, Y = 2 -> Dice a = 2 * 1 / (2 + 3) = 0.4
    metric.update([(block([[0.9, 0.8], [0.1, 0.2]]), block([[1, 0], [0, 0]]), "a"),
                   (block([[0.1, 0.4], [0.2, 0.5]]), block([[1, 1], [0, 0]]), "b")])
    metric.update([(block([[0.0, 0.3], [0.5, 0.2]]), block([[0, 0], [1, 1]]), "a")])
    # slide b: X = 0 (0.5 is not above the threshold), Y = 2 -> 0.0
    assert metric.per_slide() == pytest.approx({"a": 0.4, "b": 0.0})
    assert metric.compute() == pytest.approx(0.2)  # mean of two slides, not of three blocks
    per_block = np.mean([2 * 1 / 3, 0.0, 0.0])
    assert metric.compute() != pytest.approx(per_block)


def test_slide_dice_threshold_and_empty_slides():
    metric = SlideDice(threshold=0.3, output_transform=lambda x: x)
    metric.update([(block([[0.35, 0.0]]), block([[1, 0]]), "a"), (block([[0.1, 0.2]]), block([[0, 0]]), "b")])
    assert metric.per_slide() == {"a": 1.0, "b": 1.0}


def test_slide_dice_reset_forgets_everything():
    metric = SlideDice(output_transform=lambda x: x)
    metric.update([(block([[1.0]]), block([[0]]), "a")])
    assert metric.compute() == 0.0
    metric.reset()
    assert metric.per_slide() == {} and math.isnan(metric.compute())
    metric.update([(block([[1.0]]), block([[1]]), "b")])
    assert metric.per_slide() == {"b": 1.0}


def evaluator_output(values, labels, slide_id):
    image = MetaTensor(torch.zeros(3, 2, 2), meta={"slide_id": slide_id})
    return {"pred": block(values), "label": block(labels), "image": image}


def test_blocks_from_output_reads_the_slide_id_from_image_meta():
    output = [evaluator_output([[0.9, 0.1], [0.0, 0.0]], [[1, 0], [0, 0]], "s1")]
    [(pred, label, slide_id)] = blocks_from_output(output)
    assert slide_id == "s1" and pred.shape == label.shape == (1, 2, 2)


def test_slide_dice_attached_to_an_engine_resets_each_run():
    batches = [[evaluator_output([[0.9, 0.9], [0.0, 0.0]], [[1, 0], [0, 0]], "s1"),
                evaluator_output([[0.0, 0.0], [0.0, 0.0]], [[0, 0], [0, 0]], "s2")],
               [evaluator_output([[0.0, 0.0], [0.9, 0.0]], [[0, 0], [1, 0]], "s1")]]
    engine = Engine(lambda engine, batch: batch)
    SlideDice().attach(engine, "dice")
    engine.run(batches)
    # s1: X = 3, Y = 2, overlap 2 -> 0.8; s2 empty -> 1.0
    assert engine.state.metrics["dice"] == pytest.approx(0.9)
    engine.run(batches[1:])
    assert engine.state.metrics["dice"] == pytest.approx(1.0)  # only the second run's blocks
