"""An inference run's outputs (scripts/outputs.py): where each goes, the Kaggle submission and
metrics, the pyramidal mask TIFF (read back with tifffile, as napari reads it), the outline preview
and its PNG, the summary that marks a slide complete."""

from __future__ import annotations

import imagecodecs
import numpy as np
import tifffile

from scripts.outputs import RunOutputs, outline_overlay, write_mask_tiff, write_png


def test_submission_rows_keep_the_order_and_empty_predictions(tmp_path):
    path = RunOutputs(tmp_path).write_submission({"b": "1 3", "a": ""})
    assert path == tmp_path / "submission.csv" and path.read_text() == "id,predicted\nb,1 3\na,\n"


def test_metrics_list_each_slide_then_the_mean(tmp_path):
    path = RunOutputs(tmp_path).write_metrics({"b": 0.5, "a": 0.25}, 0.375)
    assert path.read_text() == "id,dice\nb,0.5000\na,0.2500\nmean,0.3750\n"


def test_a_slide_is_complete_once_its_rle_and_its_summary_are_written(tmp_path):
    outputs = RunOutputs(tmp_path)
    outputs.write_summary("s1", {"id": "s1", "confidence": 0.9})
    assert not outputs.is_complete("s1")  # a summary alone: the RLE is missing
    outputs.write_rle("s1", "1 3")
    assert outputs.is_complete("s1") and not outputs.is_complete("s2")
    assert outputs.read_rle("s1") == "1 3" and outputs.read_summary("s1") == {"id": "s1", "confidence": 0.9}
    assert (tmp_path / "rle" / "s1.txt").is_file() and (tmp_path / "summaries" / "s1.json").is_file()


def test_preview_draws_truth_and_prediction_outlines_in_their_colours(tmp_path):
    thumbnail = np.full((40, 40, 3), 200, np.uint8)
    prediction, truth = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    prediction[5:15, 5:15], truth[20:35, 20:35] = True, True
    path = RunOutputs(tmp_path).write_preview("s1", thumbnail, prediction, truth)
    assert path == tmp_path / "previews" / "s1.png"
    preview = imagecodecs.png_decode(path.read_bytes())
    assert tuple(preview[5, 10]) == (0, 200, 0) and tuple(preview[20, 25]) == (30, 60, 255)
    assert tuple(preview[10, 10]) == (200, 200, 200)


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
