"""The bundle as users run it: ``python -m monai.bundle run ...`` in a subprocess on a tiny demo
(one short epoch), then inference and evaluation from the checkpoint it saved; and the one-line
errors a user sees for bad input."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from conftest import BUNDLE, REPO
from scripts.demo import generate_demo
from scripts.layout import read_csv_rows
from scripts.rle import rle_decode

pytestmark = pytest.mark.slow  # the integration tier: bundle runs in subprocesses

CONFIGS = BUNDLE / "configs"
FAST = ["--patch_size", "128", "--batch_size", "4", "--infer_roi", "128", "--num_workers", "0"]
ONE_EPOCH = ["--max_epochs", "1", "--val_interval", "1", "--random_patches_per_slide", "2"]  # a tiny training run


def bundle_run(run_id: str, configs: list[str], *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    config = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config, *overrides]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    if check and result.returncode:
        pytest.fail(f"{run_id} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny demo and a model trained on it for one short epoch through the CLI."""
    root = tmp_path_factory.mktemp("bundle")
    dataset = generate_demo(root / "demo", seed=3, num_train=3, num_test=1, size=(1024, 1280))
    paths = {"dataset_dir": str(dataset), "cache_dir": str(root / "cache"), "ckpt_dir": str(root / "models")}
    flags = [item for key, value in paths.items() for item in (f"--{key}", value)]
    result = bundle_run(
        "training",
        [str(CONFIGS / "train.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(root / "logs"),
        *ONE_EPOCH,
    )
    return root, flags, result


def test_training_saves_the_best_model_and_logs(trained):
    root, _, result = trained
    assert (root / "models" / "model.pt").is_file()
    assert "best validation Dice" in result.stdout and str(root / "models" / "model.pt") in result.stdout
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(root / "logs"))


def test_inference_writes_submission_masks_and_previews(trained):
    root, flags, _ = trained
    out = root / "inference"
    result = bundle_run("inference", [str(CONFIGS / "inference.yaml")], *flags, *FAST, "--output_dir", str(out))
    with open(root / "demo" / "sample_submission.csv") as handle:
        expected = [row["id"] for row in csv.DictReader(handle)]
    rows, problems = read_csv_rows(out / "submission.csv", "predicted")
    assert [row.slide_id for row in rows] == expected and not problems
    for row in rows:
        mask = tifffile.imread(out / "masks" / f"{row.slide_id}.tiff", level=0)
        assert mask.shape == (1024, 1280)
        np.testing.assert_array_equal(rle_decode(row.value, mask.shape), mask > 0)
        assert (out / "previews" / f"{row.slide_id}.png").stat().st_size > 1000
    assert "submission.csv" in result.stdout


def test_evaluation_reports_dice_per_slide_and_mean(trained):
    root, flags, _ = trained
    out = root / "evaluation"
    result = bundle_run(
        "evaluating",
        [str(CONFIGS / "inference.yaml"), str(CONFIGS / "evaluate.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(out),
    )
    with open(out / "metrics.csv") as handle:
        metrics = {row["id"]: float(row["dice"]) for row in csv.DictReader(handle)}
    assert len(metrics) == 2 and "mean" in metrics and all(0.0 <= d <= 1.0 for d in metrics.values())
    assert f"mean {metrics['mean']:.4f}" in result.stdout


def test_torchrun_ranks_share_the_slides_and_rank_0_merges_them(trained):
    """multi_gpu_evaluate.yaml with two CPU processes: the same Dice as one process."""
    root, flags, _ = trained
    out = root / "distributed"
    configs = ("inference.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml")
    configs = "[" + ",".join(f"'{CONFIGS / c}'" for c in configs) + "]"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "monai.bundle",
        "run",
        "evaluating",
        "--config_file",
        configs,
        *flags,
        *FAST,
        "--output_dir",
        str(out),
        "--eval_split",
        "train",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows, _ = read_csv_rows(out / "submission.csv", "predicted")
    with open(root / "demo" / "train.csv") as handle:
        assert [row.slide_id for row in rows] == [row["id"] for row in csv.DictReader(handle)]
    ranks = sorted(json.loads((out / "summaries" / f"{row.slide_id}.json").read_text())["rank"] for row in rows)
    assert ranks == [0, 0, 1]  # three slides dealt to two ranks
    single = bundle_run(
        "evaluating",
        [str(CONFIGS / "inference.yaml"), str(CONFIGS / "evaluate.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(root / "single"),
        "--eval_split",
        "train",
    )
    assert single.returncode == 0
    with open(out / "metrics.csv") as handle, open(root / "single" / "metrics.csv") as reference:
        rows, expected = list(csv.DictReader(handle)), list(csv.DictReader(reference))
    assert len(rows) == 4 and [r["id"] for r in rows] == [r["id"] for r in expected]  # three slides and the mean
    # batches of 16 windows, not 4: bfloat16 kernels may round a few pixels differently
    assert [float(r["dice"]) for r in rows] == pytest.approx([float(r["dice"]) for r in expected], abs=2e-3)


def test_ddp_training_under_torchrun_on_two_cpu_processes(trained, tmp_path):
    """multi_gpu_train.yaml with Gloo: both ranks train (and mine their false positives), the budget
    stops them together, rank 0 alone validates and saves the best model and the checkpoint."""
    root, flags, _ = trained
    flags = [*flags[:-2], "--ckpt_dir", str(tmp_path / "models")]
    configs = f"['{CONFIGS / 'train.yaml'}','{CONFIGS / 'multi_gpu_train.yaml'}']"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        configs,
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        "--max_epochs",
        "1000",
        "--val_interval",
        "1",
        "--max_train_minutes",
        "1",
        "--random_patches_per_slide",
        "2",
        "--hard_patches_per_slide",
        "2",
        "--mine_interval",
        "1",
    ]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - started < 300  # the 1-minute budget ended training on both ranks
    state = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    assert 1 <= state["trainer"]["epoch"] < 1000 and not any(k.startswith("module.") for k in state["model"])
    assert (tmp_path / "models" / "model.pt").is_file()
    assert result.stdout.count("best validation Dice") == 1  # reported by rank 0 only
    output = result.stdout + result.stderr
    mined = re.findall(r"epoch (\d+): \d+ false-positive objects on (\d) training slides", output)
    assert mined and all(slides == "2" for _, slides in mined)  # every rank mines every training slide


def test_train_on_all_validates_nothing_and_keeps_the_last_weights(trained, tmp_path):
    _, flags, validated = trained
    flags = [*flags[:-2], "--ckpt_dir", str(tmp_path / "models")]  # a fresh checkpoint folder
    result = bundle_run(
        "training",
        [str(CONFIGS / "train.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        "--max_epochs",
        "2",
        "--val_interval",
        "1",
        "--random_patches_per_slide",
        "2",
        "--train_on_all",
        "true",
    )
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    last = torch.load(tmp_path / "models" / "last.pt", weights_only=True)["model"]
    assert model.keys() == last.keys() and all(torch.equal(model[k], last[k]) for k in model)
    record = json.loads((tmp_path / "models" / "best.json").read_text())
    # the model's scale and patch size too
    assert record == {"metric": None, "epoch": 2, "downscale": 2, "working_mpp": 1.0, "patch_size": 128}
    assert "no validation slides (train_on_all): the last epoch's weights (epoch 2)" in result.stdout
    assert "val_dice" in validated.stdout + validated.stderr  # the fixture's run validated; this one did not:
    assert "val_dice" not in result.stdout + result.stderr


def test_training_killed_by_sigkill_goes_on_from_its_last_epoch(trained, tmp_path):
    root, flags, _ = trained
    flags = [*flags[:-2], "--ckpt_dir", str(tmp_path / "models")]  # a fresh checkpoint folder
    config = str(CONFIGS / "train.yaml")
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config,
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        "--max_epochs",
        "3",
        "--val_interval",
        "1",
        "--random_patches_per_slide",
        "2",
    ]
    last = tmp_path / "models" / "last.pt"
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # no chance to clean up
    process.wait()
    killed_at = torch.load(last, weights_only=True)["trainer"]["epoch"]
    assert 1 <= killed_at < 3
    result = bundle_run(
        "training",
        [config],
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        "--max_epochs",
        "3",
        "--val_interval",
        "1",
        "--random_patches_per_slide",
        "2",
    )
    assert f"epoch {killed_at} done" in result.stdout + result.stderr
    assert torch.load(last, weights_only=True)["trainer"]["epoch"] == 3
    torch.load(tmp_path / "models" / "model.pt", weights_only=True)  # never left half-written


def test_mlflow_tracking_records_parameters_metrics_the_run_config_and_the_model(trained, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    root, flags, _ = trained
    result = bundle_run(
        "training",
        [str(CONFIGS / "train.yaml")],
        "--tracking",
        str(CONFIGS / "mlflow_tracking.yaml"),
        "--bundle_root",
        str(tmp_path),
        *flags[:4],
        *FAST,
        "--max_epochs",
        "2",
        "--val_interval",
        "1",
        "--random_patches_per_slide",
        "2",
    )
    assert "best validation Dice" in result.stdout
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'logs' / 'mlruns.db'}")
    [experiment] = [e for e in client.search_experiments() if e.name == "glomerulus_segmentation"]
    [run] = client.search_runs([experiment.experiment_id])
    assert {"train_loss", "val_dice"} <= set(run.data.metrics) and run.data.params["max_epochs"] == "2"
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
    assert len(artifacts) == 3 and {"best.json", "model.pt"} <= set(artifacts)  # the model, and every setting:
    assert [a for a in artifacts if a.startswith("config_") and a.endswith(".json")]
    logged = Path(client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "download")))
    assert logged.read_bytes() == (tmp_path / "checkpoints" / "model.pt").read_bytes()  # train.yaml's ckpt_dir


def test_pseudo_labels_are_written_and_trained_on(trained, tmp_path):
    root, flags, _ = trained
    out = tmp_path / "pseudo"
    configs = [str(CONFIGS / "inference.yaml"), str(CONFIGS / "pseudo_labels.yaml")]
    result = bundle_run("pseudo_labels", configs, *flags, *FAST, "--output_dir", str(out), "--min_confidence", "0")
    rows, _ = read_csv_rows(out / "pseudo_labels.csv", "encoding")
    submission, _ = read_csv_rows(out / "submission.csv", "predicted")
    assert [(r.slide_id, r.value) for r in rows] == [(r.slide_id, r.value) for r in submission]  # every slide kept
    assert "pseudo-labels for 1 of 1 slide(s)" in result.stdout
    flags = [*flags[:-2], "--ckpt_dir", str(tmp_path / "models")]
    bundle_run(
        "training",
        [str(CONFIGS / "train.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        *ONE_EPOCH,
        "--pseudo_label_csv",
        str(out / "pseudo_labels.csv"),
    )
    store = root / "cache" / "stores" / f"{rows[0].slide_id}.zarr"  # the test slide, prepared with its pseudo-label
    assert "label" in zarr.open_group(store, mode="r")


def test_resuming_a_checkpoint_saved_with_other_settings_is_one_line_without_traceback(trained, tmp_path):
    root, flags, _ = trained  # its last.pt was saved without a weight average
    last = root / "models" / "last.pt"
    saved = last.read_bytes()
    result = bundle_run(
        "training",
        [str(CONFIGS / "train.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        "--max_epochs",
        "2",
        "--ema_momentum",
        "0.01",
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {last} has no 'averaged_model' to resume from: it was saved by a run with other settings (such as "
        "ema_momentum); start afresh with --resume false, or give this run its own --ckpt_dir"
    )
    assert last.read_bytes() == saved


def test_missing_dataset_dir_is_one_line_without_traceback(tmp_path):
    result = bundle_run(
        "training",
        [str(CONFIGS / "train.yaml")],
        "--dataset_dir",
        str(tmp_path / "none"),
        "--cache_dir",
        str(tmp_path / "cache"),
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: dataset_dir {tmp_path / 'none'} does not exist")


def test_missing_checkpoint_is_one_line_without_traceback(trained, tmp_path):
    _, flags, _ = trained
    result = bundle_run(
        "inference",
        [str(CONFIGS / "inference.yaml")],
        *flags,
        "--ckpt_path",
        str(tmp_path / "none.pt"),
        "--output_dir",
        str(tmp_path / "out"),
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "none.pt not found: train first" in result.stderr.strip().splitlines()[-1]


def test_a_checkpoint_of_another_network_is_one_line_without_traceback(trained, tmp_path):
    _, flags, _ = trained  # a UNet with channels 16-256, run here as one with channels 8-128
    result = bundle_run(
        "inference",
        [str(CONFIGS / "inference.yaml")],
        *flags,
        "--network_def#channels",
        "[8,16,32,64,128]",
        "--output_dir",
        str(tmp_path / "out"),
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "holds the weights of another network (" in result.stderr.strip().splitlines()[-1]


def _mask(out, slide_id):
    return tifffile.imread(out / "masks" / f"{slide_id}.tiff", level=0) > 0


def test_an_ensemble_folder_averages_its_members_probabilities_into_every_output(trained, tmp_path):
    """Two copies of the trained model segment as the model alone; with a copy that sees no glomerulus
    anywhere (output bias -50) beside it, the mean probability p / 2 never exceeds the threshold 0.5."""
    root, flags, _ = trained
    weights = torch.load(root / "models" / "model.pt", weights_only=True)
    output_bias = [key for key, value in weights.items() if key.endswith("bias") and value.shape == (1,)][-1]
    members = {"twins": [weights, weights], "silent": [weights, {**weights, output_bias: weights[output_bias] - 50}]}
    configs = [str(CONFIGS / "inference.yaml")]
    bundle_run("inference", configs, *flags, *FAST, "--output_dir", str(tmp_path / "single"), "--tta", "false")
    for name, states in members.items():
        for fold, state in enumerate(states):
            (tmp_path / name / f"fold{fold}").mkdir(parents=True)
            torch.save(state, tmp_path / name / f"fold{fold}" / "model.pt")
        bundle_run(
            "inference",
            configs,
            *flags,
            *FAST,
            "--output_dir",
            str(tmp_path / f"{name}_out"),
            "--tta",
            "false",
            "--ckpt_path",
            str(tmp_path / name),
        )
    [row] = read_csv_rows(tmp_path / "single" / "submission.csv", "predicted")[0]
    single, twins, silent = (_mask(tmp_path / name, row.slide_id) for name in ("single", "twins_out", "silent_out"))
    assert single.sum() > 0 and np.mean(single != twins) < 1e-4  # the same mask, but for rounding at the threshold
    assert silent.sum() == 0  # the silent member halves every probability: the ensemble's mask, not the first member's
    [ensemble_row] = read_csv_rows(tmp_path / "silent_out" / "submission.csv", "predicted")[0]
    summary = json.loads((tmp_path / "silent_out" / "summaries" / f"{row.slide_id}.json").read_text())
    assert ensemble_row.value == "" and summary["glomerulus_pixels"] == 0 and summary["glomeruli"] == 0


@pytest.mark.parametrize("member", ["missing", "corrupt"])
def test_a_bad_member_of_a_checkpoint_list_is_one_line_naming_it_and_nothing_is_written(trained, tmp_path, member):
    root, flags, _ = trained
    bad = tmp_path / "bad.pt"
    if member == "corrupt":
        bad.write_bytes(b"not weights")
    result = bundle_run(
        "inference",
        [str(CONFIGS / "inference.yaml")],
        *flags,
        "--output_dir",
        str(tmp_path / "out"),
        "--ckpt_path",
        f"['{root / 'models' / 'model.pt'}','{bad}']",
        check=False,
    )
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint {bad} ")
    assert ("not found: train first" if member == "missing" else "cannot be read as PyTorch weights") in last
    assert not (tmp_path / "out").exists()


def test_training_folds_fine_tunes_every_fold_from_a_model_into_an_ensemble(trained, tmp_path):
    root, flags, _ = trained
    flags = [*flags[:-2], "--ckpt_dir", str(tmp_path / "ensemble")]
    start = root / "models" / "model.pt"
    result = bundle_run(
        "training_folds",
        [str(CONFIGS / "train.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        *ONE_EPOCH,
        "--num_folds",
        "2",
        "--init_ckpt",
        str(start),
    )
    assert result.stdout.count(f"training starts from the weights of {start}") == 2
    for fold in (0, 1):
        assert json.loads((tmp_path / "ensemble" / f"fold{fold}" / "finished.json").read_text())["fold"] == fold
        assert (tmp_path / "logs" / f"fold{fold}" / "training_curves.csv").is_file()
    assert f"fold ensemble of 2 in {tmp_path / 'ensemble'}" in result.stdout
    again = bundle_run(
        "training_folds",
        [str(CONFIGS / "train.yaml")],
        *flags,
        *FAST,
        "--output_dir",
        str(tmp_path / "logs"),
        "--num_folds",
        "2",
    )
    assert again.stdout.count("finished earlier") == 2 and "training starts" not in again.stdout
