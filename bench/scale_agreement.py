"""One model, the same tissue at two scales: do the level-0 masks agree?

    python bench/scale_agreement.py                          # the README job's model (bundle/checkpoints)
    python bench/scale_agreement.py --ckpt bundle/models     # the shipped ensemble

Writes the demo's test slide (generated on first use; it states 0.5 microns per pixel) as it is and
at twice its size stating 0.25 microns per pixel (every pixel repeated 2 x 2: a scan at twice the
resolution with no more detail), segments both in one ``run inference`` with no setting changed (the
model's ``working_mpp`` brings both to its scale: downscale 2 and 4), and prints the Dice between the
two level-0 masks, the larger one sampled at the smaller one's pixels (goal: at least 0.97), and the
share of pixels where they differ.
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

from common import BUNDLE, REPO, demo_test_slide, read_level0
from scripts.demo import DEMO_MPP
from scripts.pyramid import write_pyramid


def write_scaled(path: Path, image: np.ndarray, factor: int, mpp: float) -> None:
    """``image`` with every pixel repeated ``factor x factor``, stating ``mpp``, band by band."""

    def read_band(y0: int, y1: int) -> np.ndarray:
        rows = image[y0 // factor : -(-y1 // factor)].repeat(factor, axis=0).repeat(factor, axis=1)
        return rows[y0 - (y0 // factor) * factor :][: y1 - y0]

    shape = (image.shape[0] * factor, image.shape[1] * factor)
    write_pyramid(path, read_band, shape, tile=512, compression="jpeg", quality=90, resolution_um=mpp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=str(BUNDLE / "checkpoints"), help="a model.pt, or a folder of them")
    parser.add_argument("--demo", default=str(BUNDLE / "data" / "demo"))
    parser.add_argument("--work-dir", default=None, help="dataset and outputs (default: a new temporary folder)")
    args = parser.parse_args()

    image = read_level0(demo_test_slide(args.demo))
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="scale_agreement_"))
    for name, factor in (("coarse", 1), ("fine", 2)):
        write_scaled(work / "data" / "test" / f"{name}.tiff", image, factor, DEMO_MPP / factor)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "bundle/configs/inference.yaml",
        "--dataset_dir", str(work / "data"), "--ckpt_path", args.ckpt, "--output_dir", str(work / "out"),
        "--cache_dir", str(work / "cache"),
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO)
    names = ("coarse", "fine")
    summaries = {name: json.loads((work / "out" / "summaries" / f"{name}.json").read_text()) for name in names}
    coarse, fine = (tifffile.imread(work / "out" / "masks" / f"{name}.tiff") > 0 for name in names)
    sampled = fine[::2, ::2]
    dice = 2 * (coarse & sampled).sum() / max(coarse.sum() + sampled.sum(), 1)
    scales = [f"{n} {s['mpp']} um/px ({s['mpp_source']}), downscale {s['downscale']}" for n, s in summaries.items()]
    print("scales: " + "; ".join(scales))
    print(
        f"glomeruli: coarse {summaries['coarse']['glomeruli']}, fine {summaries['fine']['glomeruli']}; "
        f"Dice between the level-0 masks {dice:.4f} (goal 0.97); pixels differing {(coarse != sampled).mean():.4%}"
    )


if __name__ == "__main__":
    main()
