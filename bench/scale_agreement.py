"""One model, the same tissue at three scales: do the level-0 masks agree?

    python bench/scale_agreement.py                          # the README job's model (bundle/checkpoints)
    python bench/scale_agreement.py --ckpt bundle/models     # the shipped ensemble

Writes the demo's test slide (generated on first use; it states 0.5 microns per pixel) as it is, at
twice its size stating 0.25 microns per pixel (every pixel repeated 2 x 2: a scan at twice the
resolution with no more detail), and enlarged 1.41 times stating 0.355 (between two pyramid levels of
a model at 1 micron per pixel, the worst case), segments the three in one ``run inference`` with no
setting changed (the model's ``working_mpp`` brings each to its scale: downscale 2 and 4, and a copy
resampled by 1 / 2.82), and prints the Dice between each level-0 mask and the first one's, sampled at
the first one's pixel centres (goal: at least 0.97), and the share of pixels where they differ.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from skimage.transform import resize

from common import BUNDLE, REPO, demo_test_slide, read_level0
from scripts.demo import DEMO_MPP
from scripts.pyramid import write_pyramid


def write_scaled(path: Path, image: np.ndarray, factor: float, mpp: float) -> None:
    """``image`` enlarged ``factor`` times (a whole factor repeats every pixel), stating ``mpp``."""
    if float(factor).is_integer():
        step = int(factor)

        def read_band(y0: int, y1: int) -> np.ndarray:
            rows = image[y0 // step : -(-y1 // step)].repeat(step, axis=0).repeat(step, axis=1)
            return rows[y0 - (y0 // step) * step :][: y1 - y0]

        shape = (image.shape[0] * step, image.shape[1] * step)
    else:
        shape = (round(image.shape[0] * factor), round(image.shape[1] * factor))
        enlarged = (resize(image, (*shape, 3), order=1, preserve_range=True) + 0.5).astype(np.uint8)

        def read_band(y0: int, y1: int) -> np.ndarray:
            return enlarged[y0:y1]

    write_pyramid(path, read_band, shape, tile=512, compression="jpeg", quality=90, resolution_um=mpp)


def level0_centres(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` sampled at the centres of the pixels of an image of ``shape`` covering the same tissue."""
    rows, cols = (
        np.minimum(((np.arange(n) + 0.5) * size / n).astype(int), size - 1)
        for n, size in zip(shape, mask.shape, strict=True)
    )
    return mask[np.ix_(rows, cols)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(BUNDLE / "checkpoints"), help="a model.pt, or a folder of them")
    parser.add_argument("--demo", default=str(BUNDLE / "data" / "demo"))
    parser.add_argument("--work-dir", default=None, help="dataset and outputs (default: a new temporary folder)")
    args = parser.parse_args()

    image = read_level0(demo_test_slide(args.demo))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="scale_agreement_"))
    factors = {"coarse": 1, "fine": 2, "between": 1.41}
    for name, factor in factors.items():
        write_scaled(work / "data" / "test" / f"{name}.tiff", image, factor, DEMO_MPP / factor)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "bundle/configs/inference.yaml",
        "--dataset_dir", str(work / "data"), "--ckpt_path", args.ckpt, "--output_dir", str(work / "out"),
        "--cache_dir", str(work / "cache"),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO)
    summaries = {name: json.loads((work / "out" / "summaries" / f"{name}.json").read_text()) for name in factors}
    masks = {name: tifffile.imread(work / "out" / "masks" / f"{name}.tiff") > 0 for name in factors}
    coarse = masks["coarse"]
    for name, summary in summaries.items():
        print(
            f"{name}: {summary['mpp']:.4g} um/px ({summary['mpp_source']}), {summary['downscale']} level-0 pixels "
            f"per working pixel, {summary['glomeruli']} glomeruli"
        )
    for name in ("fine", "between"):
        sampled = level0_centres(masks[name], coarse.shape)
        dice = 2 * (coarse & sampled).sum() / max(coarse.sum() + sampled.sum(), 1)
        print(
            f"coarse against {name}: Dice between the level-0 masks {dice:.4f} (goal 0.97); "
            f"pixels differing {(coarse != sampled).mean():.4%}"
        )


if __name__ == "__main__":
    main()
