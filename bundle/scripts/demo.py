"""A synthetic demo dataset in the exact HuBMAP "Hacking the Kidney" layout, made from a seed.

This module owns the demo dataset: it has slides drawn by :mod:`scripts.demo_tissue`, writes them
as tiled pyramidal JPEG TIFFs with their glomerulus and region polygons,
``train.csv``, ``solution.csv``, ``sample_submission.csv`` and ``HuBMAP-20-dataset_information.csv``,
and keeps the folder whole: it is built in a hidden sibling folder, marked complete last, then
renamed into place, so a killed run never leaves a folder that looks finished.

Everything is drawn from ``numpy.random.default_rng`` streams spawned from one seed, so the same seed
gives the same files byte for byte.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .annotations import rasterize, write_annotations
from .demo_tissue import BAND_ROWS, child_streams, draw_slide
from .errors import DatasetError
from .files import write_csv, write_text_atomic
from .pyramid import write_pyramid
from .rle import rle_encode

__all__ = ["DEMO_SEED", "ensure_demo", "generate_demo"]

DEMO_SEED = 0
FORMAT_VERSION = 2  # bump whenever the generated content changes, so old demo folders are rebuilt
DEMO_MPP = 0.5  # microns per level-0 pixel the demo's slides state: a 20x scan's scale
MARKER = ".demo-complete"  # written last: the folder is whole
OWNER = ".demo-owner"  # written first: the folder is ours, even when incomplete
DEFAULT_SIDES = (4096, 5120)  # drawn height and width range when no size is given
MIN_SIDE = 1024  # smaller slides cannot hold a cortex band wide enough for 100 px glomeruli
INFO_COLUMNS = (
    "image_file,width_pixels,height_pixels,anatomical_structures_segmention_file,glomerulus_segmentation_file,"
    "patient_number,race,ethnicity,sex,age,weight_kilograms,height_centimeters,bmi_kg/m^2,laterality,"
    "percent_cortex,percent_medulla"
).split(",")

# --------------------------------------------------------------------------------------------- API


def generate_demo(
    dataset_dir: str | os.PathLike,
    seed: int = DEMO_SEED,
    num_train: int = 4,
    num_test: int = 1,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write a synthetic HuBMAP-layout dataset to ``dataset_dir``, replacing an earlier demo there.

    Args:
        dataset_dir: the dataset folder; it must be absent, empty, or a demo folder made here.
        seed: everything (ids, sizes, images, polygons, metadata) follows from it.
        num_train: slides in ``train/`` (at least 1).
        num_test: slides in ``test/``.
        size: ``(height, width)`` of every slide, each side at least ``MIN_SIDE``; ``None`` draws each
            slide's sides from ``DEFAULT_SIDES``.

    Returns:
        The dataset folder.

    Raises:
        DatasetError: ``dataset_dir`` is a file or a non-empty folder that is not a demo dataset.
        ValueError: bad counts or size.
    """
    _check_arguments(num_train, num_test, size)
    root = Path(dataset_dir).absolute()  # the build folder goes beside it, even for "." or "data"
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    build = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    build.chmod(0o755)  # mkdtemp makes it private; the dataset is not
    try:
        (build / OWNER).write_text(json.dumps({"generator": __name__, "pid": os.getpid()}))
        _write_dataset(build, seed, num_train, num_test, size)
        marker = {
            "format": FORMAT_VERSION,
            "seed": seed,
            "num_train": num_train,
            "num_test": num_test,
            "size": list(size) if size else None,
        }
        write_text_atomic(build / MARKER, json.dumps(marker, sort_keys=True))
        _swap_in(build, root)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return Path(dataset_dir)


def ensure_demo(dataset_dir: str | os.PathLike, seed: int = DEMO_SEED) -> Path:
    """Return a complete demo dataset at ``dataset_dir``, generating it only when needed.

    A folder whose marker names this seed and the current format is left untouched; an absent,
    empty or incomplete demo folder (or one made from another seed or format) is (re)generated with
    the default counts and sizes.

    Args:
        dataset_dir: the dataset folder.
        seed: the demo seed.

    Returns:
        The dataset folder.

    Raises:
        DatasetError: ``dataset_dir`` is a file or a non-empty folder that is not a demo dataset.
    """
    root = Path(dataset_dir)
    if _marker_matches(root, seed):
        return root
    return generate_demo(root, seed)


# ------------------------------------------------------------------------------ folder bookkeeping


def _check_arguments(num_train: int, num_test: int, size: tuple[int, int] | None) -> None:
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train} and {num_test}")
    if size is not None and min(size) < MIN_SIDE:
        raise ValueError(f"demo slides need both sides >= {MIN_SIDE} pixels, got size={tuple(size)}")


def _marker_matches(root: Path, seed: int) -> bool:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT_VERSION and marker.get("seed") == seed


def _check_replaceable(root: Path) -> None:
    """Refuse to replace anything that is not ours: user data must never be deleted."""
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root} is a file, not a dataset folder; pass a folder path for the demo dataset")
    ours = (root / OWNER).exists() or (root / MARKER).exists()
    if root.is_dir() and not ours and any(root.iterdir()):
        raise DatasetError(
            f"{root} holds files that are not a demo dataset; refusing to overwrite it (use an empty or new folder)"
        )


def _remove_stale_builds(root: Path) -> None:
    """Delete hidden build / old folders left beside ``root`` by killed runs (their owner is dead)."""
    for pattern in (".partial-*", ".old-*"):
        for leftover in glob.glob(glob.escape(str(root.parent / f".{root.name}")) + pattern):
            if _owner_is_dead(Path(leftover)):
                shutil.rmtree(leftover, ignore_errors=True)


def _owner_is_dead(folder: Path) -> bool:
    try:
        pid = int(json.loads((folder / OWNER).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not ours, or a build that has not written its owner file yet
    if os.name != "posix":
        return False  # no harmless way to ask whether a process lives (os.kill would end it)
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, but someone else's
    return False


def _swap_in(build: Path, root: Path) -> None:
    """Rename the finished build onto ``root``; an earlier demo is moved aside first, then deleted."""
    if not root.exists():
        os.rename(build, root)
        return
    old = build.with_name(build.name.replace(".partial-", ".old-"))
    os.rename(root, old)
    os.rename(build, root)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------- dataset files


@dataclass(frozen=True)
class _Plan:
    """What one slide will be: id, split, level-0 ``(height, width)`` and its own random streams."""

    slide_id: str
    split: str
    shape: tuple[int, int]
    seed: np.random.SeedSequence


def _plan(seed: int, num_train: int, num_test: int, size: tuple[int, int] | None) -> list[_Plan]:
    """Ids and sizes from one stream, then one child stream per slide (so slides are independent)."""
    count = num_train + num_test
    streams = child_streams(np.random.SeedSequence(seed), count + 1)
    rng = np.random.default_rng(streams[0])
    ids: list[str] = []
    while len(ids) < count:
        candidate = f"{int(rng.integers(0, 16**9)):09x}"
        if candidate not in ids:
            ids.append(candidate)
    # sides are drawn even when ``size`` overrides them, so ids never depend on ``size``
    sides = rng.integers(DEFAULT_SIDES[0], DEFAULT_SIDES[1] + 1, size=(count, 2))
    return [
        _Plan(
            slide_id,
            "train" if i < num_train else "test",
            tuple(size) if size else (int(sides[i, 0]), int(sides[i, 1])),
            streams[i + 1],
        )
        for i, slide_id in enumerate(ids)
    ]


def _write_dataset(root: Path, seed: int, num_train: int, num_test: int, size: tuple[int, int] | None) -> None:
    """Write every slide, then the four CSV files, into ``root``."""
    encodings: dict[str, str] = {}
    info_rows = []
    plans = _plan(seed, num_train, num_test, size)
    for plan in plans:
        encodings[plan.slide_id], row = _write_slide(root, plan)
        info_rows.append(row)
    train = [p.slide_id for p in plans if p.split == "train"]
    test = [p.slide_id for p in plans if p.split == "test"]
    write_csv(root / "train.csv", ["id", "encoding"], [[i, encodings[i]] for i in train])
    write_csv(root / "solution.csv", ["id", "encoding"], [[i, encodings[i]] for i in test])
    write_csv(root / "sample_submission.csv", ["id", "predicted"], [[i, ""] for i in test])
    info = [[row[column] for column in INFO_COLUMNS] for row in info_rows]
    write_csv(root / "HuBMAP-20-dataset_information.csv", INFO_COLUMNS, info)


def _write_slide(root: Path, plan: _Plan) -> tuple[str, dict]:
    """Draw one slide and write its TIFF and polygons.

    Returns:
        ``(rle, info_row)``: the glomerulus mask as Kaggle RLE and the dataset-information row.
    """
    slide = draw_slide(plan.seed, plan.shape)
    folder = root / plan.split
    write_pyramid(
        folder / f"{plan.slide_id}.tiff",
        slide.read_band,
        plan.shape,
        tile=BAND_ROWS,
        compression="jpeg",
        quality=90,
        resolution_um=DEMO_MPP,
    )
    if plan.split == "train":  # test polygons are the answer: they go to solution.csv only
        write_annotations(folder / f"{plan.slide_id}.json", slide.glomeruli)
    write_annotations(folder / f"{plan.slide_id}-anatomical-structure.json", slide.regions)
    meta_rng = np.random.default_rng(child_streams(plan.seed, 5)[4])
    return rle_encode(rasterize(slide.glomeruli, plan.shape)), _info_row(meta_rng, plan, slide.cortex_fraction)


def _info_row(rng: np.random.Generator, plan: _Plan, cortex_fraction: float) -> dict:
    """A plausible, made-up donor row for ``HuBMAP-20-dataset_information.csv``."""
    height_cm = rng.uniform(152.0, 193.0)
    bmi = rng.uniform(20.0, 37.0)
    cortex = round(100 * cortex_fraction)
    return {
        "image_file": f"{plan.slide_id}.tiff",
        "width_pixels": plan.shape[1],
        "height_pixels": plan.shape[0],
        "anatomical_structures_segmention_file": f"{plan.slide_id}-anatomical-structure.json",
        "glomerulus_segmentation_file": f"{plan.slide_id}.json",
        "patient_number": int(rng.integers(60000, 70000)),
        "race": str(rng.choice(["White", "Black or African American", "Asian"], p=[0.7, 0.2, 0.1])),
        "ethnicity": str(rng.choice(["Not Hispanic or Latino", "Hispanic or Latino"], p=[0.9, 0.1])),
        "sex": str(rng.choice(["Female", "Male"])),
        "age": int(rng.integers(30, 80)),
        "weight_kilograms": f"{bmi * (height_cm / 100) ** 2:.1f}",
        "height_centimeters": f"{height_cm:.1f}",
        "bmi_kg/m^2": f"{bmi:.1f}",
        "laterality": str(rng.choice(["Left", "Right"])),
        "percent_cortex": cortex,
        "percent_medulla": 100 - cortex,
    }
