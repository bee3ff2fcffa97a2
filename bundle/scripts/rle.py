"""Kaggle run-length encoding of binary masks, as used by HuBMAP ``train.csv`` and ``submission.csv``.

Pixels are numbered from 1, top to bottom, then left to right (column-major, the order of
``mask.flatten(order="F")``); a string is space-separated ``start length`` pairs, sorted and
non-overlapping; an empty mask is the empty string.

This module owns the format: encoding, decoding with validation, and the streaming pieces that let
whole-slide masks be encoded block by block as they are made, and decoded a band of columns at a time.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = [
    "BlockRunEncoder",
    "RleError",
    "decode_columns",
    "parse_rle",
    "rle_decode",
    "rle_encode",
    "rle_encode_chunked",
    "runs_to_rle",
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


def decode_columns(starts: np.ndarray, lengths: np.ndarray, height: int, col_start: int, col_stop: int) -> np.ndarray:
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


class BlockRunEncoder:
    """Encode a mask as RLE from rectangular blocks of it, given in any order, never holding the whole mask.

    Feed each block of the mask that may hold foreground with :meth:`add` (bands of rows as a
    slide's mask is made, or just the rectangles around its foreground); pixels never given are
    background. :meth:`result` returns the same string that :func:`rle_encode` gives for the whole
    mask: runs that continue from one block into the next (a glomerulus crossing a band edge, or a
    run wrapping from a column's bottom to the next column's top) are joined. Memory grows with
    the number of runs, not with the mask.

    Args:
        shape: ``(height, width)`` of the whole mask.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self._starts: list[np.ndarray] = []  # 0-indexed column-major pixel numbers, one array per block
        self._ends: list[np.ndarray] = []

    def add(self, block: np.ndarray, top: int = 0, left: int = 0) -> None:
        """Add the runs of one block; each pixel of the mask may be given once.

        Args:
            block: ``(h, w)`` array; non-zero pixels are foreground.
            top: the block's first row in the mask.
            left: the block's first column in the mask.
        """
        height, width = self.shape
        rows, columns = block.shape
        if top < 0 or left < 0 or top + rows > height or left + columns > width:
            raise ValueError(f"a {rows} x {columns} block at ({top}, {left}) does not fit a {height} x {width} mask")
        # the block column after column, each followed by a background pixel, so a run never spans two columns here
        flat = np.zeros((columns, rows + 1), bool)
        flat[:, :rows] = block.T != 0
        changes = np.flatnonzero(np.diff(flat.ravel(), prepend=False))
        column, start_row = np.divmod(changes[0::2], rows + 1)
        first_pixel = (left + column) * height + top  # pixel number of each run's column at the block's top
        self._starts.append(first_pixel + start_row)
        self._ends.append(first_pixel + changes[1::2] - column * (rows + 1))

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, lengths)`` of the whole mask, 0-indexed, sorted, touching runs joined.

        Raises:
            ValueError: when two blocks gave the same pixel.
        """
        starts, ends = (np.concatenate([np.zeros(0, np.int64), *parts]) for parts in (self._starts, self._ends))
        if not len(starts):
            return starts, ends
        order = np.argsort(starts, kind="stable")
        starts, ends = starts[order], ends[order]
        if (starts[1:] < ends[:-1]).any():
            raise ValueError("two blocks gave the same pixel")
        first = np.ones(len(starts), bool)
        first[1:] = starts[1:] != ends[:-1]  # a run starting where the previous one ends continues it
        last = np.append(first[1:], True)
        return starts[first], ends[last] - starts[first]

    def result(self) -> str:
        """The whole mask's RLE string."""
        return runs_to_rle(*self.runs())


def runs_to_rle(starts: np.ndarray, lengths: np.ndarray) -> str:
    """The RLE string of runs (0-indexed starts, as :func:`parse_rle` and :meth:`BlockRunEncoder.runs` give them)."""
    return " ".join(map(str, np.stack([starts + 1, lengths], axis=1).ravel()))


def rle_encode_chunked(mask, rows: int = 1024) -> str:
    """Encode a mask too large to hold (e.g. an on-disk zarr array) a band of rows at a time.

    Args:
        mask: a 2D array-like that supports ``mask[r0:r1]``.
        rows: rows read per step.

    Returns:
        The same string as :func:`rle_encode` on the whole mask.
    """
    encoder = BlockRunEncoder(mask.shape)
    for top in range(0, mask.shape[0], rows):
        encoder.add(np.asarray(mask[top : top + rows]), top)
    return encoder.result()
