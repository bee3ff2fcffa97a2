"""Dice the Kaggle way: per slide, then the mean over slides; 1.0 where prediction and truth are
both empty. Counts are accumulated band by band, or taken from the masks' runs, so no whole-slide
mask is ever needed; so are the small per-slide maps of prediction and truth that show where a
slide's errors are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from ignite.metrics import Metric
from monai.utils import convert_to_tensor

from .keys import DOWNSCALE, IMAGE, PATH, SHAPE, SLIDE_ID, STORE
from .prepare import working_shape
from .pyramid import pool_mask
from .rle import parse_rle
from .stitching import SlideStitchers, TissueWindows
from .store import LABEL, read_window

__all__ = [
    "DiceCounts",
    "SlideDice",
    "SlideMaps",
    "dice_score",
    "map_downsample",
    "mean_dice",
    "pool_any_into",
    "rle_dice",
]


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

    @classmethod
    def from_runs(cls, prediction: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray]) -> DiceCounts:
        """Counts of two masks given as runs, without decoding either.

        Args:
            prediction: ``(starts, lengths)`` of the prediction, sorted and not overlapping (as
                :func:`scripts.rle.parse_rle` gives them), in any pixel numbering both share.
            truth: the same for the truth.

        Returns:
            The counts of the whole masks.
        """
        counts = cls()
        counts.predicted, counts.truth = int(prediction[1].sum()), int(truth[1].sum())
        starts = np.concatenate([prediction[0], truth[0]])
        ends = starts + np.concatenate([prediction[1], truth[1]])
        if len(starts):
            order = np.argsort(starts, kind="stable")
            starts, ends = starts[order], ends[order]
            # pixels in either mask: each run adds the part past the furthest end of the runs before it
            reach = np.concatenate([starts[:1], np.maximum.accumulate(ends)[:-1]])
            either = int(np.clip(ends - np.maximum(starts, reach), 0, None).sum())
            counts.intersection = counts.predicted + counts.truth - either
        return counts

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


def rle_dice(predicted: str, truth: str, shape: tuple[int, int]) -> float:
    """Kaggle Dice of two RLE masks of one slide (``shape`` its level-0 size), from their runs."""
    num_pixels = shape[0] * shape[1]
    return DiceCounts.from_runs(parse_rle(predicted, num_pixels), parse_rle(truth, num_pixels)).dice


def mean_dice(per_slide: dict[str, float]) -> float:
    """Mean over slides (the competition score); NaN when there are none."""
    return float(np.mean(list(per_slide.values()))) if per_slide else float("nan")


class SlideMaps(NamedTuple):
    """Small copies of one slide's thresholded prediction and truth (see :class:`SlideDice`).

    Attributes:
        prediction: ``(ceil(h / downsample), ceil(w / downsample))`` bool; a pixel is set when any
            working pixel of its block is predicted.
        truth: the same for the label.
        downsample: working pixels per map pixel (a power of two).
        downscale: level-0 pixels per working pixel.
        store: the slide's zarr store.
        image: the slide image the windows were read from (None when the metadata did not say).
    """

    prediction: np.ndarray
    truth: np.ndarray
    downsample: int
    downscale: int
    store: str
    image: str | None


def map_downsample(shape: Sequence[int], map_size: int) -> int:
    """Smallest power of two that brings the longest side of ``shape`` to at most ``map_size``."""
    downsample = 1
    while -(-max(int(v) for v in shape) // downsample) > map_size:
        downsample *= 2
    return downsample


def pool_any_into(small: np.ndarray, band: np.ndarray, row: int, downsample: int) -> None:
    """OR an ``any``-pool of ``band`` (rows ``[row, row + len(band))`` of a mask, from column 0)
    into ``small``, the mask pooled by ``downsample``; the band need not start on a block edge."""
    top = row % downsample  # rows of the first block above the band
    shifted = np.zeros((top + len(band), band.shape[1]), bool)
    shifted[top:] = np.asarray(band) != 0
    pooled = pool_mask(shifted, downsample, "max")
    first = row // downsample
    small[first : first + len(pooled), : pooled.shape[1]] |= pooled[: len(small) - first]


class SlideDice(Metric):
    """Ignite metric: mean over slides of each slide's Dice at the working resolution.

    Window predictions are stitched exactly as inference stitches them (:mod:`scripts.stitching`)
    and compared, band by band, with the ``label`` array of the slide's zarr store, so a slide
    scores as a whole, not as the mean of its windows.

    From the same bands it keeps, per slide, a small ``any``-pooled copy of the thresholded
    prediction and of the label (longest side at most ``map_size``), for pictures of where the
    errors are (:meth:`error_maps`, drawn by :class:`scripts.reports.ValidationErrorMaps`).

    Args:
        windows: the validation slides' windows, which the evaluator runs.
        threshold: probability above which a pixel is glomerulus.
        map_size: longest side of the per-slide maps in pixels; None or 0 keeps no maps.
    """

    def __init__(self, windows: TissueWindows, threshold: float = 0.5, map_size: int | None = 1024) -> None:
        self.windows = windows
        self.threshold = threshold
        self.map_size = int(map_size) if map_size else 0
        self._counts: dict[str, DiceCounts] = defaultdict(DiceCounts)
        self._maps: dict[str, SlideMaps] = {}
        self._stitchers = SlideStitchers(windows)
        super().__init__()

    def reset(self) -> None:
        self._counts = defaultdict(DiceCounts)
        self._maps = {}
        self._stitchers = SlideStitchers(self.windows)

    def update(self, output: Sequence[dict]) -> None:
        for item in output:
            meta = item["image"].meta
            slide_id = str(meta[SLIDE_ID])
            probability = convert_to_tensor(item["pred"][0], track_meta=False).detach().float()
            width, bands, _ = self._stitchers.add(meta, probability)  # blended on the prediction's device
            maps = self._slide_maps(slide_id, meta) if self.map_size else None
            for row, band in bands:
                label = read_window(meta[STORE], LABEL, row, 0, len(band), width)
                predicted = (band > self.threshold).cpu().numpy()
                self._counts[slide_id].add(predicted, label)
                if maps is not None:
                    pool_any_into(maps.prediction, predicted, row, maps.downsample)
                    pool_any_into(maps.truth, label, row, maps.downsample)

    def _slide_maps(self, slide_id: str, meta: dict) -> SlideMaps:
        """The slide's maps, made empty on its first window."""
        if slide_id not in self._maps:
            downscale = int(meta[DOWNSCALE])
            shape = working_shape(meta[SHAPE], downscale)
            downsample = map_downsample(shape, self.map_size)
            small = tuple(-(-v // downsample) for v in shape)
            image = meta.get(PATH, meta.get(IMAGE))
            self._maps[slide_id] = SlideMaps(
                np.zeros(small, bool),
                np.zeros(small, bool),
                downsample,
                downscale,
                str(meta[STORE]),
                None if image is None else str(image),
            )
        return self._maps[slide_id]

    def compute(self) -> float:
        return mean_dice(self.per_slide())

    def per_slide(self) -> dict[str, float]:
        """Each slide's Dice from the last run."""
        return {slide: counts.dice for slide, counts in self._counts.items()}

    def error_maps(self) -> dict[str, SlideMaps]:
        """Each slide's small prediction and truth maps from the last run (empty without ``map_size``)."""
        return dict(self._maps)
