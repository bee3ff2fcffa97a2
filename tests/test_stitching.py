"""Windows and blending (scripts/stitching.py): the tissue windows of a run, the rows released band
by band, and their alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import disc_slide, write_slide
from scripts.prepare import prepare_slide
from scripts.stitching import BandStitcher, TissueWindows, blend_weights, window_starts

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


def test_bands_are_the_weighted_average_of_the_windows_blended_on_the_windows_device():
    """The whole slide blended at once in numpy (skipped windows predicting 0) against the bands of
    windows given as torch tensors; the bands stay on the windows' device."""
    rng = np.random.default_rng(0)
    weights = blend_weights(ROI, "gaussian", OVERLAP)
    windows = [(y, x) for y in window_starts(HEIGHT, ROI, OVERLAP) for x in window_starts(WIDTH, ROI, OVERLAP)]
    skipped = windows[::5]
    margin = -min(window_starts(HEIGHT, ROI, OVERLAP))
    total = np.zeros((HEIGHT + 2 * margin + ROI, WIDTH + 2 * margin + ROI), np.float32)
    weight = np.zeros_like(total)
    blender = BandStitcher(HEIGHT, WIDTH, weights, skipped, step=64, device=torch.device("cpu"))
    bands = []
    for y, x in windows:
        window = np.zeros((ROI, ROI), np.float32) if (y, x) in skipped else rng.random((ROI, ROI), dtype=np.float32)
        total[y + margin : y + margin + ROI, x + margin : x + margin + ROI] += window * weights
        weight[y + margin : y + margin + ROI, x + margin : x + margin + ROI] += weights
        if (y, x) not in skipped:
            bands += blender.add(torch.from_numpy(window), y, x)
    bands += blender.close()
    assert all(isinstance(band, torch.Tensor) and band.device == torch.device("cpu") for _, band in bands)
    expected = (total / np.maximum(weight, 1e-12))[margin : margin + HEIGHT, margin : margin + WIDTH]
    np.testing.assert_allclose(torch.cat([band for _, band in bands]).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_windows_out_of_row_order_are_refused():
    stitcher = BandStitcher(HEIGHT, WIDTH, blend_weights(ROI), step=64)
    list(stitcher.add(np.ones((ROI, ROI), np.float32), 300, 0))
    with pytest.raises(ValueError, match="row order"):
        list(stitcher.add(np.ones((ROI, ROI), np.float32), 100, 0))


def test_windows_cover_tissue_only_and_the_datalist_is_the_stitchers_grid(tmp_path):
    image, _ = disc_slide(shape=(1000, 1200), discs=((260, 300, 90), (600, 700, 70), (700, 300, 100)))
    image[:, 900:] = 241  # glass on the right: the windows there are never run
    blank = np.full((600, 700, 3), 241, np.uint8)  # glass only: no tissue window at all
    prepared = [
        prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2),
        prepare_slide("empty", write_slide(tmp_path / "empty.tiff", blank), tmp_path / "cache", 2),
    ]
    windows = TissueWindows(prepared, 128, 0.25)
    data = windows.datalist
    assert {item["slide_id"] for item in data} == {"s1"}  # the blank slide has no tissue window
    assert len(windows.grids["s1"].run) == len(data) and windows.grids["empty"].run == []
    assert [[y * 2, x * 2] for y, x in windows.grids["s1"].run] == [item["location"] for item in data]
    columns = sorted({item["location"][1] // 2 for item in data})
    assert columns[-1] < 450  # working columns from 450 on are glass
    covered = np.zeros((500, 600), bool)
    for item in data:
        y, x = (v // 2 for v in item["location"])
        covered[y : y + 128, x : x + 128] = True
    assert covered[130, 150] and covered[300, 350] and covered[350, 150]  # every disc centre
    assert TissueWindows(prepared, 128, 0.25, skip={"s1"}).datalist == []  # a done slide is not run
    assert len(windows) == len(data)
    # streamed: each slide's grid is known once its first item is handed on, the items are the same
    streamed = TissueWindows([], 128, 0.25, skip={"empty"})
    items = streamed.stream(iter(prepared))
    assert streamed.grids == {} and next(items) == data[0] and list(streamed.grids) == ["s1"]
    assert [data[0], *items] == data and list(streamed.slides) == ["s1"] and len(streamed) == len(data)
