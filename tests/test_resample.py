"""Resampling between pyramid levels (scripts/resample.py): shapes, the bilinear level-0 block against
torch's whole-image upsampling, images resampled band by band against skimage's whole-image rescale,
and labels sampled at working pixels' centres."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.resample import label_band_reader, level0_start, reduced_shape, resampled_band_reader


@pytest.mark.parametrize(
    ("shape", "factor", "expected"),
    [((700, 900), 2, (350, 450)), ((701, 9), 4, (176, 3)), ((1400, 1680), 2.8, (500, 600)), ((1401, 9), 2.8, (501, 4))],
)
def test_reduced_shape_counts_a_partial_pixel_and_nothing_less(shape, factor, expected):
    assert reduced_shape(shape, factor) == expected
    assert reduced_shape([str(v) for v in shape], str(factor)) == expected


def test_level0_rows_are_split_between_working_rows_by_their_nearest_centre():
    assert [level0_start(row, 4) for row in range(4)] == [0, 4, 8, 12]  # a power of two: whole blocks
    starts = [level0_start(row, 2.8) for row in range(5)]
    assert starts == [0, 3, 6, 8, 11]
    for row in range(4):  # each level-0 row's centre maps inside the working row it is given to
        for level0_row in range(starts[row], starts[row + 1]):
            assert row <= (level0_row + 0.5) / 2.8 < row + 1


@pytest.mark.parametrize("factor", [2.8, 1.3, 0.7])  # shrinking a lot, a little, and enlarging
def test_an_image_resampled_band_by_band_keeps_every_place_where_it_was(factor):
    """A smooth image: each output pixel holds the level-0 value at its centre, ``(r + 0.5) * factor``."""

    def smooth(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return 128 + 90 * np.sin(x / 13) * np.cos(y / 17)

    level0 = smooth(*np.mgrid[0:90, 0:120] + 0.5)  # pixel centres
    image = np.repeat(np.round(level0)[..., None], 3, axis=2).astype(np.uint8)
    read = resampled_band_reader(lambda y0, y1: image[y0:y1], image.shape[:2], factor)
    height, width = reduced_shape(image.shape[:2], factor)
    whole = read(0, height)
    bands = np.concatenate([read(y0, min(y0 + 7, height)) for y0 in range(0, height, 7)])
    assert whole.shape == (height, width, 3) and whole.dtype == np.uint8
    np.testing.assert_array_equal(bands, whole)  # a band never depends on where bands start
    centres = (np.mgrid[0:height, 0:width] + 0.5) * factor
    inside = (centres[0] < 89) & (centres[1] < 119)  # the last pixels reach past the image
    error = np.abs(whole[..., 0].astype(float) - smooth(*centres))[inside]
    assert error.mean() < 0.6  # 0.3 measured; half an output pixel off: 1.4 to 5.3


def test_labels_are_sampled_at_the_working_pixels_centres():
    mask = np.zeros((100, 130), bool)
    mask[10:50, 20:90] = True
    mask[70, 100] = True  # one level-0 pixel: kept only where a working pixel's centre falls on it
    read = label_band_reader(lambda c0, c1: mask[:, c0:c1], mask.shape, 2.5)
    height, width = reduced_shape(mask.shape, 2.5)
    label = np.concatenate([read(c0, min(c0 + 16, width)) for c0 in range(0, width, 16)], axis=1)
    rows, cols = (((np.arange(n) + 0.5) * 2.5).astype(int) for n in (height, width))
    np.testing.assert_array_equal(label, mask[np.ix_(rows, cols)])
    assert label.shape == (40, 52) and label[4:20, 8:36].all() and not label[:4].any()
    assert label[28, 40] == ((70 in rows) and (100 in cols))
