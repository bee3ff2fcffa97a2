"""Train the bundle's shipped model on the 16 AIDPATH PAS tiles and write it into ``bundle/models``.

    python bench/train_shipped_model.py                      # about an hour on 2 CPU cores
    python bench/train_shipped_model.py --epochs 1 --models /tmp/m   # a smoke run, written elsewhere

Steps, each resumable (a rerun goes on where the last one stopped):

1. A HuBMAP-layout folder of all 16 tiles (``train/<id>.tiff``, ``train.csv``), written as
   ``bench/real_tiles.py`` writes its folds, from ``../shared/data/aidpath_glomeruli`` (CC BY 4.0).
2. One network on all 16 tiles (``--train_on_all true``: the last epoch's weights): the single
   model, ``models/model.pt``, which is what fine-tuning starts from and what the Model Zoo's
   checks and TorchScript export load.
3. The fold ensemble: ``python -m monai.bundle run training_folds`` (4 folds; each trains on 12
   tiles and keeps its best validated weights on the other 4): ``models/fold<k>/model.pt``, what
   inference runs by default.
4. Every model copied into ``--models`` in half precision, with its ``best.json``.
5. Each fold member, as shipped, scored by ``run evaluating`` (Kaggle Dice at level 0, flip TTA) on
   the 4 tiles its fold held out, which it never trained on; its best epoch was chosen on them,
   so the mean flatters it a little. Printed per tile and overall, and kept in
   ``<work-dir>/results.json``.

Both trainings are the bundle's own commands with the shipped recipe (train.yaml), for
``--epochs`` epochs per network (a count of epochs, not minutes, so that the result does not
depend on the machine's load). Each command's output goes to ``<work-dir>/*.log``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from real_tiles import DATA, bundle_command, last_line, read_dice, read_tiles, run_logged, write_fold

from common import BUNDLE
from scripts.checkpoints import save_half_precision
from scripts.folds import fold_dir, fold_members
from scripts.handlers import MODEL_FILE, RECORD_FILE, read_record

NUM_FOLDS = 4


def train(work: Path, name: str, workflow: str, options: dict[str, str]) -> None:
    """Run one of the bundle's training commands, logged to ``<work>/<name>.log``; exit on failure.
    A network already trained (its ``best.json`` written) is not trained again: a resumed run
    would spend another budget on it."""
    if read_record(options["ckpt_dir"]) is not None:
        print(f"{name}: trained earlier ({options['ckpt_dir']}); skipped", flush=True)
        return
    command = bundle_command(workflow, "bundle/configs/train.yaml", options, [])
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    code, seconds = run_logged(command, work / f"{name}.log")
    if code:
        sys.exit(f"{name} failed (exit {code}): {last_line(work / f'{name}.log')} [{work / f'{name}.log'}]")
    print(f"{name}: {seconds / 60:.1f} min; {last_line(work / f'{name}.log')}", flush=True)


def ship(source: Path, target: Path) -> None:
    """Copy one trained model (``model.pt`` in half precision, ``best.json``) from ``source`` to ``target``."""
    save_half_precision(source / MODEL_FILE, target / MODEL_FILE)
    shutil.copyfile(source / RECORD_FILE, target / RECORD_FILE)


def held_out(dataset: Path, cache: Path, fold: int) -> list[str]:
    """The tiles that fold ``fold`` of train.yaml validates on (never trains on) in ``dataset``."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser.update({"dataset_dir": str(dataset), "cache_dir": str(cache), "fold": fold})
    return [slide.slide_id for slide in parser.get_parsed_content("split").validation]


def evaluate_member(work: Path, tiles: dict, fold: int, member: Path, held: list[str]) -> dict[str, float]:
    """Score one shipped member on its held-out tiles (a dataset of them as ``test/``): ``{tile: Dice}``."""
    root = work / "evaluation" / f"fold{fold}"
    metrics = root / "eval" / "metrics.csv"
    if not metrics.is_file():
        write_fold(root, tiles, held)
        command = bundle_command(
            "evaluating",
            "['bundle/configs/inference.yaml','bundle/configs/evaluate.yaml']",
            {
                "dataset_dir": str(root),
                "cache_dir": str(root / "cache"),
                "ckpt_path": str(member),
                "output_dir": str(root / "eval"),
            },
            [],
        )
        code, _ = run_logged(command, root / "eval.log")
        if code or not metrics.is_file():
            sys.exit(f"evaluating fold {fold} failed (exit {code}): {last_line(root / 'eval.log')}")
    return read_dice(metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="/tmp/shipped_model", help="dataset, checkpoints, logs")
    parser.add_argument("--data", default=str(DATA), help="the AIDPATH tiles (images/, masks/)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs per network")
    parser.add_argument("--models", default=str(BUNDLE / "models"), help="where the shipped weights go")
    args = parser.parse_args()

    work, data = Path(args.work_dir), Path(args.data)
    if not (data / "images").is_dir():
        sys.exit(f"real tiles not found: {data} (images/ and masks/) is absent; nothing to train on")
    dataset = work / "dataset"
    if not (dataset / "train.csv").is_file():
        write_fold(dataset, read_tiles(data), [])
    common = {"dataset_dir": str(dataset), "cache_dir": str(work / "cache"), "max_epochs": str(args.epochs)}
    train(
        work,
        "all_tiles",
        "training",
        {
            **common,
            "train_on_all": "true",
            "ckpt_dir": str(work / "all_tiles"),
            "output_dir": str(work / "logs" / "all_tiles"),
        },
    )
    train(
        work,
        "folds",
        "training_folds",
        {
            **common,
            "num_folds": str(NUM_FOLDS),
            "ckpt_dir": str(work / "folds"),
            "output_dir": str(work / "logs" / "folds"),
        },
    )

    models = Path(args.models)
    ship(work / "all_tiles", models)
    for fold in range(NUM_FOLDS):
        ship(fold_dir(work / "folds", fold), fold_dir(models, fold))
    for path in [models / MODEL_FILE, *fold_members(models)]:
        best = read_record(path.parent)
        print(
            f"{path} ({path.stat().st_size / 2**20:.1f} MiB): epoch {best['epoch']}, validation Dice {best['metric']}"
        )

    tiles = read_tiles(data)
    results = {}
    for fold, member in enumerate(fold_members(models)):
        dice = evaluate_member(work, tiles, fold, member, held_out(dataset, work / "cache", fold))
        results[f"fold{fold}"] = dice
        print(
            f"fold {fold} member on its held-out tiles: "
            + ", ".join(f"{tile} {value:.4f}" for tile, value in dice.items())
            + f" (mean {np.mean(list(dice.values())):.4f})",
            flush=True,
        )
    every = [value for dice in results.values() for value in dice.values()]
    print(
        f"members' held-out Dice over all {len(every)} tiles (Kaggle way, each tile scored by the one member that "
        f"never trained on it): {np.mean(every):.4f}"
    )
    (work / "results.json").write_text(
        json.dumps(
            {"epochs": args.epochs, "held_out_dice": results, "mean_dice": round(float(np.mean(every)), 4)}, indent=1
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
