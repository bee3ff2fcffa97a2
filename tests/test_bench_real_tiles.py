"""The real-data benchmark's commands (bench/real_tiles.py): settings reach the commands they are
meant for. (Its training runs take an hour; they are run by hand, not here.)"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
from real_tiles import fold_commands  # noqa: E402


def options(command: list[str]) -> dict[str, str]:
    """``{key: value}`` of a bundle command's ``--key value`` pairs."""
    return {key[2:]: value for key, value in zip(command[::2], command[1::2]) if key.startswith("--")}


def test_training_gets_both_kinds_of_override_and_evaluation_only_the_shared_ones(tmp_path):
    train, evaluate = fold_commands(tmp_path, 15, ["downscale=4"], ["seed=1", "loss#batch=True"])
    trained, evaluated = options(train[5:]), options(evaluate[5:])
    assert train[3:5] == ["run", "training"] and evaluate[3:5] == ["run", "evaluating"]
    assert trained["downscale"] == evaluated["downscale"] == "4"
    assert trained["seed"] == "1" and trained["loss#batch"] == "True" and trained["max_train_minutes"] == "15"
    assert "seed" not in evaluated and "loss#batch" not in evaluated
    assert evaluated["ckpt_path"] == str(tmp_path / "models" / "model.pt") == str(Path(trained["ckpt_dir"]) / "model.pt")
