"""Real data from ../shared (skipped where absent): real PAS tissue (AIDPATH tiles, CC BY 4.0)
through the HuBMAP layout, cuCIM and the zarr stores; real HuBMAP annotations through the RLE
code at full slide size."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from imagecodecs import imread
from scipy import ndimage

from conftest import shared_path, write_slide
from scripts.annotations import rasterize, read_annotations
from scripts.datasets import ImportancePatchDataset
from scripts.files import write_csv
from scripts.layout import read_csv_rows
from scripts.pyramid import pool_mask
from scripts.rle import decode_columns, parse_rle, rle_encode, rle_encode_chunked
from scripts.sampling import sampling_units
from scripts.transforms import LoadLabelPatchd
from scripts.workflow import training_slides

TILES = ("10003", "10014", "10063")


@pytest.fixture(scope="module")
def aidpath(tmp_path_factory):
    """Three real tiles as a HuBMAP-layout training set, and their masks."""
    source = shared_path("data", "aidpath_glomeruli")
    root = tmp_path_factory.mktemp("aidpath")
    masks, rows = {}, []
    for tile in TILES:
        image = imread(source / "images" / f"{tile}.png")[..., :3]
        masks[tile] = (imread(source / "masks" / f"{tile}.png")[..., 0] > 127).astype(np.uint8)
        write_slide(root / "train" / f"{tile}.tiff", image, compression="lzw")
        rows.append((tile, rle_encode(masks[tile])))
    write_csv(root / "train.csv", ("id", "encoding"), rows)
    slides = training_slides(str(root), str(root / "no-demo"), str(root / "cache"), 2)
    return slides, masks


def test_real_tiles_become_label_stores_that_match_their_masks(aidpath):
    slides, masks = aidpath
    assert list(slides.prepared) == list(TILES) and not slides.failed
    for tile, slide in slides.prepared.items():
        group = zarr.open_group(slide.store, mode="r")
        np.testing.assert_array_equal(group["label"][:], pool_mask(masks[tile], 2, "mean") >= 0.5)
        components, count = ndimage.label(masks[tile])
        boxes = group.attrs["glomeruli"]
        for cy, cx in ndimage.center_of_mass(masks[tile], components, range(1, count + 1)):
            assert any(y0 <= cy < y1 and x0 <= cx < x1 for y0, x0, y1, x1 in boxes)  # every glomerulus is sampled


def test_tissue_mask_of_real_tissue_holds_the_glomeruli(aidpath):
    slides, masks = aidpath
    for tile, slide in slides.prepared.items():
        group = zarr.open_group(slide.store, mode="r")
        tissue, downsample = group["tissue"][:].astype(bool), group.attrs["tissue_downsample"]
        glomeruli = pool_mask(masks[tile], downsample, "max").astype(bool)
        assert (tissue & glomeruli).sum() >= 0.95 * glomeruli.sum()


def test_patches_of_real_glomeruli_come_with_their_labels(aidpath):
    slides, _ = aidpath
    units = [u for u in sampling_units(slides.slides, 0) if u["region"] == "glomerulus"]
    dataset = ImportancePatchDataset(units, patch_size=128, transform=LoadLabelPatchd("label"), seed=0)
    fractions = [float(dataset[i]["label"].mean()) for i in range(len(dataset))]
    assert len(fractions) >= 3 and min(fractions) > 0.02


def test_real_hubmap_polygons_round_trip_through_streaming_rle():
    annotations = read_annotations(shared_path("data", "hubmap_format", "aaa6a05cc.json"))
    mask = rasterize(annotations, (18484, 13013))  # aaa6a05cc is 13013 wide, 18484 high
    expected = rle_encode(mask)
    assert rle_encode_chunked(mask, 1000) == expected and len(expected.split()) // 2 > 1000
    starts, lengths = parse_rle(expected, mask.size, "aaa6a05cc")
    np.testing.assert_array_equal(decode_columns(starts, lengths, 18484, 5000, 7000), mask[:, 5000:7000])


def test_real_sample_submission_parses_cleanly():
    rows, problems = read_csv_rows(shared_path("data", "hubmap_format", "sample_submission.csv"), "predicted")
    assert rows and not problems and all(len(row.slide_id) == 9 and row.value == "" for row in rows)
