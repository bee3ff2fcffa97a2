"""Blending overlapping window predictions into a slide, one band of rows at a time.

Windows tile a slide at the working resolution in row-major order. Each window's probabilities
are weighted (a Gaussian, or a box that keeps only the window's centre) and added to a buffer of a
few window-heights of rows; rows that no later window can reach are normalised and handed on, so
memory grows with the window size and the slide width, never with the slide.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from monai.data.utils import compute_importance_map
from monai.utils import BlendMode

from .keys import DOWNSCALE, LOCATION, NUM_WINDOWS, SHAPE, SLIDE_ID, STORE
from .prepare import working_shape
from .store import read_tissue

__all__ = ["BandStitcher", "SlideStitchers", "blend_weights", "slide_windows", "window_starts"]

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


def slide_windows(
    store: str, shape: tuple[int, int], downscale: int, roi: int, overlap: float
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
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
        ``(run, skipped)``: ``(y, x)`` window corners at the working resolution, row-major.
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
    return run, skipped


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
    """

    def __init__(
        self, height: int, width: int, weights: np.ndarray, skipped: list[tuple[int, int]] = (), step: int = 1
    ) -> None:
        self.height, self.width = height, width
        self.weights = weights
        self.roi = weights.shape[0]
        self.step = step
        self._skipped = list(skipped)
        self._next_skipped = 0
        self._top = 0  # first slide row not yet released
        # a ring of rows: slide row r lives in buffer row r % len(buffer), so releasing moves nothing.
        # It holds the rows held back for alignment (fewer than step) and a window below them, and
        # is a whole number of steps, so an aligned band never wraps around its end.
        rows = -(-(self.roi + step) // step) * step
        self._sum = np.zeros((rows, width), np.float32)
        self._weight = np.zeros((rows, width), np.float32)

    def add(self, probability: np.ndarray, y: int, x: int) -> Iterator[tuple[int, np.ndarray]]:
        """Add a window's ``(roi, roi)`` probabilities at working ``(y, x)``; yield rows now final.

        Yields:
            ``(first row, (rows, width) float32 probabilities)``.
        """
        while self._next_skipped < len(self._skipped) and self._skipped[self._next_skipped] < (y, x):
            yield from self._add_window(None, *self._skipped[self._next_skipped])
            self._next_skipped += 1
        yield from self._add_window(probability, y, x)

    def close(self) -> Iterator[tuple[int, np.ndarray]]:
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

    def _add_window(self, probability: np.ndarray | None, y: int, x: int) -> Iterator[tuple[int, np.ndarray]]:
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

    def _release(self, until: int) -> Iterator[tuple[int, np.ndarray]]:
        """Hand on rows ``[top, until)`` (``until`` rounded down to a step, unless it is the slide's
        end) and clear their place in the ring."""
        until = self.height if until >= self.height else until // self.step * self.step
        for row, start, count in self._segments(self._top, until):
            total, weight = self._sum[start : start + count], self._weight[start : start + count]
            yield row, np.divide(total, weight, out=np.zeros_like(weight), where=weight > 0)
            total[:] = 0
            weight[:] = 0
        self._top = max(self._top, until)


class SlideStitchers:
    """One :class:`BandStitcher` per slide, fed window by window as a run's batches arrive.

    Args:
        weights: blend weights shared by every window.
        overlap: the windows' overlap (to rebuild each slide's grid of skipped windows).
        step: rows are released in bands aligned to multiples of ``step`` (see :class:`BandStitcher`).
    """

    def __init__(self, weights: np.ndarray, overlap: float, step: int = 1) -> None:
        self.weights = weights
        self.overlap = overlap
        self.step = step
        self._open: dict[str, tuple[BandStitcher, int]] = {}

    def add(self, meta: dict, probability: np.ndarray) -> tuple[int, list[tuple[int, np.ndarray]], bool]:
        """Add one window of a slide.

        Args:
            meta: the window's image metadata (``slide_id``, ``store``, ``shape``, ``downscale``,
                ``location``, ``num_windows``), as :class:`scripts.datasets.SlideRegionDataset` gives it.
            probability: ``(roi, roi)`` probabilities.

        Returns:
            ``(width, bands, complete)``: the slide's width at the working resolution, the rows
            released by this window (all remaining rows when it was the slide's last window), and
            whether it was.
        """
        slide_id, scale = str(meta[SLIDE_ID]), int(meta[DOWNSCALE])
        shape = working_shape(meta[SHAPE], scale)
        y, x = (int(v) // scale for v in meta[LOCATION])
        if slide_id not in self._open:
            _, skipped = slide_windows(str(meta[STORE]), shape, scale, len(self.weights), self.overlap)
            self._open[slide_id] = (BandStitcher(*shape, self.weights, skipped, self.step), 0)
        stitcher, seen = self._open[slide_id]
        num_windows = int(meta[NUM_WINDOWS])
        bands = list(stitcher.add(probability, y, x))
        if seen + 1 < num_windows:
            self._open[slide_id] = (stitcher, seen + 1)
            return shape[1], bands, False
        self._open.pop(slide_id, None)
        return shape[1], bands + list(stitcher.close()), True
