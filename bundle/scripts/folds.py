"""A fold ensemble: every fold of a dataset trained into ``<ckpt_dir>/fold<k>/``, and where its members lie.

    python -m monai.bundle run training_folds --config_file bundle/configs/train.yaml [--key value ...]

runs ``python -m monai.bundle run training`` once per fold with the same configs and settings
plus ``--fold k --ckpt_dir <ckpt_dir>/fold<k> --output_dir <output_dir>/fold<k>``: each fold is a
fresh process, exactly the run a user would start by hand, so a fold that fails or is killed
costs nothing of the others. A fold that finished is marked and skipped on a rerun; one that was
cut short resumes from its own ``last.pt``. Under ``torchrun`` the folds are dealt to the ranks,
one fold per GPU at a time (each rank's runs see only its own GPU).

MONAI has no stock runner for this: ``monai.bundle.run`` runs one workflow of one config, and
``monai.apps`` cross-validation (``CrossValidation``) splits a dataset in memory, not into
training processes that resume.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from .errors import InputError, user_errors
from .files import write_text_atomic
from .handlers import MODEL_FILE, read_record

__all__ = ["FINISHED", "fold_dir", "fold_members", "train_folds"]

FINISHED = "finished.json"  # written beside a fold's model when its training ended well
FOLD_PATTERN = re.compile(r"fold(\d+)")
RUN_ID = "training_folds"
FOLD_RUN_ID = "training"
PER_FOLD_OPTIONS = ("fold", "ckpt_dir", "output_dir")  # set for each fold; the caller's values are the parents
TORCHRUN_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


def fold_dir(ckpt_dir: str | os.PathLike, fold: int) -> Path:
    """The folder of fold ``fold``'s checkpoints."""
    return Path(ckpt_dir) / f"fold{fold}"


def fold_members(folder: str | os.PathLike) -> list[Path]:
    """The members of a fold ensemble folder: its ``fold<k>/model.pt`` files in fold order (empty when none)."""
    members = []
    for child in Path(folder).iterdir():
        match = FOLD_PATTERN.fullmatch(child.name)
        if match and (child / MODEL_FILE).is_file():
            members.append((int(match.group(1)), child / MODEL_FILE))
    return [path for _, path in sorted(members)]


def fold_command(argv: list[str], fold: int, ckpt_dir: str, output_dir: str) -> list[str]:
    """The ``monai.bundle run training`` command line of one fold, from this run's own command line.

    Args:
        argv: this process's ``sys.argv`` (``.../monai/bundle/__main__.py run training_folds --config_file ...``).
        fold: the fold to train.
        ckpt_dir: the ensemble's folder (the fold trains into ``fold<k>/`` under it).
        output_dir: the logs' folder (likewise).

    Returns:
        The command, with the caller's ``--fold``, ``--ckpt_dir`` and ``--output_dir`` replaced.
    """
    if RUN_ID not in argv:
        raise InputError(f"{RUN_ID} runs from the command line: python -m monai.bundle run {RUN_ID} --config_file ...")
    arguments, skip = [], False
    for argument in argv[1:]:
        if skip:
            skip = False
            continue
        name = argument[2:].split("=", 1)[0] if argument.startswith("--") else None
        if name in PER_FOLD_OPTIONS:
            skip = "=" not in argument  # the value is the next argument
            continue
        arguments.append(FOLD_RUN_ID if argument == RUN_ID else argument)
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        *arguments,
        "--fold",
        str(fold),
        "--ckpt_dir",
        str(fold_dir(ckpt_dir, fold)),
        "--output_dir",
        str(Path(output_dir) / f"fold{fold}"),
    ]


def _fold_environment() -> dict[str, str]:
    """The environment of a fold's process: under ``torchrun``, this rank's GPU alone and no process group."""
    environment = {key: value for key, value in os.environ.items() if key not in TORCHRUN_VARIABLES}
    if "LOCAL_RANK" in os.environ:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else None
        local = int(os.environ["LOCAL_RANK"])
        environment["CUDA_VISIBLE_DEVICES"] = devices[local % len(devices)] if devices else str(local)
    return environment


@user_errors
def train_folds(num_folds: int, ckpt_dir: str, output_dir: str, argv: list[str] | None = None) -> None:
    """Train every fold not yet finished, each in its own process (this rank's share under ``torchrun``).

    Args:
        num_folds: the number of folds (``fold`` 0 to ``num_folds - 1``).
        ckpt_dir: the ensemble's folder: fold ``k`` trains into ``<ckpt_dir>/fold<k>/``.
        output_dir: the logs' folder: fold ``k`` logs into ``<output_dir>/fold<k>/``.
        argv: the command line to derive each fold's from (this process's, by default).

    A fold that fails is reported in one line and the others go on; the run then ends with an
    error naming the failed folds.
    """
    argv = list(sys.argv if argv is None else argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    failed = []
    for fold in range(rank, int(num_folds), world):
        finished = fold_dir(ckpt_dir, fold) / FINISHED
        if finished.is_file():
            print(f"fold {fold}: finished earlier ({fold_dir(ckpt_dir, fold)}); skipped", flush=True)
            continue
        command = fold_command(argv, fold, ckpt_dir, output_dir)
        print(f"fold {fold} of {num_folds}: {' '.join(command[1:])}", flush=True)
        code = subprocess.run(command, check=False, env=_fold_environment()).returncode
        if code == 0 and (fold_dir(ckpt_dir, fold) / MODEL_FILE).is_file():
            write_text_atomic(finished, json.dumps({"fold": fold, "num_folds": int(num_folds)}) + "\n")
        else:
            print(f"fold {fold}: training failed (exit {code}; its output is above); the other folds go on", flush=True)
            failed.append(fold)
    if failed:
        raise InputError(
            f"fold(s) {', '.join(map(str, failed))} did not finish; rerun the same command to train them "
            "(finished folds are skipped)"
        )
    if world == 1:  # under torchrun each rank knows only its own folds
        report_folds(ckpt_dir, int(num_folds))


def report_folds(ckpt_dir: str, num_folds: int) -> None:
    """Print each fold's validation Dice and how to run the ensemble."""
    for fold in range(num_folds):
        fields = read_record(fold_dir(ckpt_dir, fold)) or {}
        metric = fields.get("metric")
        print(
            f"fold {fold}: "
            + (f"validation Dice {metric:.4f} (epoch {fields['epoch']})" if metric is not None else "no validation")
        )
    print(
        f"fold ensemble of {len(fold_members(ckpt_dir))} in {ckpt_dir}: segment with it through "
        f"python -m monai.bundle run inference --config_file bundle/configs/inference.yaml --ckpt_path {ckpt_dir}"
    )
