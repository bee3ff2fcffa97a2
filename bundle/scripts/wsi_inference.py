"""Whole-slide inference as a stream of windows: which windows to run, and turning their
predictions into per-slide results.

Only windows that touch tissue are listed (a lookup in the slide's low-resolution tissue mask);
MONAI's DataLoader reads them through cuCIM in worker processes while the network runs on the
previous batch. :class:`SlidePredictionWriter`, in a thread of its own, blends each window into
its slide band by band (:mod:`scripts.stitching`); each band of rows that becomes final then
goes through three steps, each in a thread of its own (so they overlap one another and the
stitching): the probabilities go into a chunked zarr array at the working resolution (bands
aligned to its chunks, so each chunk is written once), the next rows of the slide's level-0 mask
are made and go into its pyramidal TIFF and its RLE runs (:mod:`scripts.level0`), and the
glomeruli of the rows of tiles they complete are traced (:class:`scripts.annotations.PolygonTracer`).
After the slide's last window another thread joins the RLE, scores it, writes the polygons and
draws the preview while the next slide's windows are stitched. Nothing ever holds a whole slide
at level 0.

Per slide, under ``output_dir``: ``rle/<id>.txt``, ``masks/<id>.tiff``, ``glomeruli/<id>.geojson``,
``previews/<id>.png``, optionally ``heatmaps/<id>.tiff``, and ``summaries/<id>.json`` last, which
marks the slide done: a rerun skips it unless asked to overwrite. ``submission.csv`` (and, with a
truth, ``metrics.csv``) are assembled from the per-slide files, by rank 0 under ``torchrun``.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr
from ignite.engine import Engine, Events
from monai.utils import convert_to_tensor
from skimage.measure import block_reduce
from tqdm import tqdm

from .annotations import PolygonTracer, write_annotations
from .distributed import barrier, is_main_process, rank
from .files import write_csv, write_text_atomic
from .keys import LOCATION, NUM_WINDOWS, READ_ERROR, SIZE, SLIDE_ID
from .layout import report_problems
from .level0 import Level0Mask
from .metrics import mean_dice, rle_dice
from .outputs import outline_overlay, write_png, write_submission
from .prepare import PreparedSlide
from .pyramid import write_pyramid
from .slides import read_thumbnail
from .stitching import SlideStitchers, slide_windows
from .store import read_tissue

__all__ = ["ConfidenceCounts", "SlidePredictionWriter", "finished_slides", "window_datalist"]

logger = logging.getLogger(__name__)

BAND = 512  # chunk side of the working-resolution probabilities
PREVIEW_SIDE = 1024  # longest side of preview PNGs, in pixels (about)
PRED_COLOUR, TRUTH_COLOUR = (0, 200, 0), (30, 60, 255)
QUEUE_WINDOWS = 64  # predicted windows waiting for the writer thread, at most
PENDING_BAND_STEPS = 8  # a slide's band steps queued or running at most (each holds its band) before the writer waits
UNCERTAIN = (0.2, 0.8)  # probabilities counted as undecided in a slide's confidence


def window_datalist(slides: Sequence[PreparedSlide], roi: int, overlap: float, skip: Iterable[str] = ()) -> list[dict]:
    """Datalist of the tissue windows of every slide, for :class:`scripts.datasets.SlideRegionDataset`.

    Args:
        slides: prepared slides.
        roi: window side at the working resolution.
        overlap: fraction of a window shared with its neighbour.
        skip: ids of slides not to run (already done).

    Returns:
        Items with the slide's fields (``level`` is the working level), ``location`` (level 0),
        ``size`` and ``num_windows``, slide after slide, row-major within a slide.
    """
    skip = set(skip)
    items = []
    for slide in slides:
        if slide.slide_id in skip:
            continue
        windows, _ = slide_windows(slide.store, slide.working_shape, slide.downscale, roi, overlap)
        items += [
            {
                **slide.as_dict(),
                LOCATION: [y * slide.downscale, x * slide.downscale],
                SIZE: [roi, roi],
                NUM_WINDOWS: len(windows),
            }
            for y, x in windows
        ]
    return items


def finished_slides(output_dir: str, slides: Sequence[PreparedSlide], overwrite: bool = False) -> set[str]:
    """Ids of slides whose results are already complete in ``output_dir`` (none when overwriting)."""
    if overwrite:
        return set()
    root = Path(output_dir)
    return {
        s.slide_id
        for s in slides
        if (root / "summaries" / f"{s.slide_id}.json").is_file() and (root / "rle" / f"{s.slide_id}.txt").is_file()
    }


@dataclass
class ConfidenceCounts:
    """How decided a slide's prediction is, counted from its probability bands as they are written:
    the share of confident glomerulus pixels among the pixels not called background outright.

    Args:
        uncertain: probabilities in ``[low, high)`` are undecided; at or above ``high`` confident.
    """

    uncertain: tuple[float, float] = UNCERTAIN
    confident: int = 0
    undecided: int = 0

    def add(self, band: np.ndarray) -> None:
        """Count one band of ``uint8`` probabilities (255 = 1.0); each pixel once."""
        low, high = (round(value * 255) for value in self.uncertain)
        self.confident += int(np.count_nonzero(band >= high))
        self.undecided += int(np.count_nonzero((band >= low) & (band < high)))

    @property
    def value(self) -> float:
        """``confident / (confident + undecided)``, 1.0 for a slide with neither (confidently empty)."""
        total = self.confident + self.undecided
        return self.confident / total if total else 1.0


@dataclass
class _SlideState:
    """What the writer holds for a slide while its windows arrive."""

    slide: PreparedSlide
    probability: zarr.Array
    level0: Level0Mask
    polygons: PolygonTracer
    bar: tqdm
    started: float = field(default_factory=time.monotonic)
    error: str = ""
    confidence: ConfidenceCounts = field(default_factory=ConfidenceCounts)
    pending: deque[Future] = field(default_factory=deque)  # band steps not yet known to be done


class SlidePredictionWriter:
    """Ignite handler that stitches window predictions and writes each slide's results.

    Attach it to the inference evaluator; ``postprocessing`` must leave ``pred`` as a sigmoid
    probability. Stitching runs in a worker thread fed through a bounded queue, and what each
    final band goes through (the probability store, the level-0 mask, the polygons) in a thread
    per step, so they overlap with the network (on a GPU, or on the CPU cores the network leaves
    free) and with one another; a finished slide's outputs are written by another thread, so the
    next slide's windows go on.

    Args:
        output_dir: where results go.
        slides: this process's slides; those without a tissue window get an empty prediction.
        weights: window blend weights (:func:`scripts.stitching.blend_weights`).
        overlap: the windows' overlap.
        threshold: probability above which a pixel is glomerulus.
        truth: ``{slide_id: rle}`` to score against, or None.
        failed: ``{slide_id: reason}`` for slides that could not be prepared.
        listed: every slide id of the run in submission order (all ranks); default ``slides``.
        done: ids of slides already complete in ``output_dir`` (skipped; their results are reused).
        save_heatmap: also write the probabilities as a pyramidal 8-bit TIFF.
        min_area: polygons (and the glomerulus count) leave out specks smaller than this many
            level-0 pixels; the mask and the RLE keep every pixel.
    """

    def __init__(
        self,
        output_dir: str,
        slides: Sequence[PreparedSlide],
        weights: np.ndarray,
        overlap: float,
        threshold: float = 0.5,
        truth: dict[str, str] | None = None,
        failed: dict[str, str] | None = None,
        listed: Sequence[str] | None = None,
        done: Iterable[str] = (),
        save_heatmap: bool = False,
        min_area: float = 2000.0,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.slides = {slide.slide_id: slide for slide in slides}
        self.stitchers = SlideStitchers(weights, overlap, step=BAND)  # whole chunks of the probability store
        self.threshold = threshold
        self.truth = truth
        self.failed = dict(failed or {})
        self.listed = list(listed) if listed is not None else list(self.slides)
        self.done = set(done)
        self.save_heatmap = save_heatmap
        self.min_area = min_area
        self._states: dict[str, _SlideState] = {}
        self._finished: set[str] = set()
        self._work = self.output_dir / ".work"
        self._overall: tqdm | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_WINDOWS)
        self._worker: threading.Thread | None = None
        self._worker_error: BaseException | None = None
        # one slide at a time: its outputs, while the worker stitches the next slide's windows
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slide-finish")
        # what each final band goes through, a thread per step (bands in order within a step), so the steps
        # overlap one another and the stitching: the store and confidence, the level-0 mask, the polygons
        self._band_steps = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
            for name in ("band-store", "band-level0", "band-polygons")
        ]

    def attach(self, engine: Engine) -> None:
        """Collect windows after every iteration; finish the run when the evaluator completes."""
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def start(self, engine: Engine | None = None) -> None:
        """Open the overall progress bar (one step per slide) and start the worker thread."""
        self._overall = tqdm(total=len(set(self.slides) - self.done), desc="slides", unit="slide")
        self._worker = threading.Thread(target=self._drain, name="slide-writer", daemon=True)
        self._worker.start()

    def collect(self, engine: Engine) -> None:
        """Hand the windows of the last batch to the worker thread, so the network goes on at once.

        The queue is bounded: when the worker falls behind, the network waits instead of memory growing.
        """
        items = engine.state.output
        # one copy off the device for the whole batch (on a GPU each copy waits for the device), of plain
        # tensors (stacking MetaTensors costs their metadata's bookkeeping)
        predictions = (
            torch.stack([convert_to_tensor(item["pred"][0], track_meta=False).detach() for item in items])
            .float()
            .cpu()
            .numpy()
        )
        for item, prediction in zip(items, predictions, strict=True):
            self._queue.put((dict(item["image"].meta), prediction))

    def _drain(self) -> None:
        """Worker thread: stitch windows and write slides until told to stop (``None``)."""
        while (task := self._queue.get()) is not None:
            try:
                self._add_window(*task)
            except BaseException as error:  # surfaced by finish(), after the queue is drained
                self._worker_error = self._worker_error or error

    def _add_window(self, meta: dict, probability: np.ndarray) -> None:
        """Blend one window into its slide, extend its level-0 mask, finish it after its last window."""
        state = self._state(str(meta[SLIDE_ID]))
        state.bar.update(1)
        if meta[READ_ERROR]:
            state.error = (
                state.error or f"a window at {[int(v) for v in meta[LOCATION]]} could not be read ({meta[READ_ERROR]})"
            )
        _, bands, complete = self.stitchers.add(meta, probability)
        for row, band in bands:
            band = np.rint(band * 255).astype(np.uint8)
            self._wait_for_bands(state, PENDING_BAND_STEPS)
            store, level0, polygons = self._band_steps
            state.pending.append(store.submit(self._store_band, state, row, band))
            if not state.error:
                state.pending.append(level0.submit(state.level0.extend, band))
                state.pending.append(polygons.submit(state.polygons.add, band > self.threshold * 255))
        if complete:
            self._finisher.submit(self._finish_slide, state)

    @staticmethod
    def _store_band(state: _SlideState, row: int, band: np.ndarray) -> None:
        state.probability[row : row + len(band)] = band
        state.confidence.add(band)

    @staticmethod
    def _wait_for_bands(state: _SlideState, most: int) -> None:
        """Wait until at most ``most`` of a slide's band steps are pending; a failed step becomes the slide's error."""
        while len(state.pending) > most:
            error = state.pending.popleft().exception()
            if error is not None and not state.error:
                state.error = f"{type(error).__name__}: {error}"

    def _state(self, slide_id: str) -> _SlideState:
        if slide_id not in self._states:
            slide = self.slides[slide_id]
            probability = zarr.create_array(
                store=self._work / f"{slide_id}-probability.zarr",
                shape=slide.working_shape,
                chunks=(BAND, BAND),
                dtype=np.uint8,
                fill_value=0,
                overwrite=True,
            )
            level0 = Level0Mask(
                slide.shape,
                slide.downscale,
                self.threshold,
                self.output_dir / "masks" / f"{slide_id}.tiff",
                _preview_downsample(slide.shape),
            )
            polygons = PolygonTracer(slide.working_shape, scale=slide.downscale, min_area=self.min_area)
            bar = tqdm(desc=slide_id, unit="window", leave=False)
            self._states[slide_id] = _SlideState(slide, probability, level0, polygons, bar)
        return self._states[slide_id]

    def _finish_slide(self, state: _SlideState) -> None:
        slide = state.slide
        state.bar.close()
        self._wait_for_bands(state, 0)
        try:
            if state.error:
                raise RuntimeError(state.error)
            self._write_slide(state)
        except Exception as error:  # one slide's failure must not cost the others their results
            state.level0.abort()
            self.failed[slide.slide_id] = f"{type(error).__name__}: {error}"
            logger.error("%s failed (%s); the other slides go on", slide.slide_id, self.failed[slide.slide_id])
        finally:
            shutil.rmtree(self._work / f"{slide.slide_id}-probability.zarr", ignore_errors=True)
            self._states.pop(slide.slide_id, None)
            self._finished.add(slide.slide_id)
            if self._overall is not None:
                self._overall.update(1)

    def _write_slide(self, state: _SlideState) -> None:
        """Every result of one slide; the summary last, so a slide with a summary is complete."""
        slide, probability, name = state.slide, state.probability, state.slide.slide_id
        preview_downsample = state.level0.preview_downsample
        thumbnail, thumb_scale = read_thumbnail(slide.image, preview_downsample)
        if thumb_scale < preview_downsample:  # the slide has no level that coarse: pool it there (glass pads)
            factor = preview_downsample // thumb_scale
            thumbnail = block_reduce(thumbnail, (factor, factor, 1), np.mean, cval=255).astype(np.uint8)
        truth = self.truth.get(name) if self.truth is not None else None
        rle, counts, predicted_thumb, truth_thumb = state.level0.finish(truth, name)
        state.polygons.close()  # the rows of tiles left (a slide without windows: all)
        polygons = state.polygons.polygons
        write_annotations(self.output_dir / "glomeruli" / f"{name}.geojson", polygons)
        if self.save_heatmap:
            write_pyramid(
                self.output_dir / "heatmaps" / f"{name}.tiff",
                lambda y0, y1: probability[y0:y1],
                probability.shape,
                channels=1,
                compression="zlib",
            )
        outlines = [(truth_thumb, TRUTH_COLOUR)] if truth_thumb is not None else []
        write_png(
            self.output_dir / "previews" / f"{name}.png",
            outline_overlay(thumbnail, [*outlines, (predicted_thumb > 0, PRED_COLOUR)]),
        )
        write_text_atomic(self.output_dir / "rle" / f"{name}.txt", rle)
        tissue, _ = read_tissue(slide.store)
        summary = {
            "id": name,
            "width": slide.shape[1],
            "height": slide.shape[0],
            "glomeruli": len(polygons),
            "glomerulus_pixels": state.level0.area,
            "tissue_fraction": round(float(np.mean(tissue > 0)), 4),
            "seconds": round(time.monotonic() - state.started, 1),
            "rank": rank(),
        }
        summary["confidence"] = round(state.confidence.value, 4)
        if counts is not None:
            summary["dice"] = round(counts.dice, 6)
        write_text_atomic(self.output_dir / "summaries" / f"{name}.json", json.dumps(summary, indent=1))
        logger.info("%s: %d glomeruli in %.1f s", name, len(polygons), summary["seconds"])

    def finish(self, engine: Engine | None = None) -> None:
        """Finish the slides no window reached, then (on rank 0) assemble submission and metrics."""
        if self._overall is None:
            self.start()
        self._queue.put(None)
        self._worker.join()
        self._finisher.shutdown(wait=True)
        for step in self._band_steps:
            step.shutdown(wait=True)
        if self._worker_error is not None:
            raise self._worker_error
        for slide_id in self.slides:
            if slide_id not in self.done | self._finished | set(self.failed):
                self._finish_empty_slide(self._state(slide_id))
        self._overall.close()
        self._score_reused()
        report_problems(self.failed)
        barrier()
        if is_main_process():
            self._assemble()
        shutil.rmtree(self._work, ignore_errors=True)

    def _finish_empty_slide(self, state: _SlideState) -> None:
        """A slide without a tissue window: an empty prediction, its rows made a band at a time."""
        height, width = state.slide.working_shape
        for row in range(0, height, BAND):
            state.level0.extend(np.zeros((min(BAND, height - row), width), np.uint8))
        self._finish_slide(state)

    def _score_reused(self) -> None:
        """Dice for slides done by an earlier run, when this run has a truth to score them against."""
        for slide_id in self.done:
            path = self.output_dir / "summaries" / f"{slide_id}.json"
            summary = json.loads(path.read_text())
            if self.truth is not None and slide_id in self.truth and "dice" not in summary:
                rle = (self.output_dir / "rle" / f"{slide_id}.txt").read_text()
                summary["dice"] = round(rle_dice(rle, self.truth[slide_id], self.slides[slide_id].shape), 6)
                write_text_atomic(path, json.dumps(summary, indent=1))

    def _assemble(self) -> None:
        """``submission.csv`` from every listed slide's RLE file (empty where a slide failed), and metrics."""
        predictions, dice = {}, {}
        for slide_id in self.listed:
            rle, summary = (
                self.output_dir / "rle" / f"{slide_id}.txt",
                self.output_dir / "summaries" / f"{slide_id}.json",
            )
            complete = rle.is_file() and summary.is_file()
            predictions[slide_id] = rle.read_text() if complete else ""
            if complete and "dice" in (fields := json.loads(summary.read_text())):
                dice[slide_id] = fields["dice"]
        submission = write_submission(self.output_dir / "submission.csv", predictions)
        missing = [s for s in self.listed if not predictions[s] and s in self.failed]
        print(
            f"segmented {len(self.listed) - len(missing)} of {len(self.listed)} slide(s): {submission}; masks, "
            f"glomeruli (GeoJSON), previews and summaries in {self.output_dir}"
        )
        if self.truth is not None:
            mean = mean_dice(dice)
            rows = [(slide_id, f"{value:.4f}") for slide_id, value in dice.items()] + [("mean", f"{mean:.4f}")]
            path = write_csv(self.output_dir / "metrics.csv", ("id", "dice"), rows)
            print(f"Dice (Kaggle, level 0): mean {mean:.4f} over {len(dice)} slide(s); per slide in {path}")


def _preview_downsample(shape: tuple[int, int]) -> int:
    """Smallest power of two that brings the longest side to about ``PREVIEW_SIDE`` pixels."""
    downsample = 1
    while max(shape) / downsample > PREVIEW_SIDE:
        downsample *= 2
    return downsample
