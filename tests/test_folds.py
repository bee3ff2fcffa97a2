"""Fold ensembles (scripts/folds.py): each fold a `run training` process of its own, resumable
fold by fold, a failed fold costing nothing of the others, and the members found in fold order."""

from __future__ import annotations

import json
import sys

import pytest

from scripts.folds import FINISHED, fold_command, fold_members, train_folds


def test_each_fold_runs_the_callers_command_with_its_own_fold_and_folders():
    argv = [
        "/x/monai/bundle/__main__.py",
        "run",
        "training_folds",
        "--config_file",
        "['a.yaml','b.yaml']",
        "--fold",
        "3",
        "--ckpt_dir=/mine",
        "--dataset_dir",
        "/data",
        "--output_dir",
        "/logs",
    ]
    command = fold_command(argv, 1, "/ens", "/logs")
    assert command == [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "['a.yaml','b.yaml']",
        "--dataset_dir",
        "/data",
        "--fold",
        "1",
        "--ckpt_dir",
        "/ens/fold1",
        "--output_dir",
        "/logs/fold1",
    ]
    with pytest.raises(Exception, match="training_folds runs from the command line"):
        fold_command(["python", "-c"], 0, "/ens", "/logs")


def tiny_bundle(tmp_path):
    """A config whose `training` writes <ckpt_dir>/model.pt (and counts its runs), and fails for fold `fail`."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "imports: ['$import pathlib', '$import sys']\n"
        "fold: 0\nfail: -1\nckpt_dir: unset\noutput_dir: unset\n"
        f"runs: {str(tmp_path / 'runs.txt')!r}\n"
        "training:\n"
        "  - \"$open(@runs, 'a').write(str(@fold) + ' ')\"\n"
        "  - $sys.exit(3) if @fold == @fail else None\n"
        "  - $pathlib.Path(@ckpt_dir).mkdir(parents=True, exist_ok=True)\n"
        "  - $pathlib.Path(@ckpt_dir, 'model.pt').write_text(str(@fold))\n"
    )
    return config


@pytest.mark.slow
def test_a_failed_fold_is_one_line_the_others_finish_and_a_rerun_trains_only_it(tmp_path):
    config, ensemble = tiny_bundle(tmp_path), tmp_path / "ensemble"
    argv = ["__main__.py", "run", "training_folds", "--config_file", str(config), "--fail", "1"]
    with pytest.raises(SystemExit, match=r"^error: fold\(s\) 1 did not finish; rerun the same command"):
        train_folds(3, str(ensemble), str(tmp_path / "logs"), argv)
    assert [path.read_text() for path in fold_members(ensemble)] == ["0", "2"]
    assert json.loads((ensemble / "fold2" / FINISHED).read_text()) == {"fold": 2, "num_folds": 3}
    assert not (ensemble / "fold1" / FINISHED).exists()
    train_folds(3, str(ensemble), str(tmp_path / "logs"), argv[:-2])  # fixed: only fold 1 runs again
    assert (tmp_path / "runs.txt").read_text().split() == ["0", "1", "2", "1"]
    assert [path.read_text() for path in fold_members(ensemble)] == ["0", "1", "2"]


@pytest.mark.slow
def test_under_torchrun_a_rank_trains_its_share_of_the_folds_on_its_own_gpu_alone(tmp_path, monkeypatch):
    config = tiny_bundle(tmp_path)
    seen = tmp_path / "environment.txt"
    text = config.read_text().replace("'$import sys'", "'$import sys', '$import os'")
    config.write_text(
        text.replace(
            "training:\n",
            "training:\n"
            f"  - \"$open({str(seen)!r}, 'a').write(os.environ.get('CUDA_VISIBLE_DEVICES', '') + ' ' + "
            "str('RANK' in os.environ) + ' ')\"\n",
        )
    )
    for key, value in {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "1",
        "CUDA_VISIBLE_DEVICES": "4,5",
        "MASTER_PORT": "29500",
    }.items():
        monkeypatch.setenv(key, value)
    train_folds(
        4,
        str(tmp_path / "ensemble"),
        str(tmp_path / "logs"),
        ["__main__.py", "run", "training_folds", "--config_file", str(config)],
    )
    assert (tmp_path / "runs.txt").read_text().split() == ["1", "3"]  # rank 1 of 2: folds 1 and 3
    assert seen.read_text().split() == ["5", "False", "5", "False"]  # its GPU, and no process group to join
