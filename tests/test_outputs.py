"""Outputs in the formats users open (scripts/outputs.py): the Kaggle submission, the pyramidal
mask TIFF (read back with tifffile, as napari reads it), the outline preview and its PNG."""

from __future__ import annotations

import imagecodecs
import numpy as np
import tifffile

from scripts.outputs import outline_overlay, write_mask_tiff, write_png, write_submission


def test_submission_rows_keep_the_order_and_empty_predictions(tmp_path):
    path = write_submission(tmp_path / "submission.csv", {"b": "1 3", "a": ""})
    assert path.read_text() == "id,predicted\nb,1 3\na,\n"


def test_mask_tiff_holds_the_mask_at_level_0_and_max_reduced_levels(tmp_path):
    mask = np.zeros((1100, 700), np.uint8)
    mask[100:130, 200:260] = 1
    mask[1099, 699] = 1  # a corner pixel survives every reduction
    reads = []

    def read_rows(y0: int, y1: int) -> np.ndarray:
        reads.append((y0, y1))
        return mask[y0:y1]

    path = write_mask_tiff(tmp_path / "mask.tiff", read_rows, mask.shape)
    assert [y0 for y0, _ in reads] == sorted(y0 for y0, _ in reads)  # top to bottom
    np.testing.assert_array_equal(tifffile.imread(path, level=0), mask * 255)
    level1 = tifffile.imread(path, level=1)
    assert level1.shape == (550, 350) and level1[549, 349] == 255 and level1[50:65, 100:130].all()


def test_preview_outlines_masks_in_their_colours_and_writes_a_png(tmp_path):
    image = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    overlay = outline_overlay(image, [(mask, (0, 200, 0))])
    assert tuple(overlay[10, 15]) == (0, 200, 0) and tuple(overlay[20, 20]) == (200, 200, 200)  # edge, inside
    assert tuple(image[10, 15]) == (200, 200, 200)  # the image itself is left alone
    np.testing.assert_array_equal(imagecodecs.png_decode(write_png(tmp_path / "p.png", overlay).read_bytes()), overlay)
