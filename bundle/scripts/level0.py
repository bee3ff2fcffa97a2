"""A slide's level-0 mask, built while its working-resolution probabilities are still arriving.

Each time rows of a slide's probabilities become final, the rows of the level-0 mask that depend
on them only are made (bilinear upsampling, then the threshold), written to a chunked zarr array
on disk and handed to a thread that writes the pyramidal mask TIFF as they come. When the slide is
complete, one pass over the mask, a band of columns at a time, gives the Kaggle RLE (column-major)
and the Dice counts against the truth. Only the rectangle around pixels above the threshold is
upsampled (bilinear values never exceed their neighbours'), which is a small part of a slide.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from .metrics import DiceCounts
from .outputs import write_mask_tiff
from .pyramid import pool_mask
from .rle import ColumnRunEncoder, decode_columns, parse_rle

__all__ = ["Level0Mask", "upsample_threshold"]

ROWS = 512  # level-0 mask chunk height = mask TIFF tile height, so the TIFF thread never reads a chunk being written
COLUMNS = 1024  # level-0 columns per step of the RLE pass (and chunk width)


def upsample_threshold(source: np.ndarray, rows: slice, scale: int, threshold: float) -> np.ndarray | None:
    """Level-0 mask of some rows of a block of working-resolution probabilities.

    The result equals the same pixels of a bilinear upsampling (``align_corners=False``) of the
    whole slide, provided ``source`` holds one row of context above and below ``rows`` (unless
    they are the slide's first or last row) and the slide's full width.

    Args:
        source: ``(h, w)`` ``uint8`` probabilities (0-255).
        rows: the source rows to turn into level-0 rows.
        scale: level-0 pixels per working pixel.
        threshold: probability threshold (0-1).

    Returns:
        ``((rows.stop - rows.start) * scale, w * scale)`` ``uint8`` 0/1, or ``None`` when empty.
    """
    limit = threshold * 255
    hot = source > limit
    hot_rows, hot_cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    if not len(hot_rows):
        return None
    # output pixels that can pass the threshold: within one source pixel of a hot one
    top, bottom = max(hot_rows[0] - 1, rows.start), min(hot_rows[-1] + 2, rows.stop)
    if top >= bottom:
        return None
    left, right = max(hot_cols[0] - 1, 0), min(hot_cols[-1] + 2, source.shape[1])
    # plus one more pixel of context for the interpolation itself
    r0, r1 = max(top - 1, 0), min(bottom + 1, source.shape[0])
    c0, c1 = max(left - 1, 0), min(right + 1, source.shape[1])
    block = torch.from_numpy(source[r0:r1, c0:c1].astype(np.float32) / 255)[None, None]
    if scale > 1:
        block = F.interpolate(block, scale_factor=scale, mode="bilinear", align_corners=False)
    kept = block[0, 0, (top - r0) * scale : (bottom - r0) * scale, (left - c0) * scale : (right - c0) * scale] > threshold
    band = np.zeros(((rows.stop - rows.start) * scale, source.shape[1] * scale), np.uint8)
    band[(top - rows.start) * scale : (bottom - rows.start) * scale, left * scale : right * scale] = kept.numpy()
    return band


class Level0Mask:
    """The level-0 mask of one slide, made while its probabilities are released.

    Args:
        shape: the slide's level-0 ``(height, width)``.
        scale: level-0 pixels per working pixel.
        threshold: probability threshold.
        store: path of the zarr array to build the mask in.
        tiff: path of the pyramidal mask TIFF to write.
    """

    def __init__(self, shape: tuple[int, int], scale: int, threshold: float, store: Path, tiff: Path) -> None:
        self.shape, self.scale, self.threshold = shape, scale, threshold
        self.mask = zarr.create_array(store=store, shape=shape, chunks=(ROWS, COLUMNS), dtype=np.uint8,
                                      fill_value=0, overwrite=True)
        self.area = 0
        self._columns_used = np.zeros(-(-shape[1] // COLUMNS), bool)  # which column bands hold foreground
        self._working_done = 0  # working rows already turned into level-0 rows
        self._rows_ready = 0  # level-0 rows written to the mask
        self._aborted = False
        self._ready = threading.Condition()
        self._tiff_error: BaseException | None = None
        self._tiff = threading.Thread(target=self._write_tiff, args=(tiff,), name="mask-tiff", daemon=True)
        self._tiff.start()

    def extend(self, probability: zarr.Array, released: int) -> None:
        """Make the level-0 rows that working rows ``[0, released)`` decide.

        Args:
            probability: the slide's ``uint8`` probabilities at the working resolution.
            released: how many of its rows are final.
        """
        height = probability.shape[0]
        # the last final row is context for the row below it, unless it is the slide's last row
        stop = height if released >= height else released - 1
        start = self._working_done
        if stop <= start:
            return
        first = max(start - 1, 0)
        source = probability[first : min(stop + 1, height)]
        band = upsample_threshold(source, slice(start - first, stop - first), self.scale, self.threshold)
        y0, y1 = start * self.scale, min(stop * self.scale, self.shape[0])
        if band is not None:
            band = band[: y1 - y0, : self.shape[1]]
            self.mask[y0:y1] = band
            self.area += int(band.sum())
            self._columns_used |= pool_mask(band.any(axis=0)[None], COLUMNS, "max")[0]
        self._working_done = stop
        with self._ready:
            self._rows_ready = y1
            self._ready.notify_all()

    def abort(self) -> None:
        """Stop the TIFF thread (the slide failed); its temporary file is removed."""
        with self._ready:
            self._aborted = True
            self._ready.notify_all()
        self._tiff.join()

    def finish(self, truth: str | None, thumb_scale: int, slide_id: str) -> tuple[str, DiceCounts | None, np.ndarray | None]:
        """After the last rows: wait for the TIFF, then encode the RLE and count Dice, column band by band.

        Args:
            truth: the slide's true mask as RLE, or None.
            thumb_scale: the preview's downsample, for the truth outline.
            slide_id: named in messages.

        Returns:
            ``(rle, Dice counts or None, truth at the preview scale or None)``.
        """
        self._tiff.join()
        if self._tiff_error is not None:
            raise self._tiff_error
        height, width = self.shape
        truth_runs = parse_rle(truth, height * width, slide_id) if truth is not None else None
        counts = DiceCounts() if truth_runs is not None else None
        truth_thumb = None if truth_runs is None else np.zeros((-(-height // thumb_scale), -(-width // thumb_scale)), bool)
        encoder = ColumnRunEncoder(height)
        step = max(COLUMNS, thumb_scale)  # a multiple of the preview scale, so pooled bands line up
        for x0 in range(0, width, step):
            x1 = min(x0 + step, width)
            used = self._columns_used[x0 // COLUMNS : -(-x1 // COLUMNS)].any()
            predicted = self.mask[:, x0:x1] if used else None  # an empty band is known without reading it
            if predicted is None:
                encoder.add_empty(x1 - x0)
            else:
                encoder.add(predicted)
            if truth_runs is not None:
                truth_band = decode_columns(*truth_runs, height, x0, x1)
                counts.add(predicted, truth_band)
                pooled = pool_mask(truth_band != 0, thumb_scale, "max")
                truth_thumb[: pooled.shape[0], x0 // thumb_scale : x0 // thumb_scale + pooled.shape[1]] = pooled
        return encoder.result(), counts, truth_thumb

    def _wait(self, rows: int) -> None:
        """Block the TIFF thread until ``rows`` level-0 rows are written (or the slide is abandoned)."""
        with self._ready:
            self._ready.wait_for(lambda: self._aborted or self._rows_ready >= min(rows, self.shape[0]))
            if self._aborted:
                raise RuntimeError("slide abandoned")

    def _write_tiff(self, path: Path) -> None:
        try:
            write_mask_tiff(path, self.mask, wait=self._wait)
        except BaseException as error:  # re-raised by finish(); an abandoned slide ignores it
            self._tiff_error = error
