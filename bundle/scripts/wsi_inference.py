"""Whole-slide inference as a stream of windows, routed to per-slide results; the one module of
the inference stream that starts threads.

MONAI's DataLoader reads the tissue windows (:class:`scripts.stitching.TissueWindows`) through
cuCIM in worker processes while the network runs on the previous batch; its sampler hands them
each slide's windows once the slide is prepared, while the later slides are still being prepared
(:meth:`scripts.workflow.SlideSet.ready`), so a folder of slides is one stream.
:class:`SlidePredictionWriter`, in a thread of its own, blends each window into its slide band by
band (:mod:`scripts.stitching`); each band of rows that becomes final then goes through three
steps, each in a thread of its own (so they overlap one another and the stitching): the
probabilities go into a chunked zarr array at the working resolution (bands aligned to its chunks,
so each chunk is written once), the next rows of the slide's level-0 mask are made on the blending
device (:mod:`scripts.level0`; another thread writes them into the mask TIFF as they come), and
the glomeruli of the rows of tiles they complete are traced (:class:`scripts.annotations.PolygonTracer`).
After the slide's last window another thread joins the RLE, scores it, and writes the slide's
files while the next slide's windows are stitched. Nothing ever holds a whole slide at level 0.
Every file is written by :class:`scripts.outputs.RunOutputs`, a slide's summary last (which marks
it done: a rerun skips it unless asked to overwrite); ``submission.csv`` (and, with a truth,
``metrics.csv``) are assembled from the per-slide files, by rank 0 under ``torchrun``.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import torch
import zarr
from ignite.engine import Engine, Events
from monai.utils import convert_to_tensor
from skimage.measure import block_reduce
from skimage.transform import resize
from tqdm import tqdm

from .annotations import PolygonTracer
from .distributed import barrier, is_main_process, rank
from .keys import LOCATION, READ_ERROR, SLIDE_ID
from .layout import report_problems
from .level0 import Level0Mask
from .metrics import mean_dice, rle_dice
from .outputs import RunOutputs
from .prepare import PreparedSlide, working_shape
from .scale import SlideScale
from .slides import read_thumbnail
from .stitching import SlideStitchers, TissueWindows
from .store import read_scale, read_tissue
from .workflow import SlideSet

__all__ = ["ConfidenceCounts", "SlidePredictionWriter", "finished_slides"]

logger = logging.getLogger(__name__)

BAND = 512  # chunk side of the working-resolution probabilities
PREVIEW_SIDE = 1024  # longest side of preview PNGs, in pixels (about)
QUEUE_WINDOWS = 64  # predicted windows waiting for the writer thread, at most
PENDING_BAND_STEPS = 8  # a slide's band steps queued or running at most (each holds its band) before the writer waits
UNCERTAIN = (0.2, 0.8)  # probabilities counted as undecided in a slide's confidence


def finished_slides(output_dir: str, slide_ids: Sequence[str], overwrite: bool = False) -> set[str]:
    """Ids of slides whose results are already complete in ``output_dir`` (none when overwriting)."""
    if overwrite:
        return set()
    outputs = RunOutputs(output_dir)
    return {slide_id for slide_id in slide_ids if outputs.is_complete(slide_id)}


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
    scale: SlideScale  # what preparation recorded: the mask TIFF and the summary state it
    probability: zarr.Array
    level0: Level0Mask
    polygons: PolygonTracer
    bar: tqdm
    started: float = field(default_factory=time.monotonic)
    error: str = ""
    mask: Future | None = None  # the mask TIFF, written as its rows are made
    confidence: ConfidenceCounts = field(default_factory=ConfidenceCounts)
    pending: deque[Future] = field(default_factory=deque)  # band steps not yet known to be done


class SlidePredictionWriter:
    """Ignite handler that stitches window predictions and writes each slide's results.

    Attach it to the inference evaluator; ``postprocessing`` must leave ``pred`` as a sigmoid
    probability. Stitching runs in a worker thread fed through a bounded queue, and what each
    final band goes through (the probability store, the level-0 mask, the polygons) in a thread
    per step, so they overlap with the network (on a GPU, or on the CPU cores the network leaves
    free) and with one another; a slide's mask TIFF is written by another thread as its rows are
    made, and a finished slide's outputs by another, so the next slide's windows go on.

    Args:
        output_dir: where results go (:class:`scripts.outputs.RunOutputs`).
        slides: the run's slides (this process's, possibly still being prepared: each is looked up
            when its first window arrives); those without a tissue window get an empty prediction,
            those ``windows`` skips are complete from an earlier run (their results are reused), and
            with a truth every slide is scored.
        windows: the windows the evaluator runs, and how they blend.
        threshold: probability above which a pixel is glomerulus.
        save_heatmap: also write the probabilities as a pyramidal 8-bit TIFF.
        min_area: polygons (and the glomerulus count) leave out specks smaller than this many
            working pixels; the mask and the RLE keep every pixel.
    """

    def __init__(
        self,
        output_dir: str,
        slides: SlideSet,
        windows: TissueWindows,
        threshold: float = 0.5,
        save_heatmap: bool = False,
        min_area: float = 500.0,
    ) -> None:
        self.outputs = RunOutputs(output_dir)
        self.slides = slides
        self.stitchers = SlideStitchers(windows, step=BAND)  # whole chunks of the probability store
        self.threshold = threshold
        self.truth = slides.truth
        self.failed: dict[str, str] = {}  # slides that failed while being segmented
        self.to_skip = windows.skip
        self.save_heatmap = save_heatmap
        self.min_area = min_area
        self._states: dict[str, _SlideState] = {}
        self._finished: set[str] = set()
        self._work = self.outputs.root / ".work"
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
        # a slide's mask TIFF reads its rows as they are made; two, so the next slide's need not wait
        self._mask_writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mask-tiff")

    def attach(self, engine: Engine) -> None:
        """Collect windows after every iteration; finish the run when the evaluator completes."""
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.finish)

    def start(self, engine: Engine | None = None) -> None:
        """Open the overall progress bar (one step per slide) and start the worker thread."""
        self._overall = tqdm(total=len(set(self.slides.ids) - self.to_skip), desc="slides", unit="slide")
        self._worker = threading.Thread(target=self._drain, name="slide-writer", daemon=True)
        self._worker.start()

    def collect(self, engine: Engine) -> None:
        """Hand the windows of the last batch to the worker thread, so the network goes on at once.

        The queue is bounded: when the worker falls behind, the network waits instead of memory growing.
        """
        items = engine.state.output
        # plain tensors (MetaTensors carry their metadata's bookkeeping through every operation), left on
        # their device: the windows are blended there, and only the blended bands come off it
        for item in items:
            prediction = convert_to_tensor(item["pred"][0], track_meta=False).detach().float()
            self._queue.put((dict(item["image"].meta), prediction))

    def _drain(self) -> None:
        """Worker thread: stitch windows and write slides until told to stop (``None``)."""
        while (task := self._queue.get()) is not None:
            try:
                self._add_window(*task)
            except BaseException as error:  # surfaced by finish(), after the queue is drained
                self._worker_error = self._worker_error or error

    def _add_window(self, meta: dict, probability: torch.Tensor) -> None:
        """Blend one window into its slide, extend its level-0 mask, finish it after its last window."""
        state = self._state(str(meta[SLIDE_ID]))
        state.bar.update(1)
        if meta[READ_ERROR]:
            state.error = (
                state.error or f"a window at {[int(v) for v in meta[LOCATION]]} could not be read ({meta[READ_ERROR]})"
            )
        _, bands, complete = self.stitchers.add(meta, probability)
        for row, band in bands:
            band = torch.round(band * 255).to(torch.uint8)  # as np.rint: halves to even
            host = band.cpu().numpy()  # the level-0 mask is made on the blending device, the rest on the host
            self._wait_for_bands(state, PENDING_BAND_STEPS)
            store, level0, polygons = self._band_steps
            state.pending.append(store.submit(self._store_band, state, row, host))
            if not state.error:
                state.pending.append(level0.submit(state.level0.extend, band))
                state.pending.append(polygons.submit(state.polygons.add, host > self.threshold * 255))
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
            slide = self.slides.prepared[slide_id]
            probability = zarr.create_array(
                store=self._work / f"{slide_id}-probability.zarr",
                shape=slide.working_shape,
                chunks=(BAND, BAND),
                dtype=np.uint8,
                fill_value=0,
                overwrite=True,
            )
            shape, scale = slide.level0_shape, slide.level0_scale
            level0 = Level0Mask(shape, scale, self.threshold, _preview_downsample(shape))
            # the same physical size on every slide, whatever its own scale: working pixels, in level-0 pixels
            polygons = PolygonTracer(slide.working_shape, scale=scale, min_area=self.min_area * scale**2)
            bar = tqdm(desc=slide_id, unit="window", leave=False)
            state = _SlideState(slide, read_scale(slide.store), probability, level0, polygons, bar)
            state.mask = self._mask_writer.submit(self._write_mask, state)
            self._states[slide_id] = state
        return self._states[slide_id]

    def _write_mask(self, state: _SlideState) -> None:
        """The slide's mask TIFF, its rows read as the level-0 mask makes them."""
        try:
            slide = state.slide
            self.outputs.write_mask(slide.slide_id, state.level0.read_rows, slide.level0_shape, state.scale.mpp)
        except BaseException:
            state.level0.abort()  # what makes the rows must not wait for a reader that is gone
            raise

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
            wait([state.mask])  # an abandoned TIFF's temporary file is gone before the slide counts as finished
            shutil.rmtree(self._work / f"{slide.slide_id}-probability.zarr", ignore_errors=True)
            self._states.pop(slide.slide_id, None)
            self._finished.add(slide.slide_id)
            if self._overall is not None:
                self._overall.update(1)

    def _write_slide(self, state: _SlideState) -> None:
        """Every result of one slide; the summary last, so a slide with a summary is complete."""
        slide, probability, name = state.slide, state.probability, state.slide.slide_id
        truth = self.truth.get(name) if self.truth is not None else None
        mask = state.level0.finish(truth, name)
        state.mask.result()  # the mask TIFF is complete (or its error is the slide's)
        state.polygons.close()  # the rows of tiles left (a slide without windows: all)
        polygons = state.polygons.polygons
        self.outputs.write_glomeruli(name, polygons)
        if self.save_heatmap:
            self.outputs.write_heatmap(name, lambda y0, y1: probability[y0:y1], probability.shape)
        thumbnail = _thumbnail(slide, state.level0.preview_downsample)
        self.outputs.write_preview(name, thumbnail, mask.prediction_preview, mask.truth_preview)
        self.outputs.write_rle(name, mask.rle)
        tissue, _ = read_tissue(slide.store)
        scale = state.scale
        summary = {
            "id": name,
            "width": slide.level0_shape[1],
            "height": slide.level0_shape[0],
            "mpp": scale.mpp,  # microns per level-0 pixel, None where nothing stated it
            "mpp_source": scale.source,
            "downscale": round(slide.level0_scale, 4),
            "glomeruli": len(polygons),
            "glomerulus_pixels": state.level0.area,
            "tissue_fraction": round(float(np.mean(tissue > 0)), 4),
            "seconds": round(time.monotonic() - state.started, 1),
            "rank": rank(),
            "confidence": round(state.confidence.value, 4),
        }
        if mask.counts is not None:
            summary["dice"] = round(mask.counts.dice, 6)
        self.outputs.write_summary(name, summary)
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
            for state in list(self._states.values()):  # their mask TIFFs would wait for rows for ever
                state.level0.abort()
            self._mask_writer.shutdown(wait=True)
            raise self._worker_error
        for slide in self.slides.ready():  # every slide is prepared or failed by now
            if slide.slide_id not in self.to_skip | self._finished | set(self.failed):
                self._finish_empty_slide(self._state(slide.slide_id))
        self._mask_writer.shutdown(wait=True)
        self._overall.close()
        self._score_reused()
        report_problems(self._all_failed())
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

    def _all_failed(self) -> dict[str, str]:
        """``{slide_id: reason}`` of every slide of the run that failed, in preparation or since."""
        return {**self.slides.failed, **self.failed}

    def _score_reused(self) -> None:
        """Dice for slides done by an earlier run, when this run has a truth to score them against."""
        for slide_id in self.to_skip & set(self.slides.prepared):
            summary = self.outputs.read_summary(slide_id)
            if self.truth is not None and slide_id in self.truth and "dice" not in summary:
                rle = self.outputs.read_rle(slide_id)
                shape = self.slides.prepared[slide_id].level0_shape
                summary["dice"] = round(rle_dice(rle, self.truth[slide_id], shape), 6)
                self.outputs.write_summary(slide_id, summary)

    def _assemble(self) -> None:
        """``submission.csv`` from every listed slide's RLE file (empty where a slide failed), and metrics."""
        predictions, dice, failed, listed = {}, {}, self._all_failed(), self.slides.listed
        for slide_id in listed:
            complete = self.outputs.is_complete(slide_id)
            predictions[slide_id] = self.outputs.read_rle(slide_id) if complete else ""
            if complete and "dice" in (fields := self.outputs.read_summary(slide_id)):
                dice[slide_id] = fields["dice"]
        submission = self.outputs.write_submission(predictions)
        missing = [s for s in listed if not predictions[s] and s in failed]
        print(
            f"segmented {len(listed) - len(missing)} of {len(listed)} slide(s): {submission}; masks, "
            f"glomeruli (GeoJSON), previews and summaries in {self.outputs.root}"
        )
        if self.truth is not None:
            mean = mean_dice(dice)
            path = self.outputs.write_metrics(dice, mean)
            print(f"Dice (Kaggle, level 0): mean {mean:.4f} over {len(dice)} slide(s); per slide in {path}")


def _thumbnail(slide: PreparedSlide, downsample: int) -> np.ndarray:
    """The slide's RGB thumbnail at ``downsample`` level-0 pixels of the slide file per pixel (the preview's scale)."""
    image_scale = slide.level0_scale / slide.downscale  # the slide file's level-0 pixels per image pixel
    if image_scale != 1:  # a resampled copy: its thumbnail brought to the preview's size
        thumbnail, _ = read_thumbnail(slide.image, max(int(downsample / image_scale), 1))
        preview = working_shape(slide.level0_shape, downsample)
        return (resize(thumbnail, (*preview, 3), preserve_range=True) + 0.5).astype(np.uint8)
    thumbnail, scale = read_thumbnail(slide.image, downsample)
    if scale < downsample:  # the slide has no level that coarse: pool it there (glass pads)
        factor = downsample // scale
        thumbnail = block_reduce(thumbnail, (factor, factor, 1), np.mean, cval=255).astype(np.uint8)
    return thumbnail


def _preview_downsample(shape: tuple[int, int]) -> int:
    """Smallest power of two that brings the longest side to about ``PREVIEW_SIDE`` pixels."""
    downsample = 1
    while max(shape) / downsample > PREVIEW_SIDE:
        downsample *= 2
    return downsample
