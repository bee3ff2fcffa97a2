"""Blending windows band by band (scripts/stitching.py): the rows released, and their alignment."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.stitching import BandStitcher, blend_weights, window_starts

HEIGHT, WIDTH, ROI, OVERLAP = 1000, 300, 128, 0.25


def stitch(step: int, skip_every: int = 0) -> list[tuple[int, np.ndarray]]:
    """Every band a slide's windows release (random probabilities, every ``skip_every``-th window skipped)."""
    rng = np.random.default_rng(0)
    windows = [(y, x) for y in window_starts(HEIGHT, ROI, OVERLAP) for x in window_starts(WIDTH, ROI, OVERLAP)]
    skipped = windows[::skip_every] if skip_every else []
    stitcher = BandStitcher(HEIGHT, WIDTH, blend_weights(ROI, "gaussian", OVERLAP), skipped, step)
    bands = []
    for y, x in windows:
        if (y, x) not in skipped:
            bands += stitcher.add(rng.random((ROI, ROI), dtype=np.float32), y, x)
    return bands + list(stitcher.close())


@pytest.mark.parametrize("step", [64, 100, 512])
def test_aligned_bands_hold_the_same_rows_and_start_and_end_on_steps(step):
    plain, aligned = stitch(1, skip_every=5), stitch(step, skip_every=5)
    np.testing.assert_array_equal(
        np.concatenate([band for _, band in aligned]), np.concatenate([band for _, band in plain])
    )
    rows = [row for row, _ in aligned]
    assert rows[0] == 0 and all(row % step == 0 for row in rows)
    ends = [row + len(band) for row, band in aligned]
    assert ends[-1] == HEIGHT and all(end % step == 0 for end in ends[:-1])
    assert rows[1:] == ends[:-1]  # contiguous, each row once
    assert len(aligned) < len(plain)


def test_windows_out_of_row_order_are_refused():
    stitcher = BandStitcher(HEIGHT, WIDTH, blend_weights(ROI), step=64)
    list(stitcher.add(np.ones((ROI, ROI), np.float32), 300, 0))
    with pytest.raises(ValueError, match="row order"):
        list(stitcher.add(np.ones((ROI, ROI), np.float32), 100, 0))
