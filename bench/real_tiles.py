"""Held-out Dice on real tissue: the bundle trained with its shipped defaults on a CPU time budget,
tile-grouped 4-fold cross-validation over the 16 AIDPATH PAS tiles (1024 x 1024, CC BY 4.0).

    python bench/real_tiles.py                          # 4 folds, 15 min of training each (~75 min on CPU)
    python bench/real_tiles.py --folds 0                # one fold only (~20 min)
    python bench/real_tiles.py --folds 0 --minutes 1    # smoke run (a few minutes)
    python bench/real_tiles.py --override downscale=1   # a variant: passed to training and evaluation
    python bench/real_tiles.py --train-override loss#batch=True  # a training-only setting
    python bench/real_tiles.py --override network_def#norm=None  # None (or null) sets null
    python bench/real_tiles.py --members 2 --minutes 7.5  # a 2-network fold ensemble per fold, same compute
    python bench/real_tiles.py --recipe bundle/configs/flexunet_efficientnet.yaml  # another network
    python bench/real_tiles.py --train-recipe bundle/configs/grid_sampling.yaml     # a training-only recipe

What it measures: for each fold, 12 tiles are the training set and 4 are held out. The bundle is
trained exactly as a user would (``python -m monai.bundle run training --config_file
bundle/configs/train.yaml ... --max_train_minutes M``; train.yaml's own validation split is taken
from the 12 training tiles), then its best checkpoint (``models/model.pt``) is evaluated on the 4
held-out tiles (``python -m monai.bundle run evaluating`` with inference.yaml + evaluate.yaml,
``eval_split: test``, which scores ``test/`` against ``solution.csv`` at level 0 and writes
``eval/metrics.csv``). Printed: Dice per held-out tile, per fold mean, the overall mean over all
held-out tiles (Kaggle way: mean over images), training wall-clock minutes per fold (the whole
training command: start-up, slide preparation, training and its validations), and whether the goal
is met (mean Dice >= 0.80 with a 15-minute CPU budget per trained network). Results also go to
``<work-dir>/results.json`` (after each fold); each command's output to ``<work-dir>/fold<k>/{train,eval}.log``.

``--members K`` trains K networks per fold, network k with train.yaml's ``--fold k`` (its own
validation tiles among the 12) into ``models/fold<k>/``, as ``run training_folds`` lays out a fold
ensemble; the folder is evaluated as the ensemble and each member alone (``eval_fold<k>/``), so
ensemble and single network are compared on the same trainings.

Folds: grouped by tile, stratified by glomerulus count (connected components of each mask); tiles
are sorted by count (ties by foreground pixels), dealt in blocks of 4 with a seeded shuffle inside
each block, one tile of each block per fold.

Assumes: the tiles at ``../shared/data/aidpath_glomeruli`` (relative to the repository root:
``images/<id>.png`` RGB, ``masks/<id>.png`` with glomeruli red (255, 0, 0) on black; see its
SOURCE.md); they are never copied into the repository: each fold's HuBMAP-layout folder
(``train/<id>.tiff``, ``train.csv``, ``test/<id>.tiff``, ``solution.csv``, ``sample_submission.csv``;
TIFFs pyramidal, tiled, JPEG 90 as the demo writes them) is rebuilt from scratch under
``--work-dir`` on every run (so no checkpoint is resumed and no result reused). The time budget
is wall clock, so other load on the machine lowers the score; the goal is for a CPU run.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from imagecodecs import imread
from scipy import ndimage

from common import REPO, SHARED
from scripts.files import write_csv, write_text_atomic
from scripts.folds import fold_dir
from scripts.pyramid import write_pyramid
from scripts.rle import rle_encode

DATA = SHARED / "data" / "aidpath_glomeruli"
NUM_FOLDS = 4
GOAL_DICE = 0.80
GOAL_MINUTES = 15
# The tiles state no scale. Their source slides were scanned by an Aperio ScanScope CS at 20x (the
# dataset's authors), about 0.5 microns per pixel, and the tiles' glomeruli measure 135-205 microns
# across at that scale, as human glomeruli do: the tiles are taken as unresized crops (docs/README.md).
AIDPATH_MPP = 0.5


def read_tiles(data: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{id: (rgb image, binary mask)}`` for every tile with both an image and a mask."""
    tiles = {}
    for image_path in sorted((data / "images").glob("*.png")):
        mask_path = data / "masks" / image_path.name
        if not mask_path.is_file():
            continue
        image = imread(image_path)[..., :3]
        mask = imread(mask_path)
        mask = (mask[..., 0] if mask.ndim == 3 else mask) > 127  # glomerulus red (255, 0, 0), background black
        tiles[image_path.stem] = (image, mask.astype(np.uint8))
    return tiles


def make_folds(masks: dict[str, np.ndarray], num_folds: int, seed: int) -> tuple[list[list[str]], dict[str, int]]:
    """Tile-grouped folds with a similar mix of glomerulus counts.

    Tiles are sorted by glomerulus count (then foreground pixels, then id), cut into blocks of
    ``num_folds`` and each block shuffled (seeded) and dealt one tile per fold.

    Returns:
        ``(folds, counts)``: the held-out ids of each fold, and each tile's glomerulus count.
    """
    counts = {tile: int(ndimage.label(mask)[1]) for tile, mask in masks.items()}
    order = sorted(masks, key=lambda tile: (counts[tile], int(masks[tile].sum()), tile))
    rng = random.Random(seed)
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    for start in range(0, len(order), num_folds):
        block = order[start : start + num_folds]
        rng.shuffle(block)
        for fold, tile in enumerate(block):
            folds[fold].append(tile)
    return folds, counts


def write_fold(root: Path, tiles: dict[str, tuple[np.ndarray, np.ndarray]], held_out: list[str]) -> None:
    """A HuBMAP-layout dataset folder: the other tiles to train on, ``held_out`` to test on."""
    train = [tile for tile in tiles if tile not in held_out]
    encodings = {}
    for tile, (image, mask) in tiles.items():
        split = "test" if tile in held_out else "train"
        write_pyramid(
            root / split / f"{tile}.tiff",
            lambda y0, y1, image=image: image[y0:y1],
            image.shape[:2],
            tile=512,
            compression="jpeg",
            quality=90,
            resolution_um=AIDPATH_MPP,
        )
        encodings[tile] = rle_encode(mask)
    write_csv(root / "train.csv", ("id", "encoding"), [(tile, encodings[tile]) for tile in train])
    write_csv(root / "solution.csv", ("id", "encoding"), [(tile, encodings[tile]) for tile in held_out])
    write_csv(root / "sample_submission.csv", ("id", "predicted"), [(tile, "") for tile in held_out])


def bundle_command(workflow: str, configs: str, options: dict[str, str], overrides: list[str]) -> list[str]:
    """``python -m monai.bundle run <workflow>`` with ``--key value`` options, then the overrides."""
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", configs]
    for key, value in options.items():
        command += [f"--{key}", value]
    for override in overrides:
        key, _, value = override.partition("=")
        # MONAI's CLI silently ignores an option whose value parses as None: pass null as an expression
        command += [f"--{key}", "$None" if value in ("None", "null") else value]
    return command


def run_logged(command: list[str], log: Path) -> tuple[int, float]:
    """Run ``command`` in the repository root with its output going to ``log``; ``(exit code, seconds)``."""
    started = time.perf_counter()
    with open(log, "w") as stream:
        stream.write(" ".join(command) + "\n\n")
        stream.flush()
        code = subprocess.run(command, check=False, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT).returncode
    return code, time.perf_counter() - started


def last_line(log: Path) -> str:
    """The last non-empty line of a log, for a one-line failure report."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "(empty log)"


def member_dirs(root: Path, members: int) -> list[Path]:
    """Where each trained network of a fold folder goes: ``models/`` for one, ``models/fold<k>/`` for an ensemble."""
    models = root / "models"
    return [models] if members == 1 else [fold_dir(models, member) for member in range(members)]


def config_files(base: list[str], recipes: list[str]) -> str:
    """The ``--config_file`` value: the base configs, then the recipes merged over them, as a list literal."""
    return repr(base + recipes)


def fold_commands(
    root: Path,
    minutes: float,
    overrides: list[str],
    train_overrides: list[str],
    members: int = 1,
    recipes: list[str] | None = None,
    train_recipes: list[str] | None = None,
) -> tuple[list[list[str]], dict[str, list[str]]]:
    """The training and evaluation commands of one fold folder.

    ``overrides`` go to every command, ``train_overrides`` (keys that only train.yaml has) to training;
    ``recipes`` (config files such as ``flexunet_efficientnet.yaml``) are merged over train.yaml for
    training and over inference.yaml + evaluate.yaml for evaluation, so both build the same network;
    ``train_recipes`` (such as ``grid_sampling.yaml``, whose keys only train.yaml has) over training only.
    With ``members`` > 1 member ``k`` trains with train.yaml's ``fold`` ``k`` (its own 3 validation
    tiles of the 12) into ``models/fold<k>/``, as ``run training_folds`` would, and the ensemble is
    evaluated from the folder as well as each member alone (paired: the same trainings).

    Returns:
        ``(trainings, evaluations)``: one training command per member; ``{output folder name:
        evaluation command}``, ``eval`` being the model's (the ensemble's) and ``eval_fold<k>`` member ``k``'s.
    """
    paths = {"dataset_dir": str(root), "cache_dir": str(root / "cache")}
    recipes, train_recipes = recipes or [], train_recipes or []
    trainings = []
    for member, ckpt_dir in enumerate(member_dirs(root, members)):
        per_member = {} if members == 1 else {"fold": str(member)}
        logs = root / "logs" / ckpt_dir.relative_to(root / "models")
        trainings.append(
            bundle_command(
                "training",
                config_files(["bundle/configs/train.yaml"], recipes + train_recipes),
                {
                    **paths,
                    **per_member,
                    "output_dir": str(logs),
                    "ckpt_dir": str(ckpt_dir),
                    "max_train_minutes": str(minutes),
                },
                overrides + train_overrides,
            )
        )
    checkpoints = {"eval": root / "models" / ("" if members > 1 else "model.pt")}
    if members > 1:
        checkpoints |= {
            f"eval_fold{member}": ckpt_dir / "model.pt" for member, ckpt_dir in enumerate(member_dirs(root, members))
        }
    evaluations = {
        name: bundle_command(
            "evaluating",
            config_files(["bundle/configs/inference.yaml", "bundle/configs/evaluate.yaml"], recipes),
            {**paths, "ckpt_path": str(path), "output_dir": str(root / name)},
            overrides,
        )
        for name, path in checkpoints.items()
    }
    return trainings, evaluations


def read_dice(metrics: Path) -> dict[str, float]:
    """``{slide id: Dice}`` from an evaluation's ``metrics.csv`` (its ``mean`` row left out)."""
    with open(metrics, newline="") as stream:
        return {row["id"]: float(row["dice"]) for row in csv.DictReader(stream) if row["id"] != "mean"}


def run_fold(
    root: Path,
    minutes: float,
    overrides: list[str],
    train_overrides: list[str],
    members: int = 1,
    recipes: list[str] | None = None,
    train_recipes: list[str] | None = None,
) -> dict:
    """Train and evaluate on one fold folder (see :func:`fold_commands`); the fold's record for results.json.

    ``dice`` is the model's (with ``members`` > 1 the ensemble's), ``member_dice`` each member's alone.
    """
    record: dict = {"train_minutes": None, "eval_minutes": None, "dice": {}, "error": None}
    trainings, evaluations = fold_commands(root, minutes, overrides, train_overrides, members, recipes, train_recipes)
    record["train_minutes"] = 0.0
    for member, (train, ckpt_dir) in enumerate(zip(trainings, member_dirs(root, members), strict=True)):
        log = root / ("train.log" if members == 1 else f"train_fold{member}.log")
        code, seconds = run_logged(train, log)
        record["train_minutes"] = round(record["train_minutes"] + seconds / 60, 2)
        if (ckpt_dir / "best.json").is_file():
            record.setdefault("best_validation", []).append(json.loads((ckpt_dir / "best.json").read_text()))
        if code or not (ckpt_dir / "model.pt").is_file():
            record["error"] = f"training failed (exit {code}): {last_line(log)} [{log}]"
            return record
    record["eval_minutes"] = 0.0
    for name, evaluate in evaluations.items():
        code, seconds = run_logged(evaluate, root / f"{name}.log")
        record["eval_minutes"] = round(record["eval_minutes"] + seconds / 60, 2)
        metrics = root / name / "metrics.csv"
        if code or not metrics.is_file():
            record["error"] = (
                f"evaluation failed (exit {code}): {last_line(root / f'{name}.log')} [{root / f'{name}.log'}]"
            )
            return record
        if name == "eval":
            record["dice"] = read_dice(metrics)
        else:
            record.setdefault("member_dice", {})[name.removeprefix("eval_")] = read_dice(metrics)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=list(range(NUM_FOLDS)), help="folds to run (0-3)")
    parser.add_argument("--minutes", type=float, default=GOAL_MINUTES, help="training budget per fold (wall clock)")
    parser.add_argument("--work-dir", default="/tmp/real_tiles", help="fold folders, logs and results.json")
    parser.add_argument("--data", default=str(DATA), help="the AIDPATH tiles (images/, masks/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold shuffle")
    parser.add_argument(
        "--members",
        type=int,
        default=1,
        help="networks per fold (train.yaml folds 0..K-1 of its 12 tiles), evaluated as an ensemble "
        "and each alone; --minutes is each one's budget",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle setting for training and evaluation, e.g. downscale=1 (repeatable)",
    )
    parser.add_argument(
        "--train-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bundle setting for training only, e.g. loss#batch=True (repeatable)",
    )
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="FILE",
        help="config file merged over train.yaml and inference.yaml, e.g. "
        "bundle/configs/flexunet_efficientnet.yaml (repeatable)",
    )
    parser.add_argument(
        "--train-recipe",
        action="append",
        default=[],
        metavar="FILE",
        help="config file merged over train.yaml only, after the recipes, e.g. "
        "bundle/configs/grid_sampling.yaml (repeatable)",
    )
    args = parser.parse_args()

    data = Path(args.data)
    if not (data / "images").is_dir() or not (data / "masks").is_dir():
        sys.exit(f"real tiles not found: {data} (images/ and masks/) is absent; nothing to measure")
    if bad := [fold for fold in args.folds if not 0 <= fold < NUM_FOLDS]:
        sys.exit(f"--folds must be among 0..{NUM_FOLDS - 1}, got {bad}")
    if args.members < 1 or args.members > NUM_FOLDS:
        sys.exit(f"--members must be among 1..{NUM_FOLDS} (one per fold of train.yaml's split), got {args.members}")
    if bad := [o for o in args.override + args.train_override if "=" not in o or not o.partition("=")[0]]:
        sys.exit(f"--override and --train-override take KEY=VALUE, got {bad}")
    if missing := [recipe for recipe in args.recipe + args.train_recipe if not (REPO / recipe).is_file()]:
        sys.exit(f"--recipe or --train-recipe: {', '.join(missing)} not found (a path relative to the repository root)")
    tiles = read_tiles(data)
    if len(tiles) < NUM_FOLDS:
        sys.exit(f"{data}: {len(tiles)} tile(s) with masks; at least {NUM_FOLDS} are needed")
    folds, counts = make_folds({tile: mask for tile, (_, mask) in tiles.items()}, NUM_FOLDS, args.seed)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"{len(tiles)} tiles from {data}; held-out tiles per fold: "
        + "; ".join(f"{k}: {' '.join(f)}" for k, f in enumerate(folds))
    )
    print(
        f"training budget {args.minutes:g} min per network, {args.members} network(s) per fold; "
        f"recipes: {' '.join(args.recipe) or 'none'}; "
        f"training-only recipes: {' '.join(args.train_recipe) or 'none'}; "
        f"overrides: {' '.join(args.override) or 'none'}; "
        f"training-only overrides: {' '.join(args.train_override) or 'none'}; "
        f"work folder {work}",
        flush=True,
    )

    results: dict = {
        "data": str(data),
        "minutes": args.minutes,
        "overrides": args.override,
        "train_overrides": args.train_override,
        "recipes": args.recipe,
        "train_recipes": args.train_recipe,
        "seed": args.seed,
        "members": args.members,
        "glomeruli": counts,
        "folds": {},
    }
    for fold in args.folds:
        root = work / f"fold{fold}"
        shutil.rmtree(root, ignore_errors=True)  # a fresh start: no resumed checkpoint, no reused result
        write_fold(root, tiles, folds[fold])
        print(
            f"fold {fold}: training on {len(tiles) - len(folds[fold])} tiles, "
            f"{args.members} x {args.minutes:g} min ...",
            flush=True,
        )
        record = run_fold(
            root, args.minutes, args.override, args.train_override, args.members, args.recipe, args.train_recipe
        )
        record["held_out"] = folds[fold]
        results["folds"][fold] = record
        summary = (
            f"mean Dice {np.mean(list(record['dice'].values())):.4f}"
            if record["dice"]
            else f"FAILED: {record['error']}"
        )
        print(
            f"fold {fold}: trained {record['train_minutes']} min, evaluated {record['eval_minutes']} min, {summary}",
            flush=True,
        )
        write_text_atomic(
            work / "results.json", json.dumps(results, indent=1) + "\n"
        )  # each finished fold kept, should the run be cut short

    print_table(results)
    write_text_atomic(work / "results.json", json.dumps(results, indent=1) + "\n")
    print(f"results: {work / 'results.json'}")
    if any(record["error"] for record in results["folds"].values()):
        sys.exit(1)


def print_table(results: dict) -> None:
    """Per-tile Dice, fold means, overall mean and the goal line; fills results' ``mean_dice`` and ``goal_met``."""
    print(f"\n{'fold':>4}  {'tile':>6}  {'glom':>4}  {'Dice':>6}  {'train min':>9}")
    all_dice = []
    for fold, record in results["folds"].items():
        for tile in record["held_out"]:
            dice = record["dice"].get(tile)
            text = f"{dice:.4f}" if dice is not None else "  -   "
            print(f"{fold:>4}  {tile:>6}  {results['glomeruli'][tile]:>4}  {text:>6}")
        if record["dice"]:
            all_dice += record["dice"].values()
            record["mean_dice"] = round(float(np.mean(list(record["dice"].values()))), 4)
            print(f"{fold:>4}  {'mean':>6}  {'':>4}  {record['mean_dice']:.4f}  {record['train_minutes']:>9.1f}")
        else:
            print(f"{fold:>4}  failed: {record['error']}")
    complete = all(len(r["dice"]) == len(r["held_out"]) for r in results["folds"].values())
    mean = float(np.mean(all_dice)) if all_dice else float("nan")
    results["mean_dice"] = round(mean, 4)
    folds_run = len(results["folds"])
    print(
        f"\noverall mean Dice over {len(all_dice)} held-out tile(s) in {folds_run} fold(s): {mean:.4f}"
        + (" (the ensemble)" if results.get("members", 1) > 1 else "")
    )
    member_means = {}
    for member in range(results.get("members", 1) if complete else 0):
        scores = [
            dice
            for record in results["folds"].values()
            for dice in record.get("member_dice", {}).get(f"fold{member}", {}).values()
        ]
        if len(scores) == len(all_dice):
            member_means[f"fold{member}"] = round(float(np.mean(scores)), 4)
    if member_means:
        results["member_mean_dice"] = member_means
        print(
            "each member alone (paired: the same trainings): "
            + ", ".join(f"{name} {value:.4f}" for name, value in member_means.items())
            + f"; their mean {np.mean(list(member_means.values())):.4f}"
        )
    within_budget = results["minutes"] <= GOAL_MINUTES
    met = complete and within_budget and mean >= GOAL_DICE
    results["goal_met"] = met
    note = "" if folds_run == NUM_FOLDS else f" (only {folds_run} of {NUM_FOLDS} folds run)"
    if not complete:
        note += " (some tiles have no Dice)"
    print(
        f"goal: mean Dice >= {GOAL_DICE} with a {GOAL_MINUTES}-minute CPU budget per network "
        f"(the issue asks for it as the mean of two seeds' runs): "
        f"{'met' if met else 'not met'}{note}"
    )


if __name__ == "__main__":
    main()
