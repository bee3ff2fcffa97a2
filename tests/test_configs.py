"""The bundle's configs as the MONAI Model Zoo checks them: metadata against the zoo's schema,
network input/output, and the properties MONAI expects of train and inference workflows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import BUNDLE, REPO, shared_path
from monai.bundle import ConfigParser, ConfigWorkflow
from scripts.demo import generate_demo

CONFIGS = BUNDLE / "configs"


def monai_bundle(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_metadata_validates_against_the_model_zoo_schema():
    schema = shared_path("monai", "meta_schema_20240725.json")
    result = monai_bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(schema))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


# SwinUNETR's instance norm needs more than 1 x 1 at its bottleneck in training mode: 64 px (n=2)
@pytest.mark.parametrize("configs, n", [(["inference.yaml"], "1"), (["train.yaml"], "1"),
                                        (["inference.yaml", "swinunetr.yaml"], "2")])
def test_network_input_and_output_match_the_metadata(configs, n):
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    result = monai_bundle("verify_net_in_out", "network_def", "--meta_file", str(CONFIGS / "metadata.json"),
                          "--config_file", files, "--n", n)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_swinunetr_recipe_builds_a_2d_swinunetr():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "swinunetr.yaml")])
    network = parser.get_parsed_content("network_def")
    assert type(network).__name__ == "SwinUNETR"
    assert network(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    dataset = generate_demo(root / "demo", seed=5, num_train=2, num_test=1, size=(1024, 1024))
    return {"dataset_dir": str(dataset), "cache_dir": str(root / "cache"), "ckpt_dir": str(root / "models"),
            "output_dir": str(root / "out")}


@pytest.mark.parametrize("configs, kind, run_id", [
    (["train.yaml"], "train", "training"),
    (["inference.yaml"], "infer", "inference"),
    (["inference.yaml", "evaluate.yaml"], "infer", "evaluating"),
])
def test_workflow_properties_are_all_present(tiny, configs, kind, run_id):
    workflow = ConfigWorkflow(config_file=[str(CONFIGS / c) for c in configs], workflow_type=kind, run_id=run_id,
                              **tiny)
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(BUNDLE)
