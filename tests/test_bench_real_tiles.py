"""The real-data benchmark's commands (bench/real_tiles.py): settings reach the commands they are
meant for. (Its training runs take an hour; they are run by hand, not here.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from real_tiles import fold_commands  # noqa: E402

from scripts.folds import fold_dir  # noqa: E402


def options(command: list[str]) -> dict[str, str]:
    """``{key: value}`` of a bundle command's ``--key value`` pairs."""
    return {key[2:]: value for key, value in zip(command[::2], command[1::2], strict=True) if key.startswith("--")}


def test_training_gets_both_kinds_of_override_and_evaluation_only_the_shared_ones(tmp_path):
    (train,), evaluations = fold_commands(tmp_path, 15, ["downscale=4"], ["seed=1", "loss#batch=True"])
    assert list(evaluations) == ["eval"]
    evaluate = evaluations["eval"]
    trained, evaluated = options(train[5:]), options(evaluate[5:])
    assert train[3:5] == ["run", "training"] and evaluate[3:5] == ["run", "evaluating"]
    assert trained["downscale"] == evaluated["downscale"] == "4"
    assert trained["seed"] == "1" and trained["loss#batch"] == "True" and trained["max_train_minutes"] == "15"
    assert "seed" not in evaluated and "loss#batch" not in evaluated
    assert (
        evaluated["ckpt_path"] == str(tmp_path / "models" / "model.pt") == str(Path(trained["ckpt_dir"]) / "model.pt")
    )


def test_a_null_setting_is_passed_as_an_expression_because_the_cli_drops_none(tmp_path):
    (train,), evaluations = fold_commands(tmp_path, 15, ["network_def#norm=None"], ["ema_momentum=null"])
    evaluate = evaluations["eval"]
    trained, evaluated = options(train[5:]), options(evaluate[5:])
    assert trained["network_def#norm"] == evaluated["network_def#norm"] == "$None"
    assert trained["ema_momentum"] == "$None"


def test_members_train_their_own_folds_into_a_fold_ensemble_folder_scored_whole_and_alone(tmp_path):
    trainings, evaluations = fold_commands(tmp_path, 7.5, ["downscale=4"], ["seed=1"], members=2)
    trained = [options(train[5:]) for train in trainings]
    assert [t["fold"] for t in trained] == ["0", "1"] and {t["seed"] for t in trained} == {"1"}
    assert [Path(t["ckpt_dir"]) for t in trained] == [fold_dir(tmp_path / "models", k) for k in (0, 1)]
    assert len({t["output_dir"] for t in trained}) == 2 and {t["max_train_minutes"] for t in trained} == {"7.5"}
    evaluated = {name: options(command[5:]) for name, command in evaluations.items()}
    assert list(evaluated) == ["eval", "eval_fold0", "eval_fold1"]
    # the ensemble is the folder, which checkpoints.checkpoint_files reads as fold<k>/model.pt in fold order
    assert Path(evaluated["eval"]["ckpt_path"]) == tmp_path / "models"
    for member in (0, 1):
        assert Path(evaluated[f"eval_fold{member}"]["ckpt_path"]) == Path(trained[member]["ckpt_dir"]) / "model.pt"
        assert Path(evaluated[f"eval_fold{member}"]["output_dir"]) == tmp_path / f"eval_fold{member}"
    assert {e["downscale"] for e in evaluated.values()} == {"4"} and not any("seed" in e for e in evaluated.values())


def test_a_recipe_is_merged_over_training_and_evaluation_so_both_build_its_network(tmp_path):
    recipe = "bundle/configs/flexunet_efficientnet.yaml"
    (train,), evaluations = fold_commands(tmp_path, 15, [], [], recipes=[recipe])
    for command in (train, evaluations["eval"]):
        files = ast.literal_eval(options(command[5:])["config_file"])
        assert files[-1] == recipe and files[0] in ("bundle/configs/train.yaml", "bundle/configs/inference.yaml")
        parser = ConfigParser()
        parser.read_config([REPO / name for name in files])
        assert parser["network_def"]["_target_"] == "FlexibleUNet"
        assert parser["network_def"]["backbone"] == "efficientnet-b0"
    (plain,), _ = fold_commands(tmp_path, 15, [], [])
    assert ast.literal_eval(options(plain[5:])["config_file"]) == ["bundle/configs/train.yaml"]


def test_a_training_only_recipe_is_merged_over_training_alone(tmp_path):
    """grid_sampling.yaml sets train#datalist, which inference.yaml lacks: merged there, evaluation would fail."""
    recipe, grid = "bundle/configs/flexunet_resnext.yaml", "bundle/configs/grid_sampling.yaml"
    (train,), evaluations = fold_commands(tmp_path, 15, [], [], recipes=[recipe], train_recipes=[grid])
    assert ast.literal_eval(options(train[5:])["config_file"]) == ["bundle/configs/train.yaml", recipe, grid]
    evaluated = ast.literal_eval(options(evaluations["eval"][5:])["config_file"])
    assert evaluated == ["bundle/configs/inference.yaml", "bundle/configs/evaluate.yaml", recipe]
    parser = ConfigParser()
    parser.read_config([REPO / name for name in evaluated])
    assert parser["network_def"]["_target_"] == "FlexibleUNet"


@pytest.mark.slow
def test_the_bundle_cli_ignores_none_and_applies_the_null_expression(tmp_path):
    """Why the benchmark rewrites None: MONAI's CLI drops it, so the config's value would stand."""
    config = tmp_path / "config.yaml"
    config.write_text("value: 1\nshow: \"$print('value', @value)\"\n")
    for given, shown in (("None", "value 1"), ("$None", "value None")):
        command = [sys.executable, "-m", "monai.bundle", "run", "show", "--config_file", str(config), "--value", given]
        output = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
        assert shown in output.splitlines()
