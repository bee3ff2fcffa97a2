"""Hard-negative mining (scripts/mining.py): the network's false positives on its training slides
become the centres of the training dataset's ``hard`` patches."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd, ScaleIntensityRanged

from conftest import disc_slide, write_slide
from scripts.datasets import ImportancePatchDataset, SlideRegionDataset
from scripts.metrics import SlideDice, SlideMaps
from scripts.mining import HardNegativeMining, false_positive_boxes
from scripts.prepare import prepare_slide
from scripts.rle import rle_encode
from scripts.sampling import sampling_units
from scripts.stitching import TissueWindows


def _maps(prediction: np.ndarray, truth: np.ndarray, downsample: int = 2, downscale: int = 4) -> SlideMaps:
    return SlideMaps(prediction, truth, downsample, downscale, "store.zarr", None)


def test_only_objects_touching_no_truth_are_boxed_largest_first_in_level0_pixels():
    prediction, truth = np.zeros((40, 50), bool), np.zeros((40, 50), bool)
    prediction[2:6, 3:7] = True  # small false positive
    prediction[20:30, 30:45] = True  # large false positive
    prediction[10:16, 10:16] = True  # a glomerulus, predicted a little too large
    truth[11:15, 11:15] = True
    boxes = false_positive_boxes(_maps(prediction, truth), max_boxes=5)
    assert boxes == [[20 * 8, 30 * 8, 30 * 8, 45 * 8], [2 * 8, 3 * 8, 6 * 8, 7 * 8]]  # 8 level-0 px per map px
    assert false_positive_boxes(_maps(prediction, truth), max_boxes=1) == boxes[:1]


def test_no_prediction_or_only_true_objects_give_no_boxes():
    truth = np.zeros((8, 8), bool)
    truth[2:5, 2:5] = True
    assert false_positive_boxes(_maps(np.zeros((8, 8), bool), truth), 4) == []
    assert false_positive_boxes(_maps(truth.copy(), truth), 4) == []


class Darkness(torch.nn.Module):
    """A stand-in network: calls every dark pixel glomerulus (the discs, labelled or not)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40 * (0.45 - x.mean(1, keepdim=True))


def test_mining_a_slide_boxes_its_unlabelled_look_alike_and_hard_patches_centre_there(tmp_path):
    # two dark discs; the label marks only the first: the second is a look-alike the network calls glomerulus
    image, _ = disc_slide(shape=(800, 1000), discs=((250, 300, 90), (520, 700, 70)))
    _, mask = disc_slide(shape=(800, 1000), discs=((250, 300, 90),))
    slide = prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2, rle_encode(mask))
    windows = TissueWindows([slide], roi=128, overlap=0.25)
    metric = SlideDice(windows, threshold=0.5, map_size=256)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(
            SlideRegionDataset(windows.datalist, transform=ScaleIntensityRanged("image", 0, 255, 0.0, 1.0)),
            batch_size=4,
        ),
        network=Darkness(),
        postprocessing=Activationsd("pred", sigmoid=True),
        key_val_metric={"train_dice": metric},
    )
    units = [u for u in sampling_units([slide], random_per_slide=0, hard_per_slide=30) if u["region"] == "hard"]
    assert len(units) == 30
    dataset = ImportancePatchDataset(units, patch_size=64, seed=2)
    before = [dataset.randomize(unit) for unit in units]  # no mining yet: random centres in tissue
    assert max(np.hypot(cy - 520, cx - 700) for cy, cx in before) > 150

    HardNegativeMining(evaluator, metric, dataset, interval=1, max_per_slide=4)(evaluator)

    (boxes,) = dataset.hard_boxes.values()
    assert len(boxes) == 1  # the labelled disc is not a false positive
    y0, x0, y1, x1 = boxes[0]
    assert abs((y0 + y1) / 2 - 520) < 8 and abs((x0 + x1) / 2 - 700) < 8 and 130 <= y1 - y0 <= 160
    for cy, cx in (dataset.randomize(unit) for unit in units):
        assert y0 <= cy < y1 and x0 <= cx < x1
