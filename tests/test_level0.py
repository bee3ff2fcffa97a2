"""The level-0 mask made band by band (scripts/level0.py): equal to upsampling the whole slide at
once, in its RLE, its pyramidal TIFF (written by a reader thread, as inference writes it), its
area and its Dice; the rows held for the reader stay bounded; an abandoned slide never leaves a
thread waiting."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from scripts import level0
from scripts.level0 import Level0Mask, bilinear_block, upsample_threshold
from scripts.metrics import DiceCounts
from scripts.outputs import write_mask_tiff
from scripts.pyramid import pool_mask
from scripts.resample import level0_start
from scripts.rle import rle_encode

SCALE = 4
WORKING = (700, 53)  # working-resolution probabilities
SHAPE = (2797, 209)  # level 0: taller than the rows held for the reader (level0.HELD_ROWS), and not a
# multiple of the scale, so the last working row and column reach past it
# a slide resampled between pyramid levels: 4.3 level-0 pixels per working pixel, the same working shape
FRACTIONAL = (4.3, (3001, 225))


def test_a_bilinear_block_is_the_same_pixels_of_the_whole_upsampling():
    probability = torch.from_numpy(np.random.default_rng(0).random((23, 31)).astype(np.float32))
    whole = F.interpolate(probability[None, None], scale_factor=2.8, mode="bilinear")[0, 0].numpy()
    np.testing.assert_allclose(bilinear_block(probability, (0, 0), (0, 64), (0, 86), 2.8).numpy(), whole, atol=1e-5)
    # a block inside the slide, given only the working pixels it needs (one of context on each side)
    rows, cols = (level0_start(8, 2.8), level0_start(15, 2.8)), (level0_start(20, 2.8), level0_start(30, 2.8))
    block = bilinear_block(probability[7:16, 19:31], (7, 19), rows, cols, 2.8).numpy()
    np.testing.assert_allclose(block, whole[rows[0] : rows[1], cols[0] : cols[1]], atol=1e-5)


@pytest.mark.parametrize("scale", [4, 2.8])
def test_band_upsampling_equals_whole_image_upsampling(scale):
    rng = np.random.default_rng(0)
    values = rng.integers(0, 100, (37, 153))
    values[10:14, 20:35] = rng.integers(100, 256, (4, 15))  # a few hot spots, the rest below the threshold
    values[9, 120] = values[30, 150] = 255  # one in the row above a band, one next to the last column
    probability = values.astype(np.uint8)
    source = torch.from_numpy(probability.astype(np.float32) / 255)[None, None]
    whole = (F.interpolate(source, scale_factor=scale, mode="bilinear", align_corners=False)[0, 0] > 0.5).numpy()
    bands, groups = [], []
    for row in range(0, 37, 5):  # bands of rows, each with a row of context above and below
        first, stop = max(row - 1, 0), min(row + 6, 37)
        rows = slice(row - first, min(row + 5, 37) - first)
        found = upsample_threshold(probability[first:stop], rows, scale, 0.5, origin=first)
        height = level0_start(min(row + 5, 37), scale) - level0_start(row, scale)
        band = np.zeros((height, level0_start(153, scale)), bool)
        for block, top, left in found:
            band[top : top + block.shape[0], left : left + block.shape[1]] = block
        bands.append(band)
        groups.append(len(found))
    made = np.concatenate(bands, axis=0)
    np.testing.assert_array_equal(made[: whole.shape[0], : whole.shape[1]], whole)
    assert groups == [0, 2, 2, 0, 0, 1, 1, 0]  # glass between far-apart hot spots is not upsampled
    assert upsample_threshold(probability[:6], slice(0, 5), scale, 0.5) == []  # nothing hot there


def working_probabilities() -> np.ndarray:
    """``uint8`` probabilities with a few hot spots (one on the last row and column)."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 100, WORKING)
    values[10:14, 20:35] = rng.integers(100, 256, (4, 15))
    values[25:40, 5:12] = 250
    values[600:610, 30:50] = 200
    values[-1, -1] = values[-2, 40] = 255
    return values.astype(np.uint8)


def whole_slide_mask(probability: np.ndarray, scale: float = SCALE, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    source = torch.from_numpy(probability.astype(np.float32) / 255)[None, None]
    upsampled = F.interpolate(source, scale_factor=scale, mode="bilinear", align_corners=False)[0, 0]
    return (upsampled > 0.5).numpy()[: shape[0], : shape[1]]


def tiff_reader(mask: Level0Mask, path) -> threading.Thread:
    """Write the mask's TIFF in a thread of its own, reading its rows as they are made (as inference does)."""

    def write() -> None:
        try:
            write_mask_tiff(path, mask.read_rows, mask.shape)
        except RuntimeError as error:  # an abandoned slide's reader stops here
            assert "slide abandoned" in str(error)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def give_rows(mask: Level0Mask, probability: np.ndarray, releases) -> None:
    """Hand the mask the probabilities in bands ending at each of ``releases``."""
    done = 0
    for released in releases:
        mask.extend(probability[done:released])
        done = released


@pytest.mark.parametrize(("scale", "shape"), [(SCALE, SHAPE), FRACTIONAL])
def test_a_mask_made_band_by_band_equals_the_whole_slide_upsampled_at_once(tmp_path, scale, shape):
    probability = working_probabilities()
    whole = whole_slide_mask(probability, scale, shape)
    assert whole.shape == shape  # the upsampling reaches the slide's edge
    truth = np.zeros(shape, bool)
    truth[50:90, 70:140] = True
    mask = Level0Mask(shape, scale, 0.5, 8)
    reader = tiff_reader(mask, tmp_path / "mask.tiff")
    give_rows(mask, probability, (1, 2, 9, 12, 30, 31, 60, 61, 200, 201, 500, 699, 700))
    rle, counts, predicted_thumb, truth_thumb = mask.finish(rle_encode(truth), "slide")
    reader.join(timeout=30)
    assert rle == rle_encode(whole) and mask.area == whole.sum() > 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "mask.tiff", level=0), whole * np.uint8(255))
    expected = DiceCounts()
    expected.add(whole, truth)
    assert vars(counts) == vars(expected)
    np.testing.assert_array_equal(truth_thumb, pool_mask(truth, 8))
    # the preview is pooled as the rows are made: the mask TIFF's own level at that scale
    np.testing.assert_array_equal(predicted_thumb, pool_mask(whole, 8))
    np.testing.assert_array_equal(predicted_thumb, tifffile.imread(tmp_path / "mask.tiff", level=3) > 0)
    again = mask.finish(None, "slide")
    assert again.rle == rle and again.counts is None and again.truth_preview is None


def test_rows_are_held_for_the_reader_only_up_to_a_bound():
    rows = level0._HeldRows((100, 10), limit=20)
    rows.put(30, [(25, 2, np.ones((5, 3), bool))])  # nothing held yet: no wait
    writer = threading.Thread(target=rows.put, args=(60, []))
    writer.start()
    writer.join(timeout=0.5)
    assert writer.is_alive()  # 30 rows held: it waits for the reader
    band = rows.read(0, 16)
    writer.join(timeout=10)
    assert not writer.is_alive()  # 14 rows held after the read: it went on
    assert not band.any() and rows.read(16, 32)[9:14, 2:5].all() and rows.read(32, 60).sum() == 0


def test_abandoning_a_slide_stops_its_tiff_reader_and_leaves_no_file(tmp_path):
    probability = working_probabilities()
    mask = Level0Mask(SHAPE, SCALE, 0.5, 8)
    reader = tiff_reader(mask, tmp_path / "masks" / "mask.tiff")
    mask.extend(probability[:200])
    mask.abort()  # the reader, waiting for rows, stops
    reader.join(timeout=30)
    assert not reader.is_alive() and list((tmp_path / "masks").iterdir()) == []


def test_a_slide_whose_rows_stop_short_fails_with_a_message_instead_of_waiting(tmp_path):
    probability = working_probabilities()
    mask = Level0Mask(SHAPE, SCALE, 0.5, 8)
    reader = tiff_reader(mask, tmp_path / "masks" / "mask.tiff")
    give_rows(mask, probability, (300, 699))
    with pytest.raises(RuntimeError, match="slide: 699 of 700 working rows"):
        mask.finish(None, "slide")
    reader.join(timeout=30)
    assert not reader.is_alive() and list((tmp_path / "masks").iterdir()) == []
