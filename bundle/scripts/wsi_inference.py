"""Whole-slide inference as a stream of blocks: which blocks to run, and turning their
predictions into per-slide results.

A slide at the working resolution is cut into square blocks; each block is read with a margin
of context on every side (so windows near a block border see across it), predicted by the
config's sliding-window inferer with Gaussian blending, and only its core is kept. Blocks with
no tissue are never read. Block probabilities are stitched into a chunked zarr array; when a
slide's last block arrives, the level-0 mask is produced one band of columns at a time
(bilinear upsampling of the probabilities, then the threshold) and encoded as RLE, written as a
pyramidal TIFF and drawn on a preview, and Dice is counted against the truth when it is known.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from ignite.engine import Engine, Events

from .files import write_csv
from .layout import is_safe_id
from .metrics import DiceCounts, mean_dice
from .outputs import outline_overlay, write_mask_tiff, write_png, write_submission
from .prepare import PreparedSlide
from .pyramid import level_shape, pool_mask
from .rle import ColumnRunEncoder, decode_columns, parse_rle
from .slides import read_thumbnail

__all__ = ["SlidePredictionWriter", "block_datalist"]

logger = logging.getLogger(__name__)

BAND = 512  # working-resolution columns per band when building the level-0 mask
PREVIEW_SIDE = 1024  # longest side of preview PNGs, in pixels (about)
PRED_COLOUR, TRUTH_COLOUR = (0, 200, 0), (30, 60, 255)


def block_datalist(slides: Sequence[PreparedSlide], block_size: int, margin: int) -> list[dict]:
    """Datalist of the tissue blocks of every slide, for :class:`scripts.datasets.SlideRegionDataset`.

    Args:
        slides: prepared slides.
        block_size: core side at the working resolution (a multiple of the inferer's window helps).
        margin: context added on every side, at the working resolution.

    Returns:
        Items with the slide's fields (``level`` is the working level), ``location`` (level 0), ``size``,
        ``core`` (working ``[y0, x0, y1, x1]``), ``margin``, ``block_index`` and ``num_blocks``.
    """
    items = []
    for slide in slides:
        cores = [core for core in _block_cores(slide, block_size) if _has_tissue(slide, core)]
        for index, (y0, x0, y1, x1) in enumerate(cores):
            items.append({
                **slide.as_dict(),
                "location": [(y0 - margin) * slide.downscale, (x0 - margin) * slide.downscale],
                "size": [block_size + 2 * margin] * 2,
                "core": [y0, x0, y1, x1],
                "margin": margin,
                "block_index": index,
                "num_blocks": len(cores),
            })
    return items


def _block_cores(slide: PreparedSlide, block_size: int) -> list[tuple[int, int, int, int]]:
    height, width = level_shape(slide.shape, slide.downscale.bit_length() - 1)
    return [
        (y, x, min(y + block_size, height), min(x + block_size, width))
        for y in range(0, height, block_size)
        for x in range(0, width, block_size)
    ]


def _has_tissue(slide: PreparedSlide, core: tuple[int, int, int, int]) -> bool:
    group = zarr.open_group(slide.store, mode="r")
    scale = slide.downscale / group.attrs["tissue_downsample"]  # tissue pixels per working pixel
    y0, x0, y1, x1 = core
    rows = slice(int(y0 * scale), max(int(np.ceil(y1 * scale)), int(y0 * scale) + 1))
    cols = slice(int(x0 * scale), max(int(np.ceil(x1 * scale)), int(x0 * scale) + 1))
    return bool(group["tissue"][rows, cols].any())


@dataclass
class _SlideState:
    """What the writer holds for a slide while its blocks arrive."""

    slide: PreparedSlide
    probability: zarr.Array | None = None
    blocks_done: int = 0
    started: float = field(default_factory=time.monotonic)


class SlidePredictionWriter:
    """Ignite handler that stitches block predictions and writes each slide's results.

    Attach it to the inference evaluator (``postprocessing`` must leave ``pred`` as a sigmoid
    probability cropped to the block core). Results, under ``output_dir``: ``submission.csv``
    (every slide, in order), ``masks/<id>.tiff``, ``previews/<id>.png`` and, when ``truth`` is
    given, ``metrics.csv`` with the Kaggle Dice of each slide at level 0 and their mean.

    Args:
        output_dir: where results go.
        slides: every slide to report, in submission order; slides without tissue blocks get
            an empty prediction.
        threshold: probability above which a pixel is glomerulus.
        truth: ``{slide_id: rle}`` to score against, or None.
        failed: ``{slide_id: reason}`` for slides that could not be prepared; they get an empty
            row in the submission and are reported.
    """

    def __init__(self, output_dir: str, slides: Sequence[PreparedSlide], threshold: float = 0.5,
                 truth: dict[str, str] | None = None, failed: dict[str, str] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.slides = list(slides)
        self.threshold = threshold
        self.truth = truth
        self.failed = dict(failed or {})
        self.predictions: dict[str, str] = {}
        self.dice: dict[str, float] = {}
        self._states = {slide.slide_id: _SlideState(slide) for slide in self.slides}
        self._work = self.output_dir / ".work"

    def attach(self, engine: Engine) -> None:
        """Collect blocks after every iteration; write the remaining results when the run ends."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def collect(self, engine: Engine) -> None:
        """Stitch the blocks of the last batch; finish each slide whose last block arrived."""
        for item in engine.state.output:
            meta = item["image"].meta
            state = self._states[str(meta["slide_id"])]
            if state.probability is None:
                state.probability = self._probability_array(state.slide)
            y0, x0, y1, x1 = (int(v) for v in meta["core"])
            probability = item["pred"][0].detach().float().cpu().numpy()
            state.probability[y0:y1, x0:x1] = np.rint(probability * 255).astype(np.uint8)
            state.blocks_done += 1
            if state.blocks_done == int(meta["num_blocks"]):
                self._finish_slide(state)

    def _probability_array(self, slide: PreparedSlide) -> zarr.Array:
        shape = level_shape(slide.shape, slide.downscale.bit_length() - 1)
        return zarr.create_array(store=self._work / f"{slide.slide_id}-probability.zarr", shape=shape,
                                 chunks=(BAND, BAND), dtype=np.uint8, fill_value=0, overwrite=True)

    def _finish_slide(self, state: _SlideState) -> None:
        slide = state.slide
        try:
            probability = state.probability if state.probability is not None else self._probability_array(slide)
            self.predictions[slide.slide_id] = self._write_slide(slide, probability)
            logger.info("%s: done in %.1f s", slide.slide_id, time.monotonic() - state.started)
        except Exception as error:  # one slide's failure must not cost the others their results
            self.failed[slide.slide_id] = f"{type(error).__name__}: {error}"
            logger.error("%s: failed (%s); the other slides go on", slide.slide_id, self.failed[slide.slide_id])
        finally:
            shutil.rmtree(self._work / f"{slide.slide_id}-probability.zarr", ignore_errors=True)
            self._states.pop(slide.slide_id, None)

    def _write_slide(self, slide: PreparedSlide, probability: zarr.Array) -> str:
        """Level-0 mask, RLE, mask TIFF, preview and Dice of one slide; returns the RLE."""
        thumbnail, thumb_scale = read_thumbnail(slide.image, _preview_downsample(slide.shape))
        mask = zarr.create_array(store=self._work / f"{slide.slide_id}-mask.zarr", shape=slide.shape,
                                 chunks=(1024, 1024), dtype=np.uint8, fill_value=0, overwrite=True)
        thumbs = _Thumbnails(thumbnail.shape[:2], thumb_scale, with_truth=self._truth_of(slide) is not None)
        rle, counts = self._encode(slide, probability, mask, thumbs)
        write_mask_tiff(self.output_dir / "masks" / f"{slide.slide_id}.tiff", mask)
        shutil.rmtree(self._work / f"{slide.slide_id}-mask.zarr", ignore_errors=True)
        outlines = [(thumbs.truth, TRUTH_COLOUR)] if thumbs.truth is not None else []
        write_png(self.output_dir / "previews" / f"{slide.slide_id}.png",
                  outline_overlay(thumbnail, [*outlines, (thumbs.prediction, PRED_COLOUR)]))
        if counts is not None:
            self.dice[slide.slide_id] = counts.dice
        return rle

    def _truth_of(self, slide: PreparedSlide) -> str | None:
        return None if self.truth is None else self.truth.get(slide.slide_id)

    def _encode(self, slide: PreparedSlide, probability: zarr.Array, mask: zarr.Array,
                thumbs: _Thumbnails) -> tuple[str, DiceCounts | None]:
        """Build the level-0 mask band by band: upsample, threshold, encode, score, draw."""
        height, width = slide.shape
        scale = slide.downscale
        truth_rle = self._truth_of(slide)
        truth_runs = parse_rle(truth_rle, height * width, slide.slide_id) if truth_rle is not None else None
        counts = DiceCounts() if truth_runs is not None else None
        encoder = ColumnRunEncoder(height)
        band = max(BAND, thumbs.scale // scale)  # working columns; level-0 band is a multiple of the preview scale
        for col in range(0, probability.shape[1], band):
            x0, x1 = col * scale, min((col + band) * scale, width)
            predicted = _upsample_threshold(probability, col, col + band, scale, self.threshold)[:height, : x1 - x0]
            encoder.add(predicted)
            mask[:, x0:x1] = predicted
            truth = decode_columns(*truth_runs, height, x0, x1) if truth_runs is not None else None
            if counts is not None:
                counts.add(predicted, truth)
            thumbs.add(x0, predicted, truth)
        return encoder.result(), counts

    def finish(self, engine: Engine | None = None) -> None:
        """Finish slides that had no tissue blocks, then write submission and metrics."""
        for state in list(self._states.values()):
            self._finish_slide(state)
        listed = {s.slide_id for s in self.slides}
        order = [s.slide_id for s in self.slides] + [s for s in self.failed if s not in listed and is_safe_id(s)]
        for slide_id, reason in self.failed.items():
            self.predictions.pop(slide_id, None)
            print(f"FAILED {slide_id}: {reason}" + (" (empty prediction written)" if slide_id in order else ""))
        submission = write_submission(self.output_dir / "submission.csv", {s: self.predictions.get(s, "") for s in order})
        print(f"segmented {len(self.predictions)} slide(s): {submission}; masks in {self.output_dir / 'masks'}, "
              f"previews in {self.output_dir / 'previews'}")
        if self.truth is not None:
            self._report_dice()
        shutil.rmtree(self._work, ignore_errors=True)

    def _report_dice(self) -> None:
        mean = mean_dice(self.dice)
        rows = [(slide_id, f"{dice:.4f}") for slide_id, dice in self.dice.items()] + [("mean", f"{mean:.4f}")]
        path = write_csv(self.output_dir / "metrics.csv", ("id", "dice"), rows)
        print(f"Dice (Kaggle, level 0): mean {mean:.4f} over {len(self.dice)} slide(s); per slide in {path}")


def _preview_downsample(shape: tuple[int, int]) -> int:
    """Smallest power of two that brings the longest side to about ``PREVIEW_SIDE`` pixels."""
    downsample = 1
    while max(shape) / downsample > PREVIEW_SIDE:
        downsample *= 2
    return downsample


def _upsample_threshold(probability: zarr.Array, col0: int, col1: int, scale: int, threshold: float) -> np.ndarray:
    """Level-0 mask of working columns ``[col0, col1)``: bilinear upsampling, then the threshold.

    One working column of context on each side makes the band equal to the same columns of an
    upsampling of the whole slide (bilinear weights reach one source pixel across).
    """
    lo, hi = max(col0 - 1, 0), min(col1 + 1, probability.shape[1])
    source = torch.from_numpy(probability[:, lo:hi].astype(np.float32) / 255)[None, None]
    upsampled = source if scale == 1 else F.interpolate(source, scale_factor=scale, mode="bilinear", align_corners=False)
    start = (col0 - lo) * scale
    return (upsampled[0, 0, :, start : start + (min(col1, probability.shape[1]) - col0) * scale] > threshold).numpy().astype(np.uint8)


class _Thumbnails:
    """Prediction and truth reduced (max-pooled) to the preview's scale, filled band by band."""

    def __init__(self, shape: tuple[int, int], scale: int, with_truth: bool) -> None:
        self.scale = scale
        self.prediction = np.zeros(shape, dtype=bool)
        self.truth = np.zeros(shape, dtype=bool) if with_truth else None

    def add(self, x0: int, predicted: np.ndarray, truth: np.ndarray | None) -> None:
        col = x0 // self.scale
        for target, band in ((self.prediction, predicted), (self.truth, truth)):
            if target is not None and band is not None:
                pooled = pool_mask(band != 0, self.scale, "max")[: target.shape[0], : target.shape[1] - col]
                target[: pooled.shape[0], col : col + pooled.shape[1]] |= pooled

