"""A slide's level-0 mask, built while its working-resolution probabilities are still arriving.

Each time rows of a slide's probabilities become final, the rows of the level-0 mask that depend
on them only are made (bilinear upsampling, then the threshold, in torch on the device the rows
were blended on). Only blocks around pixels above the threshold are made at all (bilinear values
never exceed their neighbours'), a small part of a slide. Their runs go straight into the Kaggle
RLE (column-major, joined across bands when the slide is complete) and the blocks are held for the
reader of :meth:`Level0Mask.read_rows` (the mask TIFF's writer, which :mod:`scripts.wsi_inference`
runs in a thread of its own as rows come); making rows waits when that reader falls two tiles behind.
The level-0 mask itself is never stored.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import DiceCounts
from .prepare import working_shape
from .pyramid import pool_mask
from .resample import bilinear_neighbours, level0_start
from .rle import BlockRunEncoder, decode_columns, parse_rle, runs_to_rle

__all__ = ["Level0Mask", "Level0Result", "bilinear_block", "upsample_threshold"]

HELD_ROWS = 1024  # level-0 rows made but not yet read at which making rows waits (the TIFF reads 512 at a time)
COLUMNS = 1024  # level-0 columns per step when a truth is decoded for the preview
GROUP_GAP = 32  # working columns of glass between two groups of columns that are upsampled apart


def upsample_threshold(
    source: torch.Tensor | np.ndarray, rows: slice, scale: float, threshold: float, origin: int = 0
) -> list[tuple[np.ndarray, int, int]]:
    """Level-0 mask of some rows of a block of working-resolution probabilities, where it can be set.

    The result equals the same pixels of a bilinear upsampling (``align_corners=False``) of the
    whole slide, provided ``source`` holds one row of context above and below ``rows`` (unless
    they are the slide's first or last row) and the slide's full width; every pixel outside the
    returned blocks is 0. Only the columns near pixels above the threshold are upsampled, in
    groups (glomeruli far apart in a band do not make the glass between them a block). The work
    is torch's on ``source``'s device: from a GPU only the blocks of the mask come to the host.

    Args:
        source: ``(h, w)`` ``uint8`` probabilities (0-255).
        rows: the source rows to turn into level-0 rows.
        scale: level-0 pixels per working pixel; a slide resampled between two pyramid levels has a
            fractional one (:mod:`scripts.resample`).
        threshold: probability threshold (0-1).
        origin: the working row ``source[0]`` holds (it places level-0 rows when ``scale`` is fractional).

    Returns:
        ``(block, top, left)`` per group: a ``bool`` block of the level-0 mask and its first row
        (counted from the level-0 row of ``rows.start``) and column; none when no pixel can be set.
    """
    source = torch.as_tensor(source)
    first = max(rows.start - 1, 0)  # a hot context row reaches into the rows next to it
    hot = source[first : rows.stop + 1] > threshold * 255
    whole = float(scale).is_integer()
    row0 = level0_start(origin + rows.start, scale)
    blocks = []
    for left, right in _column_groups(hot.any(dim=0).cpu().numpy()):
        # output pixels that can pass the threshold: within one source pixel of a hot one
        hot_rows = torch.nonzero(hot[:, left:right].any(dim=1))[[0, -1], 0].tolist()
        top, bottom = max(hot_rows[0] + first - 1, rows.start), min(hot_rows[1] + first + 2, rows.stop)
        if top >= bottom:
            continue
        # plus one more pixel of context for the interpolation itself
        r0, r1 = max(top - 1, 0), min(bottom + 1, source.shape[0])
        c0, c1 = max(left - 1, 0), min(right + 1, source.shape[1])
        near = source[r0:r1, c0:c1].float() / 255
        y0, y1 = level0_start(origin + top, scale), level0_start(origin + bottom, scale)
        x0, x1 = level0_start(left, scale), level0_start(right, scale)
        if whole:
            step = int(scale)
            block = near
            if step > 1:
                block = F.interpolate(block[None, None], scale_factor=step, mode="bilinear", align_corners=False)[0, 0]
            dy, dx = y0 - (origin + r0) * step, x0 - c0 * step  # where the kept pixels start in the block
            kept = block[dy : dy + y1 - y0, dx : dx + x1 - x0]
        else:
            kept = bilinear_block(near, (origin + r0, c0), (y0, y1), (x0, x1), scale)
        blocks.append(((kept > threshold).cpu().numpy(), y0 - row0, x0))
    return blocks


def bilinear_block(
    source: torch.Tensor, origin: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int], factor: float
) -> torch.Tensor:
    """Level-0 pixels ``rows x cols`` of the bilinear upsampling of a whole slide's probabilities.

    Args:
        source: float probabilities of a block of working pixels holding every one the requested
            level-0 pixels depend on: those :func:`level0_start` assigns them to and one more on each
            side, where the slide has it; a side of the block that stops short of that is the slide's edge.
        origin: the working ``(row, column)`` of ``source[0, 0]``.
        rows: level-0 rows ``[start, stop)``.
        cols: level-0 columns ``[start, stop)``.
        factor: level-0 pixels per working pixel.

    Returns:
        The ``float32`` block on ``source``'s device: the same pixels as
        ``F.interpolate(slide, scale_factor=factor, mode="bilinear")`` of the whole slide.
    """

    def on_device(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values).to(source.device)

    top, bottom, row_weight = map(on_device, bilinear_neighbours(*rows, factor, origin[0] + source.shape[0]))
    left, right, col_weight = map(on_device, bilinear_neighbours(*cols, factor, origin[1] + source.shape[1]))
    top, bottom, left, right = top - origin[0], bottom - origin[0], left - origin[1], right - origin[1]
    # rows first, then columns: each output pixel mixes four neighbours with separable weights
    mixed = source[top] * (1 - row_weight)[:, None] + source[bottom] * row_weight[:, None]
    return mixed[:, left] * (1 - col_weight) + mixed[:, right] * col_weight


def _column_groups(hot_columns: np.ndarray, gap: int = GROUP_GAP) -> list[tuple[int, int]]:
    """``[left, right)`` column ranges holding every column within one of a hot one, ranges less
    than ``gap`` apart joined (each range costs an upsampling call)."""
    near = np.flatnonzero(np.convolve(hot_columns, np.ones(3, bool), mode="same"))
    if not len(near):
        return []
    breaks = np.flatnonzero(np.diff(near) > gap)
    lefts, rights = near[np.r_[0, breaks + 1]], near[np.r_[breaks, len(near) - 1]] + 1
    return list(zip(lefts.tolist(), rights.tolist(), strict=True))


class _HeldRows:
    """Level-0 rows on their way from the thread that makes them to the thread that reads them (the
    mask TIFF's writer): the blocks of foreground made so far, kept until the reader has read past them.

    Args:
        shape: the slide's level-0 ``(height, width)``.
        limit: rows made but not yet read at which the writer waits; at least the rows of one
            read, or both sides would wait for each other.
    """

    def __init__(self, shape: tuple[int, int], limit: int = HELD_ROWS) -> None:
        self.shape, self.limit = shape, limit
        self._blocks: list[tuple[int, int, np.ndarray]] = []  # (top, left, bool block)
        self._made = 0  # rows made (final)
        self._read = 0  # rows the reader has read
        self._aborted = False
        self._changed = threading.Condition()

    def put(self, made: int, blocks: list[tuple[int, int, np.ndarray]]) -> None:
        """Hand on rows ``[.., made)``, whose foreground is ``blocks``; wait while too many rows are held."""
        with self._changed:
            self._changed.wait_for(lambda: self._aborted or self._made - self._read <= self.limit)
            if self._aborted:
                return
            self._blocks += blocks
            self._made = made
            self._changed.notify_all()

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` as ``uint8`` 0/1 once they are made (reads go top to bottom)."""
        with self._changed:
            self._changed.wait_for(lambda: self._aborted or self._made >= min(y1, self.shape[0]))
            if self._aborted:
                raise RuntimeError("slide abandoned")
            band = np.zeros((y1 - y0, self.shape[1]), np.uint8)
            kept = []
            for top, left, block in self._blocks:
                first, stop = max(top, y0), min(top + len(block), y1)
                if first < stop:
                    band[first - y0 : stop - y0, left : left + block.shape[1]] = block[first - top : stop - top]
                if top + len(block) > y1:
                    kept.append((top, left, block))
            self._blocks = kept
            self._read = y1
            self._changed.notify_all()
        return band

    def abort(self) -> None:
        """Wake both sides for good: the slide is abandoned."""
        with self._changed:
            self._aborted = True
            self._changed.notify_all()


class Level0Result(NamedTuple):
    """What :meth:`Level0Mask.finish` returns."""

    rle: str
    counts: DiceCounts | None  # against the truth, when there is one
    prediction_preview: np.ndarray  # the mask max-pooled by the preview's downsample
    truth_preview: np.ndarray | None


class Level0Mask:
    """The level-0 mask of one slide, made while its probabilities are released.

    Args:
        shape: the slide's level-0 ``(height, width)``.
        scale: level-0 pixels per working pixel (fractional for a slide resampled between pyramid levels).
        threshold: probability threshold.
        preview_downsample: level-0 pixels per preview pixel; the mask is pooled to it as it is made,
            so the preview never reads the mask TIFF back.
    """

    def __init__(self, shape: tuple[int, int], scale: float, threshold: float, preview_downsample: int) -> None:
        self.shape, self.scale, self.threshold = shape, scale, threshold
        self.area = 0
        self.preview_downsample = preview_downsample
        self._preview = np.zeros(working_shape(shape, preview_downsample), bool)
        self._working_height, working_width = working_shape(shape, scale)
        self._runs = BlockRunEncoder(shape)
        self._rows = _HeldRows(shape)
        self._received = 0  # working rows given to extend()
        self._working_done = 0  # working rows already turned into level-0 rows
        self._context = torch.zeros((0, working_width), dtype=torch.uint8)  # working rows [max(done - 1, 0), received)

    def extend(self, band: torch.Tensor | np.ndarray) -> None:
        """Take the next final working rows and make the level-0 rows they decide.

        Args:
            band: ``uint8`` probabilities (0-255) of the working rows after those already given,
                the slide's full width; a tensor stays on its device (:func:`upsample_threshold`).
        """
        band = torch.as_tensor(band)
        source = torch.cat([self._context, band]) if len(self._context) else band
        first = max(self._working_done - 1, 0)  # the working row that source[0] holds
        self._received += len(band)
        # the last row received is context for the row below it, unless it is the slide's last row
        stop = self._working_height if self._received >= self._working_height else self._received - 1
        start = self._working_done
        if stop > start:
            found = upsample_threshold(source, slice(start - first, stop - first), self.scale, self.threshold, first)
            y0, y1 = level0_start(start, self.scale), min(level0_start(stop, self.scale), self.shape[0])
            self._add_blocks(found, y0, y1)
            self._working_done = stop
        self._context = source[max(self._working_done - 1, 0) - first :]

    def _add_blocks(self, found: list[tuple[np.ndarray, int, int]], y0: int, y1: int) -> None:
        """Count and encode level-0 rows ``[y0, y1)`` (their foreground ``found``) and hand them to the reader."""
        blocks = []
        for block, top, left in found:
            top += y0
            # the last working row and column may reach past the slide
            block = block[: max(y1 - top, 0), : self.shape[1] - left]
            if block.size:
                self.area += int(block.sum())
                self._runs.add(block, top, left)
                self._pool_into_preview(block, top, left)
                blocks.append((top, left, block))
        self._rows.put(y1, blocks)

    def _pool_into_preview(self, block: np.ndarray, top: int, left: int) -> None:
        """Max-pool a level-0 block into the preview (padded so its pixels fall in the right cells)."""
        factor = self.preview_downsample
        pooled = pool_mask(np.pad(block, ((top % factor, 0), (left % factor, 0))), factor, "max")
        row, col = top // factor, left // factor
        self._preview[row : row + pooled.shape[0], col : col + pooled.shape[1]] |= pooled

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Level-0 rows ``[y0, y1)`` as ``uint8`` 0/1, once they are made; for one reader (a writer of the
        mask, in another thread), top to bottom. Raises RuntimeError once the slide is abandoned."""
        return self._rows.read(y0, y1)

    def abort(self) -> None:
        """Abandon the slide (it failed): a reader waiting in :meth:`read_rows`, and the rows' maker, stop waiting."""
        self._rows.abort()

    def finish(self, truth: str | None, slide_id: str) -> Level0Result:
        """After the last rows: join the RLE's runs and count Dice against the truth's.

        Args:
            truth: the slide's true mask as RLE, or None.
            slide_id: named in messages.

        Returns:
            The RLE, the Dice counts and the truth at the preview's scale (None without a truth), and
            the prediction at the preview's scale.

        Raises:
            RuntimeError: not every working row was given to :meth:`extend`.
        """
        if self._received < self._working_height:
            self.abort()  # a reader would wait for the missing rows for ever
            raise RuntimeError(f"{slide_id}: {self._received} of {self._working_height} working rows were made")
        runs = self._runs.runs()
        rle = runs_to_rle(*runs)
        if truth is None:
            return Level0Result(rle, None, self._preview, None)
        truth_runs = parse_rle(truth, self.shape[0] * self.shape[1], slide_id)
        truth_preview = _pooled_mask(truth_runs, self.shape, self.preview_downsample)
        return Level0Result(rle, DiceCounts.from_runs(runs, truth_runs), self._preview, truth_preview)


def _pooled_mask(runs: tuple[np.ndarray, np.ndarray], shape: tuple[int, int], factor: int) -> np.ndarray:
    """A mask given as runs, max-pooled by ``factor``, decoded a band of columns at a time."""
    height, width = shape
    pooled = np.zeros((-(-height // factor), -(-width // factor)), bool)
    step = max(COLUMNS // factor, 1) * factor  # a multiple of the factor, so pooled bands line up
    for x0 in range(0, width, step):
        band = pool_mask(decode_columns(*runs, height, x0, min(x0 + step, width)) != 0, factor, "max")
        pooled[: band.shape[0], x0 // factor : x0 // factor + band.shape[1]] = band
    return pooled
