"""The slide store's reads (scripts/store.py), on a store that scripts/prepare.py built: windows
padded outside the array, the tissue mask and region map with their scale, boxes, label, fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from conftest import disc_slide, write_slide
from scripts.prepare import prepare_slide
from scripts.regions import REGION_CODES
from scripts.rle import rle_encode
from scripts.store import (
    LABEL,
    TISSUE,
    has_label,
    read_fingerprint,
    read_glomeruli,
    read_regions,
    read_tissue,
    read_window,
)


@pytest.fixture()
def stores(tmp_path):
    """``(labelled store, unlabelled store, label mask at level 0)`` of one disc slide."""
    image, mask = disc_slide()
    path = write_slide(tmp_path / "train" / "s1.tiff", image)
    labelled = prepare_slide("s1", path, tmp_path / "cache", 2, rle_encode(mask)).store
    unlabelled = prepare_slide("s1", path, tmp_path / "cache_test", 2, None).store
    return labelled, unlabelled, mask


def test_read_window_pads_outside_the_array_with_zero(stores):
    store = stores[0]
    label = zarr.open_array(f"{store}/{LABEL}", mode="r")[:]
    window = read_window(store, LABEL, -10, 440, 30, 20)
    assert window.shape == (30, 20)
    assert not window[:10].any() and not window[:, 10:].any()
    np.testing.assert_array_equal(window[10:, :10], label[:20, 440:450])


def test_tissue_and_regions_come_with_the_level0_pixels_per_pixel(stores):
    store, _, mask = stores
    tissue, downsample = read_tissue(store)
    regions, region_downsample = read_regions(store)
    assert tissue.dtype == bool and regions.shape == tissue.shape and region_downsample == downsample
    assert np.array_equal(tissue, zarr.open_array(f"{store}/{TISSUE}", mode="r")[:] > 0)
    # the discs are tissue: every glomerulus pixel, brought to the mask's scale, is inside the mask
    rows, cols = np.nonzero(mask)
    assert tissue[rows // downsample, cols // downsample].all()
    assert set(np.unique(regions)) <= set(REGION_CODES.values())


def test_boxes_label_and_fingerprint_of_a_labelled_and_an_unlabelled_store(stores, tmp_path):
    labelled, unlabelled, _ = stores
    assert has_label(labelled) and not has_label(unlabelled)
    assert len(read_glomeruli(labelled)) == 2 and read_glomeruli(unlabelled) == []
    assert read_fingerprint(labelled) and read_fingerprint(labelled) != read_fingerprint(unlabelled)
    assert read_fingerprint(tmp_path / "absent") is None
