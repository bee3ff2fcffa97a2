"""Dice the Kaggle way: per slide, then the mean over slides; 1.0 where prediction and truth are
both empty. Counts are accumulated block by block so no whole-slide mask is ever needed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ignite.metrics import Metric

__all__ = ["DiceCounts", "SlideDice", "dice_score", "mean_dice"]


class DiceCounts:
    """Running ``|X & Y|``, ``|X|`` and ``|Y|`` of one slide."""

    def __init__(self) -> None:
        self.intersection = 0
        self.predicted = 0
        self.truth = 0

    def add(self, prediction: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> None:
        """Add one block of binary prediction and truth (same shape)."""
        prediction, truth = prediction != 0, truth != 0
        self.intersection += int((prediction & truth).sum())
        self.predicted += int(prediction.sum())
        self.truth += int(truth.sum())

    @property
    def dice(self) -> float:
        """``2|X & Y| / (|X| + |Y|)``, or 1.0 when both are empty."""
        total = self.predicted + self.truth
        return 1.0 if total == 0 else 2.0 * self.intersection / total


def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Kaggle Dice of one binary mask against another."""
    counts = DiceCounts()
    counts.add(prediction, truth)
    return counts.dice


def mean_dice(per_slide: dict[str, float]) -> float:
    """Mean over slides (the competition score); NaN when there are none."""
    return float(np.mean(list(per_slide.values()))) if per_slide else float("nan")


class SlideDice(Metric):
    """Ignite metric: mean over slides of each slide's Dice, from thresholded block predictions.

    Blocks of the same slide add to one count, so a slide cut into many blocks scores as a whole.

    Args:
        threshold: probability above which a pixel is glomerulus.
        output_transform: maps the engine output to a list of ``(pred, label, slide_id)``.
    """

    def __init__(self, threshold: float = 0.5, output_transform: Callable | None = None) -> None:
        self.threshold = threshold
        self._counts: dict[str, DiceCounts] = defaultdict(DiceCounts)
        super().__init__(output_transform=output_transform or blocks_from_output)

    def reset(self) -> None:
        self._counts = defaultdict(DiceCounts)

    def update(self, output: Sequence[tuple[torch.Tensor, torch.Tensor, str]]) -> None:
        for pred, label, slide_id in output:
            self._counts[slide_id].add(pred > self.threshold, label > 0.5)

    def compute(self) -> float:
        return mean_dice({slide: counts.dice for slide, counts in self._counts.items()})

    def per_slide(self) -> dict[str, float]:
        """Each slide's Dice from the last run."""
        return {slide: counts.dice for slide, counts in self._counts.items()}


def blocks_from_output(output: Sequence[dict]) -> list[tuple[torch.Tensor, torch.Tensor, str]]:
    """``(pred, label, slide_id)`` per item of a decollated evaluator output."""
    return [(item["pred"], item["label"], str(item["image"].meta["slide_id"])) for item in output]
