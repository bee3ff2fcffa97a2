"""The shipped model (bundle/models): what inference.yaml runs by default, in half precision, and
real PAS tissue segmented by it (its own training tiles: a check that these are the real-tissue
weights and that they load and run as inference runs them, not a measure of quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from imagecodecs import imread
from monai.bundle import ConfigParser

from conftest import BUNDLE, shared_path
from scripts.checkpoints import checkpoint_files
from scripts.inferers import WindowInferer
from scripts.metrics import dice_score

pytestmark = pytest.mark.slow  # the integration tier: the shipped ensemble over real tiles

CONFIGS = BUNDLE / "configs"
MODELS = BUNDLE / "models"


def shipped_network() -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser["device"] = "$torch.device('cpu')"
    return parser.get_parsed_content("network")


def shipped_setting(key: str):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    return parser.get_parsed_content(key)


def test_inference_runs_the_shipped_fold_ensemble_by_default_and_the_zoo_finds_its_model():
    members = checkpoint_files(str(MODELS))
    assert [path.parent.name for path in members] == ["fold0", "fold1", "fold2", "fold3"]
    assert (MODELS / "model.pt").is_file()  # the single network: the Model Zoo's models/model.pt, fine-tuning's start
    for path in [*members, MODELS / "model.pt"]:
        weights = torch.load(path, weights_only=True)
        assert {value.dtype for value in weights.values() if value.is_floating_point()} == {torch.float16}
    records = [json.loads((path.parent / "best.json").read_text()) for path in [*members, MODELS / "model.pt"]]
    assert all(record["metric"] is not None and 0 < record["metric"] <= 1 for record in records[:-1])
    defaults = ConfigParser.load_config_file(str(CONFIGS / "inference.yaml"))
    assert {record["downscale"] for record in records} == {defaults["downscale"]}  # inference checks it
    # trained at downscale 2 on tiles of about 0.5 microns per pixel: inference brings every slide to 1.0
    assert {record["working_mpp"] for record in records} == {1.0} == {shipped_setting("working_mpp")}
    network = shipped_network()
    assert isinstance(network, torch.nn.ModuleList) and len(network) == len(members)
    first = next(network[0].parameters())
    assert first.dtype == torch.float32 and not torch.equal(first, next(network[1].parameters()))
    total = sum(path.stat().st_size for path in MODELS.rglob("*.pt"))
    assert total < 30 * 2**20  # what the repository can hold


@pytest.mark.parametrize("tile", ["10003", "10164"])
def test_the_shipped_ensemble_segments_real_pas_glomeruli(tile):
    data = shared_path("data", "aidpath_glomeruli")
    image = imread(data / "images" / f"{tile}.png")[..., :3]
    mask = imread(data / "masks" / f"{tile}.png")
    truth = (mask[..., 0] if mask.ndim == 3 else mask)[::2, ::2] > 127  # the working resolution: downscale 2
    window = torch.from_numpy(np.ascontiguousarray(image[::2, ::2].transpose(2, 0, 1)))[None]
    with torch.no_grad():
        probability = torch.sigmoid(WindowInferer(amp=False, tta=True)(window, shipped_network().eval()))[0, 0]
    predicted = probability.numpy() > 0.5
    assert dice_score(predicted, truth) > 0.7
    assert predicted.mean() < 2 * truth.mean()  # not everything marked
