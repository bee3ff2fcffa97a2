"""The bundle's configs as the MONAI Model Zoo checks them: metadata against the zoo's schema,
network input/output, and the properties MONAI expects of train and inference workflows."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from monai.bundle import ConfigParser, ConfigWorkflow

from conftest import BUNDLE, shared_path
from scripts.demo import generate_demo
from scripts.package import pack

CONFIGS = BUNDLE / "configs"


def monai_bundle(*args: str) -> subprocess.CompletedProcess:
    """The bundle CLI run from the bundle folder, as the Model Zoo's tools run it (``scripts`` importable)."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_metadata_validates_against_the_model_zoo_schema():
    schema = shared_path("monai", "meta_schema_20240725.json")
    result = monai_bundle("verify_metadata", "--meta_file", str(CONFIGS / "metadata.json"), "--filepath", str(schema))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr


# SwinUNETR's instance norm needs more than 1 x 1 at its bottleneck in training mode: 64 px (n=2)
@pytest.mark.slow
@pytest.mark.parametrize(
    "configs, n",
    [
        (["inference.yaml"], "1"),
        (["train.yaml"], "1"),
        (["inference.yaml", "swinunetr.yaml"], "2"),
        (["inference.yaml", "flexunet_efficientnet.yaml"], "1"),
        (["inference.yaml", "flexunet_resnext.yaml"], "1"),
    ],
)
def test_network_input_and_output_match_the_metadata(configs, n):
    files = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    result = monai_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        files,
        "--n",
        n,
    )
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
    return {
        "dataset_dir": str(dataset),
        "cache_dir": str(root / "cache"),
        "ckpt_dir": str(root / "models"),
        "output_dir": str(root / "out"),
    }


@pytest.mark.parametrize(
    "configs, kind, run_id",
    [
        (["train.yaml"], "train", "training"),
        (["inference.yaml"], "infer", "inference"),
        (["inference.yaml", "evaluate.yaml"], "infer", "evaluating"),
        (["inference.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml"], "infer", "evaluating"),
        (["inference.yaml", "pseudo_labels.yaml"], "infer", "pseudo_labels"),
        (["train.yaml", "hubmap.yaml"], "train", "training"),
        (["train.yaml", "ranger.yaml"], "train", "training"),
        (["train.yaml", "grid_sampling.yaml"], "train", "training"),
    ],
)
def test_workflow_properties_are_all_present(tiny, configs, kind, run_id):
    if kind == "infer":  # the network is built with its weights, checked first: a model must be there
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / c) for c in configs])
        Path(tiny["ckpt_dir"]).mkdir(parents=True, exist_ok=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), Path(tiny["ckpt_dir"]) / "model.pt")
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs], workflow_type=kind, run_id=run_id, **tiny
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(BUNDLE)


@pytest.mark.parametrize("momentum", [None, 0.01])
def test_the_validated_and_saved_model_is_the_weight_average_when_one_is_asked_for(tiny, momentum):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({**tiny, "ema_momentum": momentum})
    network, averaged = parser.get_parsed_content("network"), parser.get_parsed_content("averaged")
    evaluator = parser.get_parsed_content("validate#evaluator")
    assert evaluator.network is averaged.model and (averaged.model is network) == (momentum is None)
    handlers = parser.get_parsed_content("train#every_rank_handlers") + parser.get_parsed_content("train#handlers")
    # the training run attaches it to the trainer: it follows every training step
    assert any(step.startswith("$@averaged.attach(@train") and "trainer)" in step for step in parser["training"])
    saved = [h for h in parser.get_parsed_content("validate#handlers") if hasattr(h, "save_dir")]
    assert [h.network for h in saved] == [averaged.model]
    checkpoint = next(h for h in handlers if hasattr(h, "objects"))
    assert ("averaged_model" in checkpoint.objects) == (momentum is not None)  # a 0.3.2 last.pt still resumes


@pytest.mark.parametrize("hard", [0, 4])
def test_hard_negative_mining_runs_over_the_training_slides_into_the_training_dataset(tiny, hard):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({**tiny, "hard_patches_per_slide": hard})
    handlers = [h for h in parser.get_parsed_content("train#every_rank_handlers") if hasattr(h, "mine")]
    assert len(handlers) == (1 if hard else 0)
    if hard:
        (miner,) = handlers
        train, _ = parser.get_parsed_content("split")
        assert {item["slide_id"] for item in miner.evaluator.data_loader.dataset.data} == {s.slide_id for s in train}
        assert miner.dataset is parser.get_parsed_content("train#dataset") and miner.max_per_slide == hard
        assert miner.evaluator.network is parser.get_parsed_content("validate#evaluator").network
        regions = [unit["region"] for unit in parser.get_parsed_content("train#datalist")]
        assert regions.count("hard") == hard * len(train)


def test_grid_recipe_lists_tissue_tiles_of_the_training_slides_only(tiny):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "grid_sampling.yaml")])
    parser.update({key: value for key, value in tiny.items()})
    parser.parse()
    units = parser.get_parsed_content("train#datalist")
    train, val = parser.get_parsed_content("split")
    assert units and {u["region"] for u in units} == {"grid"}
    assert {u["slide_id"] for u in units} == {s.slide_id for s in train} and val


@pytest.mark.slow
def test_torchscript_export_runs_inference_without_the_python_network(tiny, tmp_path):
    torch.manual_seed(0)
    network = ConfigParser.load_config_file(str(CONFIGS / "inference.yaml"))["network_def"]
    checkpoint = tmp_path / "model.pt"
    parser = ConfigParser({"network_def": network})
    torch.save(parser.get_parsed_content("network_def").state_dict(), checkpoint)
    exported = tmp_path / "model.ts"
    result = monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(checkpoint),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        str(CONFIGS / "inference.yaml"),
    )
    assert result.returncode == 0 and exported.is_file(), result.stderr[-2000:]
    common = [
        "--dataset_dir",
        tiny["dataset_dir"],
        "--cache_dir",
        tiny["cache_dir"],
        "--infer_roi",
        "128",
        "--num_workers",
        "0",
        "--save_heatmap",
        "true",
    ]
    eager = monai_bundle(
        "run",
        "inference",
        "--config_file",
        str(CONFIGS / "inference.yaml"),
        *common,
        "--ckpt_path",
        str(checkpoint),
        "--output_dir",
        str(tmp_path / "eager"),
    )
    files = f"['{CONFIGS / 'inference.yaml'}','{CONFIGS / 'inference_ts.yaml'}']"
    scripted = monai_bundle(
        "run",
        "inference",
        "--config_file",
        files,
        *common,
        "--ckpt_path",
        str(exported),
        "--output_dir",
        str(tmp_path / "scripted"),
    )
    assert eager.returncode == 0 and scripted.returncode == 0, scripted.stderr[-2000:]
    for heatmap in (tmp_path / "eager" / "heatmaps").glob("*.tiff"):
        a = tifffile.imread(heatmap, level=0).astype(int)
        b = tifffile.imread(tmp_path / "scripted" / "heatmaps" / heatmap.name, level=0).astype(int)
        assert np.abs(a - b).max() <= 2  # the same network, up to rounding


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["flexunet_efficientnet.yaml", "flexunet_resnext.yaml"])
def test_flexibleunet_recipes_export_to_torchscript(recipe, tmp_path):
    files = f"['{CONFIGS / 'inference.yaml'}','{CONFIGS / recipe}']"
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.yaml"), str(CONFIGS / recipe)])
    network = parser.get_parsed_content("network_def").eval()
    assert type(network).__name__ == "FlexibleUNet"
    checkpoint, exported = tmp_path / "model.pt", tmp_path / "model.ts"
    torch.save(network.state_dict(), checkpoint)
    result = monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(checkpoint),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        files,
    )
    assert result.returncode == 0 and exported.is_file(), result.stderr[-2000:]
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(exported))(image), network(image), atol=1e-5)


@pytest.mark.slow
def test_swinunetr_exports_by_tracing(tmp_path):
    files = f"['{CONFIGS / 'inference.yaml'}','{CONFIGS / 'swinunetr.yaml'}']"
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.yaml"), str(CONFIGS / "swinunetr.yaml")])
    checkpoint = tmp_path / "swin.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), checkpoint)
    exported = tmp_path / "swin.ts"
    result = monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(checkpoint),
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        files,
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 3, 64, 64]",
    )
    assert result.returncode == 0 and exported.is_file(), result.stderr[-2000:]
    loaded = torch.jit.load(str(exported))
    assert loaded(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_bundle_packs_as_the_model_zoo_expects(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(
        BUNDLE, bundle, ignore=shutil.ignore_patterns("data", "cache", "logs", "eval", "*.pt", "*.ts", "__pycache__")
    )
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    (bundle / "models" / "fold0").mkdir(exist_ok=True)
    (bundle / "models" / "fold0" / "model.pt").write_bytes(b"member")
    zipped = pack(bundle, tmp_path / "dist", "https://example.org/{name}")
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert zipped.name == f"pathology_glomeruli_segmentation_v{version}.zip"
    with zipfile.ZipFile(zipped) as archive:
        names = set(archive.namelist())
        root = f"pathology_glomeruli_segmentation_v{version}/"
        assert {
            root + "configs/metadata.json",
            root + "LICENSE",
            root + "docs/README.md",
            root + "docs/data_license.txt",
            root + "scripts/__init__.py",
            root + "configs/inference.yaml",
            root + "large_files.yml",
        } <= names
        assert not any(name.endswith((".pt", ".ts")) or "/data/" in name or "/cache/" in name for name in names)
        large = yaml.safe_load(archive.read(root + "large_files.yml"))
    assert large == {
        "large_files": [
            {
                "path": "models/model.pt",
                "url": "https://example.org/model.pt",
                "hash_val": hashlib.sha256(b"weights").hexdigest(),
                "hash_type": "sha256",
            },
            {
                "path": "models/fold0/model.pt",
                "url": "https://example.org/fold0_model.pt",
                "hash_val": hashlib.sha256(b"member").hexdigest(),
                "hash_type": "sha256",
            },
        ]
    }
