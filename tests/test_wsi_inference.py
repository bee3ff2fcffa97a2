"""Whole-slide inference (scripts/wsi_inference.py): tissue blocks, and the writer that stitches
block predictions into submission rows, mask TIFFs, previews and Dice, run through a real MONAI
evaluator with cuCIM reading real TIFFs."""

from __future__ import annotations

import csv

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
import zarr
from conftest import disc_slide, write_slide
from monai.engines import SupervisedEvaluator
from monai.inferers import SlidingWindowInferer
from monai.transforms import Activationsd, Compose, ScaleIntensityRanged
from scripts.datasets import SlideRegionDataset
from scripts.prepare import prepare_slide
from scripts.rle import rle_decode, rle_encode
from scripts.transforms import CropMargind
from scripts.wsi_inference import (
    SlidePredictionWriter,
    _upsample_threshold,
    block_datalist,
)

DISCS = ((260, 300, 90), (600, 700, 70), (700, 300, 100))


class PurpleDetector(torch.nn.Module):
    """A fixed 'network': logit high where the green channel is low (the purple discs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.4 - x[:, 1:2]) * 40


@pytest.fixture()
def slides(tmp_path):
    image, mask = disc_slide(shape=(1000, 1200), discs=DISCS)
    image[:, 900:] = 241  # glass on the right: the blocks there hold no tissue
    blank = np.full((600, 700, 3), 241, np.uint8)  # glass only: no tissue block at all
    prepared = [
        prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2),
        prepare_slide("empty", write_slide(tmp_path / "empty.tiff", blank), tmp_path / "cache", 2),
    ]
    return prepared, mask


def run_inference(slides, output_dir, truth=None, failed=None, block=128, margin=32):
    data = block_datalist(slides, block, margin)
    dataset = SlideRegionDataset(data, transform=ScaleIntensityRanged("image", 0, 255, 0.0, 1.0),
                                 additional_meta_keys=["core", "margin", "num_blocks"])
    writer = SlidePredictionWriter(str(output_dir), slides, threshold=0.5, truth=truth, failed=failed)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=__import__("monai").data.list_data_collate),
        network=PurpleDetector(), inferer=SlidingWindowInferer(64, sw_batch_size=4, overlap=0.25, mode="gaussian"),
        postprocessing=Compose([Activationsd("pred", sigmoid=True), CropMargind(["pred", "label"])]),
        val_handlers=[writer],
    )
    evaluator.run()
    return data, writer


def test_blocks_cover_tissue_only(slides):
    prepared, _ = slides
    data = block_datalist(prepared, 128, 32)
    assert {item["slide_id"] for item in data} == {"s1"}  # the blank slide has no tissue block
    cores = [item["core"] for item in data]
    assert all(item["num_blocks"] == len(cores) for item in data)
    assert max(x0 for _, x0, _, _ in cores) == 384  # the column of blocks from 512 on is glass
    covered = np.zeros((500, 600), bool)
    for y0, x0, y1, x1 in cores:
        covered[y0:y1, x0:x1] = True
    assert covered[130, 150] and covered[300, 350] and covered[350, 150]  # every disc centre


def test_stitched_prediction_matches_truth_and_every_output_agrees(slides, tmp_path):
    prepared, mask = slides
    _, writer = run_inference(prepared, tmp_path / "out", truth={"s1": rle_encode(mask), "empty": ""},
                              failed={"gone": "train.csv row 9: slide 'gone' has no image"})
    with open(tmp_path / "out" / "submission.csv") as handle:
        rows = {row["id"]: row["predicted"] for row in csv.DictReader(handle)}
    assert list(rows) == ["s1", "empty", "gone"] and rows["empty"] == "" and rows["gone"] == ""
    predicted = rle_decode(rows["s1"], (1000, 1200))
    intersection = (predicted & mask).sum()
    assert 2 * intersection / (predicted.sum() + mask.sum()) > 0.97
    assert writer.dice["s1"] == pytest.approx(2 * intersection / (predicted.sum() + mask.sum()))
    assert writer.dice["empty"] == 1.0  # both empty: 1.0, the Kaggle way
    with tifffile.TiffFile(tmp_path / "out" / "masks" / "s1.tiff") as tif:
        assert tif.pages[0].is_tiled and len(tif.pages) > 1
        np.testing.assert_array_equal(tif.pages[0].asarray() > 0, predicted > 0)
    preview = imagecodecs.imread(tmp_path / "out" / "previews" / "s1.png")
    assert preview.shape == (500, 600, 3)
    green, blue = ((preview == colour).all(axis=-1).sum() for colour in ((0, 200, 0), (30, 60, 255)))
    assert green > 500 and blue > 0  # predicted outline over the truth's, which shows where they differ
    with open(tmp_path / "out" / "metrics.csv") as handle:
        metrics = {row["id"]: float(row["dice"]) for row in csv.DictReader(handle)}
    assert metrics["mean"] == pytest.approx((writer.dice["s1"] + 1.0) / 2, abs=1e-4)
    assert not (tmp_path / "out" / ".work").exists()


def test_block_size_does_not_change_the_mask(slides, tmp_path):
    """Blocks read with a margin and Gaussian windows inside them: the block grid leaves no seams."""
    prepared, _ = slides
    run_inference(prepared[:1], tmp_path / "small", block=128, margin=32)
    run_inference(prepared[:1], tmp_path / "whole", block=640, margin=32)
    small = tifffile.imread(tmp_path / "small" / "masks" / "s1.tiff", level=0)
    whole = tifffile.imread(tmp_path / "whole" / "masks" / "s1.tiff", level=0)
    assert (small != whole).mean() < 1e-3


def test_band_upsampling_equals_whole_image_upsampling():
    rng = np.random.default_rng(0)
    probability = zarr.create_array(store={}, shape=(37, 53), chunks=(16, 16), dtype=np.uint8)
    probability[:] = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    source = torch.from_numpy(probability[:].astype(np.float32) / 255)[None, None]
    whole = (F.interpolate(source, scale_factor=4, mode="bilinear", align_corners=False)[0, 0] > 0.5).numpy()
    bands = np.concatenate([_upsample_threshold(probability, c, c + 10, 4, 0.5) for c in range(0, 53, 10)], axis=1)
    np.testing.assert_array_equal(bands, whole)
