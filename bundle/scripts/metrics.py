"""Dice the Kaggle way: per slide, then the mean over slides; 1.0 where prediction and truth are
both empty. Counts are accumulated band by band so no whole-slide mask is ever needed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from ignite.metrics import Metric

from .prepare import read_window
from .stitching import SlideStitchers

__all__ = ["DiceCounts", "SlideDice", "dice_score", "mean_dice"]


class DiceCounts:
    """Running ``|X & Y|``, ``|X|`` and ``|Y|`` of one slide."""

    def __init__(self) -> None:
        self.intersection = 0
        self.predicted = 0
        self.truth = 0

    def add(self, prediction: np.ndarray | torch.Tensor | None, truth: np.ndarray | torch.Tensor) -> None:
        """Add one band of binary prediction and truth (same shape); ``None`` is an empty prediction."""
        truth = truth != 0
        self.truth += int(truth.sum())
        if prediction is not None:
            prediction = prediction != 0
            self.intersection += int((prediction & truth).sum())
            self.predicted += int(prediction.sum())

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
    """Ignite metric: mean over slides of each slide's Dice at the working resolution.

    Window predictions are stitched exactly as inference stitches them (:mod:`scripts.stitching`)
    and compared, band by band, with the ``label`` array of the slide's zarr store, so a slide
    scores as a whole, not as the mean of its windows.

    Args:
        weights: window blend weights (:func:`scripts.stitching.blend_weights`).
        overlap: the windows' overlap.
        threshold: probability above which a pixel is glomerulus.
    """

    def __init__(self, weights: np.ndarray, overlap: float, threshold: float = 0.5) -> None:
        self.weights = weights
        self.overlap = overlap
        self.threshold = threshold
        self._counts: dict[str, DiceCounts] = defaultdict(DiceCounts)
        self._stitchers = SlideStitchers(weights, overlap)
        super().__init__()

    def reset(self) -> None:
        self._counts = defaultdict(DiceCounts)
        self._stitchers = SlideStitchers(self.weights, self.overlap)

    def update(self, output: Sequence[dict]) -> None:
        for item in output:
            meta = item["image"].meta
            probability = item["pred"][0].detach().float().cpu().numpy()
            width, bands, _ = self._stitchers.add(meta, probability)
            for row, band in bands:
                label = read_window(meta["store"], "label", row, 0, len(band), width)
                self._counts[str(meta["slide_id"])].add(band > self.threshold, label)

    def compute(self) -> float:
        return mean_dice(self.per_slide())

    def per_slide(self) -> dict[str, float]:
        """Each slide's Dice from the last run."""
        return {slide: counts.dice for slide, counts in self._counts.items()}
