"""Blending overlapping window predictions into a slide, one band of rows at a time.

Windows tile a slide at the working resolution in row-major order. Each window's probabilities
are weighted (a Gaussian, or a box that keeps only the window's centre) and added to a buffer of a
few window-heights of rows; rows that no later window can reach are normalised and handed on, so
memory grows with the window size and the slide width, never with the slide. The blending is torch
code on the device the probabilities come from: on a GPU the windows never leave it, only their
blended bands do (as ``uint8``; the level-0 mask is made from them there too, :mod:`scripts.level0`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from monai.data.utils import compute_importance_map
from monai.utils import BlendMode

from .keys import LOCATION, SIZE, SLIDE_ID
from .prepare import PreparedSlide
from .store import read_tissue

__all__ = [
    "BandStitcher",
    "SlideStitchers",
    "SlideWindows",
    "TissueWindows",
    "blend_weights",
    "slide_windows",
    "window_starts",
]

BLENDS = ("gaussian", "centre")


def window_starts(length: int, roi: int, overlap: float) -> list[int]:
    """Start offsets of windows of side ``roi`` covering ``[0, length)`` with the given overlap.

    The windows reach ``margin = roi * overlap / 2`` past both ends (the slide is mirrored there
    when read), so the slide's own border is never a window border and gets the same treatment
    as the inside; otherwise MONAI's layout: a fixed stride, the last window flush with the end.
    """
    stride = max(int(round(roi * (1 - overlap))), 1)
    margin = int(round(roi * overlap / 2))
    span = length + 2 * margin
    if span <= roi:
        return [-margin]
    return [start - margin for start in range(0, span - roi, stride)] + [length + margin - roi]


def blend_weights(roi: int, blend: str = "gaussian", overlap: float = 0.25, sigma_scale: float = 0.125) -> np.ndarray:
    """Per-pixel weight of a window's prediction.

    Args:
        roi: window side.
        blend: ``"gaussian"`` (MONAI's importance map: the centre counts most) or ``"centre"``
            (only the central ``roi * (1 - overlap)`` square counts; the margin is context only).
        overlap: window overlap, which sets the centre square for ``"centre"``.
        sigma_scale: Gaussian sigma as a fraction of ``roi``.

    Returns:
        ``(roi, roi)`` ``float32`` weights, all positive (so a slide border that only a margin
        reaches still gets a prediction).
    """
    if blend == "gaussian":
        weights = compute_importance_map((roi, roi), mode=BlendMode.GAUSSIAN, sigma_scale=sigma_scale, device="cpu")
        return weights.numpy().astype(np.float32)
    if blend == "centre":
        margin = int(round(roi * overlap / 2))
        weights = np.full((roi, roi), 1e-3, np.float32)
        weights[margin : roi - margin, margin : roi - margin] = 1.0
        return weights
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


class SlideWindows(NamedTuple):
    """A slide's window grid at the working resolution, ``(y, x)`` window corners, row-major."""

    run: list[tuple[int, int]]  # windows holding tissue
    skipped: list[tuple[int, int]]  # background windows, never read (they count as predicting 0)


def slide_windows(store: str, shape: tuple[int, int], downscale: int, roi: int, overlap: float) -> SlideWindows:
    """A slide's window grid split into the windows to run and the background windows to skip.

    A window runs when its area holds a tissue pixel of the slide's tissue mask (a summed-area
    table makes each test one lookup).

    Args:
        store: the slide's zarr store (``tissue`` array, ``tissue_downsample`` attribute).
        shape: the slide's ``(height, width)`` at the working resolution.
        downscale: level-0 pixels per working pixel.
        roi: window side.
        overlap: window overlap.

    Returns:
        The windows to run and the background windows to skip.
    """
    tissue, tissue_downsample = read_tissue(store)
    scale = downscale / tissue_downsample  # tissue pixels per working pixel
    table = np.pad(np.cumsum(np.cumsum(tissue.astype(np.int64), 0), 1), ((1, 0), (1, 0)))

    def span(start: int, limit: int) -> tuple[int, int]:
        low = min(max(int(np.floor(start * scale)), 0), limit - 1)
        return low, max(min(int(np.ceil((start + roi) * scale)), limit), low + 1)

    run, skipped = [], []
    for y in window_starts(shape[0], roi, overlap):
        r0, r1 = span(y, tissue.shape[0])
        for x in window_starts(shape[1], roi, overlap):
            c0, c1 = span(x, tissue.shape[1])
            has_tissue = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0] > 0
            (run if has_tissue else skipped).append((y, x))
    return SlideWindows(run, skipped)


class TissueWindows:
    """The windows of a run's slides, computed once per slide: the items that the dataset reads and
    the grid that the stitchers blend each slide's windows into (with the blend weights) are the same grid.

    Slides are given up front (``slides``: :attr:`datalist` lists their windows) or as they are
    prepared (:meth:`stream`, the DataLoader's sampler of a run that segments one slide while the
    next ones are prepared).

    Args:
        slides: prepared slides known now.
        roi: window side at the working resolution.
        overlap: fraction of a window shared with its neighbour.
        blend: how overlapping windows are blended (:func:`blend_weights`).
        skip: ids of slides not to run (already done).
    """

    def __init__(
        self,
        slides: Sequence[PreparedSlide],
        roi: int,
        overlap: float,
        blend: str = "gaussian",
        skip: Iterable[str] = (),
    ) -> None:
        self.roi, self.overlap = roi, overlap
        self.weights = blend_weights(roi, blend, overlap)
        self.skip = set(skip)
        self.slides: dict[str, PreparedSlide] = {}
        self.grids: dict[str, SlideWindows] = {}
        for slide in slides:
            self._add(slide)

    def __len__(self) -> int:
        """Windows to run in the slides known so far."""
        return sum(len(grid.run) for grid in self.grids.values())

    @property
    def datalist(self) -> list[dict]:
        """Items for :class:`scripts.datasets.SlideRegionDataset` of the slides known so far: the slide's
        fields (``level`` is the working level), the window's ``location`` (level 0) and ``size``,
        slide after slide, row-major."""
        return [item for slide_id in self.slides for item in self._items(slide_id)]

    def stream(self, slides: Iterable[PreparedSlide]) -> Iterator[dict]:
        """The items of each slide as it comes (a slide to skip adds none); for a DataLoader's sampler,
        with a dataset that reads the item it is given (:class:`scripts.datasets.StreamedItems`).

        Args:
            slides: prepared slides, each yielded once it is prepared (:meth:`scripts.workflow.SlideSet.ready`).
        """
        for slide in slides:
            if self._add(slide):
                yield from self._items(slide.slide_id)

    def _add(self, slide: PreparedSlide) -> bool:
        """Know a slide and its grid (before any of its windows reaches a stitcher); False for one to skip."""
        if slide.slide_id in self.skip:
            return False
        grid = slide_windows(slide.store, slide.working_shape, slide.downscale, self.roi, self.overlap)
        self.grids[slide.slide_id] = grid
        self.slides[slide.slide_id] = slide
        return True

    def _items(self, slide_id: str) -> Iterator[dict]:
        slide = self.slides[slide_id]
        for y, x in self.grids[slide_id].run:
            yield {**slide.as_dict(), LOCATION: [y * slide.downscale, x * slide.downscale], SIZE: [self.roi, self.roi]}


class BandStitcher:
    """Weighted average of overlapping windows, released band by band.

    Windows must arrive in row-major order (as :func:`slide_windows` lists them). Rows above the
    latest window's top are final: :meth:`add` yields them as they become final and :meth:`close`
    yields the rest. Skipped background windows count as windows that predicted 0, so a run
    window's margin next to glass is blended with that certainty instead of standing alone.

    Args:
        height: slide height at the working resolution.
        width: slide width at the working resolution.
        weights: ``(roi, roi)`` blend weights (:func:`blend_weights`).
        skipped: the background windows that are not run, row-major.
        step: rows are released in bands that start and end on multiples of ``step`` (the last
            band ends with the slide): a zarr store chunked by ``step`` rows is then written a
            whole chunk at a time, where a band across a chunk boundary makes zarr read, decode
            and encode the chunk again for each part.
        device: where the windows are blended (the device they are predicted on).
    """

    def __init__(
        self,
        height: int,
        width: int,
        weights: np.ndarray,
        skipped: list[tuple[int, int]] = (),
        step: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.height, self.width = height, width
        self.device = torch.device(device)
        self.weights = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        self.roi = weights.shape[0]
        self.step = step
        self._skipped = list(skipped)
        self._next_skipped = 0
        self._top = 0  # first slide row not yet released
        # a ring of rows: slide row r lives in buffer row r % len(buffer), so releasing moves nothing.
        # It holds the rows held back for alignment (fewer than step) and a window below them, and
        # is a whole number of steps, so an aligned band never wraps around its end.
        rows = -(-(self.roi + step) // step) * step
        self._sum = torch.zeros((rows, width), dtype=torch.float32, device=self.device)
        self._weight = torch.zeros((rows, width), dtype=torch.float32, device=self.device)

    def add(self, probability: torch.Tensor | np.ndarray, y: int, x: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Add a window's ``(roi, roi)`` probabilities at working ``(y, x)``; yield rows now final.

        Yields:
            ``(first row, (rows, width) float32 probabilities)`` on the stitcher's device.
        """
        probability = torch.as_tensor(probability, dtype=torch.float32, device=self.device)
        while self._next_skipped < len(self._skipped) and self._skipped[self._next_skipped] < (y, x):
            yield from self._add_window(None, *self._skipped[self._next_skipped])
            self._next_skipped += 1
        yield from self._add_window(probability, y, x)

    def close(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield every row not yet released, down to the slide's last row."""
        for y, x in self._skipped[self._next_skipped :]:
            yield from self._add_window(None, y, x)
        self._next_skipped = len(self._skipped)
        yield from self._release(self.height)

    def _segments(self, first: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(slide row, buffer row, count)`` pieces of slide rows ``[first, stop)`` in the ring."""
        size = len(self._sum)
        while first < stop:
            start = first % size
            count = min(stop - first, size - start)
            yield first, start, count
            first += count

    def _add_window(self, probability: torch.Tensor | None, y: int, x: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Release the rows above ``y``, then add the window (``None``: a skipped one, predicting 0)."""
        if max(y, 0) < self._top:
            raise ValueError(f"windows must come in row order: row {y} after row {self._top}")
        yield from self._release(y)
        # the part of the window inside the slide (windows reach past the slide's edges)
        r0, c0 = max(-y, 0), max(-x, 0)
        r1, c1 = min(self.roi, self.height - y), min(self.roi, self.width - x)
        for row, start, count in self._segments(y + r0, y + r1):
            offset = row - y
            weights = self.weights[offset : offset + count, c0:c1]
            if probability is not None:
                self._sum[start : start + count, x + c0 : x + c1] += (
                    probability[offset : offset + count, c0:c1] * weights
                )
            self._weight[start : start + count, x + c0 : x + c1] += weights

    def _release(self, until: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Hand on rows ``[top, until)`` (``until`` rounded down to a step, unless it is the slide's
        end) and clear their place in the ring."""
        until = self.height if until >= self.height else until // self.step * self.step
        for row, start, count in self._segments(self._top, until):
            total, weight = self._sum[start : start + count], self._weight[start : start + count]
            # rows no window reached (weight 0) are 0; the division there is never used
            yield row, torch.where(weight > 0, total / weight, 0.0)
            total.zero_()
            weight.zero_()
        self._top = max(self._top, until)


class SlideStitchers:
    """One :class:`BandStitcher` per slide, fed window by window as a run's batches arrive.

    Args:
        windows: the run's windows (each slide's windows to expect, the skipped ones, the blend weights).
        step: rows are released in bands aligned to multiples of ``step`` (see :class:`BandStitcher`).
    """

    def __init__(self, windows: TissueWindows, step: int = 1) -> None:
        self.windows = windows
        self.step = step
        self._open: dict[str, tuple[BandStitcher, int]] = {}

    def add(
        self, meta: dict, probability: torch.Tensor | np.ndarray
    ) -> tuple[int, list[tuple[int, torch.Tensor]], bool]:
        """Add one window of a slide.

        Args:
            meta: the window's image metadata (``slide_id``, ``location``), as
                :class:`scripts.datasets.SlideRegionDataset` gives it.
            probability: ``(roi, roi)`` probabilities; a slide is blended on the device of its first window's.

        Returns:
            ``(width, bands, complete)``: the slide's width at the working resolution, the rows
            released by this window (all remaining rows when it was the slide's last window; tensors
            on the blending device), and whether it was.
        """
        slide_id = str(meta[SLIDE_ID])
        slide, grid = self.windows.slides[slide_id], self.windows.grids[slide_id]
        height, width = slide.working_shape
        y, x = (int(v) // slide.downscale for v in meta[LOCATION])
        if slide_id not in self._open:
            device = probability.device if isinstance(probability, torch.Tensor) else "cpu"
            stitcher = BandStitcher(height, width, self.windows.weights, grid.skipped, self.step, device)
            self._open[slide_id] = (stitcher, 0)
        stitcher, seen = self._open[slide_id]
        bands = list(stitcher.add(probability, y, x))
        if seen + 1 < len(grid.run):
            self._open[slide_id] = (stitcher, seen + 1)
            return width, bands, False
        self._open.pop(slide_id, None)
        return width, bands + list(stitcher.close()), True
