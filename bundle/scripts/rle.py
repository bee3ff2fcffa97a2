"""Kaggle run-length encoding of binary masks, as used by HuBMAP ``train.csv`` and ``submission.csv``.

Pixels are numbered from 1, top to bottom, then left to right (column-major, the order of
``mask.flatten(order="F")``); a string is space-separated ``start length`` pairs, sorted and
non-overlapping; an empty mask is the empty string.

This module owns the format: encoding, decoding with validation, and the streaming pieces that let
whole-slide masks be encoded and decoded a band of columns at a time.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = [
    "ColumnRunEncoder", "RleError", "decode_columns", "parse_rle", "rle_decode", "rle_encode", "rle_encode_columns",
]


class RleError(InputError, ValueError):
    """A run-length string that does not describe a mask of the given size."""


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2D mask as a Kaggle RLE string.

    Args:
        mask: ``(height, width)`` array; non-zero pixels are foreground.

    Returns:
        ``"start length start length ..."`` (1-indexed, column-major), or ``""`` for an empty mask.
    """
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2D (height, width) mask, got shape {mask.shape}")
    pixels = np.concatenate([[False], mask.ravel(order="F") != 0, [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    changes[1::2] -= changes[::2]
    return " ".join(map(str, changes))


def parse_rle(rle: str, num_pixels: int, slide_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string.

    Args:
        rle: the run-length string (``""`` or NaN-like blanks mean an empty mask).
        num_pixels: ``height * width`` of the mask the string must fit.
        slide_id: named in error messages when known.

    Returns:
        ``(starts, lengths)``: int64 arrays, starts 0-indexed.

    Raises:
        RleError: odd token count, a non-integer token, start < 1, length < 1, runs unsorted or
            overlapping, or a run past the end of the image.
    """
    where = f"RLE of slide {slide_id!r}" if slide_id else "RLE"
    tokens = rle.split()
    if len(tokens) % 2:
        raise RleError(f"{where}: odd number of tokens ({len(tokens)}); expected 'start length' pairs")
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not t.lstrip("+-").isdigit() or len(t) > 18)
        raise RleError(f"{where}: token {bad[:20]!r} is not a whole number") from None
    starts, lengths = values[0::2] - 1, values[1::2]
    _check_runs(starts, lengths, num_pixels, where)
    return starts, lengths


def _check_runs(starts: np.ndarray, lengths: np.ndarray, num_pixels: int, where: str) -> None:
    """Raise RleError naming the first run that breaks the format."""
    checks = (
        (starts < 0, "start {s} is below 1"),
        (lengths < 1, "run at {s} has length {n} (must be at least 1)"),
        (starts + lengths > num_pixels, "run at {s} of length {n} ends past the image ({p} pixels)"),
    )
    for failed, message in checks:
        if failed.any():
            i = int(np.argmax(failed))
            raise RleError(f"{where}: " + message.format(s=starts[i] + 1, n=lengths[i], p=num_pixels))
    overlap = starts[1:] < starts[:-1] + lengths[:-1]
    if overlap.any():
        i = int(np.argmax(overlap)) + 1
        raise RleError(f"{where}: run at {starts[i] + 1} is out of order or overlaps the run before it")


def rle_decode(rle: str, shape: tuple[int, int], slide_id: str | None = None) -> np.ndarray:
    """Decode a Kaggle RLE string into a mask.

    Args:
        rle: the run-length string.
        shape: ``(height, width)`` of the mask.
        slide_id: named in error messages when known.

    Returns:
        ``uint8`` array of shape ``(height, width)`` holding 0 and 1.

    Raises:
        RleError: when the string is malformed or does not fit ``shape``.
    """
    height, width = shape
    starts, lengths = parse_rle(rle, height * width, slide_id)
    return decode_columns(starts, lengths, height, 0, width)


def decode_columns(
    starts: np.ndarray, lengths: np.ndarray, height: int, col_start: int, col_stop: int
) -> np.ndarray:
    """Decode the columns ``[col_start, col_stop)`` of a mask from parsed runs.

    Only the runs that touch those columns are visited, so a whole-slide mask can be rebuilt one
    band of columns at a time.

    Args:
        starts: 0-indexed run starts from :func:`parse_rle`.
        lengths: run lengths from :func:`parse_rle`.
        height: mask height.
        col_start: first column (inclusive).
        col_stop: last column (exclusive).

    Returns:
        ``uint8`` array of shape ``(height, col_stop - col_start)``.
    """
    lo, hi = col_start * height, col_stop * height
    ends = starts + lengths
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(starts, hi, side="left"))
    band = np.zeros(hi - lo + 1, dtype=np.int8)
    run_starts = np.clip(starts[first:last], lo, hi) - lo
    run_ends = np.clip(ends[first:last], lo, hi) - lo
    np.add.at(band, run_starts, 1)
    np.add.at(band, run_ends, -1)
    flat = np.cumsum(band[:-1], dtype=np.int8).astype(np.uint8)
    return flat.reshape(col_stop - col_start, height).T


class ColumnRunEncoder:
    """Encode a mask as RLE from consecutive bands of columns, never holding the whole mask.

    Feed bands left to right with :meth:`add`; :meth:`result` returns the same string that
    :func:`rle_encode` gives for the whole mask. Runs that continue from one band into the next
    (a glomerulus crossing the band edge, or a run wrapping from a column's bottom to the next
    column's top) are joined.

    Args:
        height: the mask height every band must have.
    """

    def __init__(self, height: int) -> None:
        self.height = height
        self._columns_done = 0
        self._parts: list[str] = []
        self._open_start: int | None = None  # 1-indexed start of a run still running at the last band's end

    def add_empty(self, columns: int) -> None:
        """Append ``columns`` empty columns (no foreground) without building them."""
        if columns <= 0:
            return
        if self._open_start is not None:
            end = self._columns_done * self.height + 1
            self._parts.append(f"{self._open_start} {end - self._open_start}")
            self._open_start = None
        self._columns_done += columns

    def add(self, band: np.ndarray) -> None:
        """Append the next band of columns.

        Args:
            band: ``(height, n_columns)`` array; non-zero pixels are foreground.
        """
        if band.ndim != 2 or band.shape[0] != self.height:
            raise ValueError(f"band must have shape ({self.height}, n), got {band.shape}")
        if band.shape[1] == 0:
            return
        offset = self._columns_done * self.height
        pixels = np.concatenate([[False], band.ravel(order="F") != 0, [False]])
        changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1 + offset  # 1-indexed run starts / ends
        starts, ends = changes[0::2], changes[1::2]
        if len(starts) and self._open_start is not None and starts[0] == offset + 1:
            starts[0] = self._open_start  # the first run continues the one left open
        elif self._open_start is not None:
            self._parts.append(f"{self._open_start} {offset + 1 - self._open_start}")
        self._open_start = None
        self._columns_done += band.shape[1]
        if len(ends) and ends[-1] == self._columns_done * self.height + 1:
            self._open_start = int(starts[-1])
            starts, ends = starts[:-1], ends[:-1]
        if len(starts):
            pairs = np.stack([starts, ends - starts], axis=1)
            self._parts.append(" ".join(map(str, pairs.ravel())))

    def result(self) -> str:
        """Close any open run and return the whole RLE string."""
        if self._open_start is not None:
            end = self._columns_done * self.height + 1
            self._parts.append(f"{self._open_start} {end - self._open_start}")
            self._open_start = None
        return " ".join(self._parts)


def rle_encode_columns(mask, band: int = 1024) -> str:
    """Encode a mask too large to hold (e.g. an on-disk zarr array) a band of columns at a time.

    Args:
        mask: a 2D array-like that supports ``mask[:, c0:c1]``.
        band: columns read per step.

    Returns:
        The same string as :func:`rle_encode` on the whole mask.
    """
    encoder = ColumnRunEncoder(mask.shape[0])
    for col in range(0, mask.shape[1], band):
        encoder.add(np.asarray(mask[:, col : col + band]))
    return encoder.result()
