"""Peak memory of ``python -m monai.bundle run inference`` on large slides, measured with
``/usr/bin/time -v``: it must stay under 3 GiB on a 30000 x 40000 slide with half tissue, and grow
with the window batch, not with the slide.

Slides are built from the demo's test slide (tiled, with glass on the right for about half
tissue). Each run is the bundle's inference command, as a user types it, with the trained
checkpoint; printed: peak resident memory per slide size and batch, and wall time.

    python bench/inference_memory.py                       # 30000 x 40000 and 15000 x 20000, batch 4
    python bench/inference_memory.py --sizes 30000x40000 --batches 4 16
    python bench/inference_memory.py --sizes 15000x20000 --suffix .ndpi       # converted through OpenSlide
    python bench/inference_memory.py --sizes 15000x20000 --slide-mpp 0.4      # resampled between levels

The peak counts the child processes that probe, convert or resample a slide, whichever is largest.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cucim import CuImage

from common import BUNDLE, REPO, tiled_slide


def crop_to(path: Path, height: int, width: int, demo_slide: Path) -> None:
    """A slide of exactly ``height x width``: demo tiles on the left half, glass on the right."""
    tile_h, tile_w = CuImage(str(demo_slide)).resolutions["level_dimensions"][0][::-1]
    rows, cols = -(-height // tile_h), -(-(width // 2) // tile_w)
    glass = -(-(width - cols * tile_w) // tile_w)
    tiled_slide(path, demo_slide, rows, cols, glass, crop=(height, width))


def run(dataset: Path, out: Path, batch: int, ckpt: str, extra: list[str]) -> tuple[float, float]:
    """``(peak GiB, seconds)`` of one inference run, with ``extra`` arguments."""
    command = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        str(BUNDLE / "configs" / "inference.yaml"),
        "--dataset_dir",
        str(dataset),
        "--output_dir",
        str(out),
        "--cache_dir",
        str(out / "cache"),
        "--ckpt_path",
        ckpt,
        "--batch_size",
        str(batch),
        *extra,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"inference failed:\n{result.stderr[-3000:]}")
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return peak_kib / 2**20, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["15000x20000", "30000x40000"], help="HEIGHTxWIDTH")
    parser.add_argument("--batches", nargs="+", type=int, default=[4])
    parser.add_argument("--ckpt", default=str(BUNDLE / "models" / "model.pt"))
    parser.add_argument("--demo", default=str(BUNDLE / "data" / "demo"))
    parser.add_argument("--suffix", default=".tiff", help="the slide's file name ending, e.g. .ndpi (OpenSlide)")
    parser.add_argument("--slide-mpp", type=float, default=None, help="the slides' stated scale (--slide_mpp)")
    args = parser.parse_args()
    extra = [] if args.slide_mpp is None else ["--slide_mpp", str(args.slide_mpp)]
    if not Path(args.ckpt).is_file():
        sys.exit(f"no checkpoint at {args.ckpt}: train first (README's first command) or pass --ckpt")
    demo_slide = sorted((Path(args.demo) / "test").glob("*.tiff"))[0]
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
            dataset = Path(folder) / "data"
            (dataset / "test").mkdir(parents=True)
            crop_to(dataset / "test" / f"big{args.suffix}", height, width, demo_slide)
            for batch in args.batches:
                peak, seconds = run(dataset, Path(folder) / f"out{batch}", batch, args.ckpt, extra)
                print(
                    f"slide {width} x {height} (half tissue, {args.suffix}, "
                    f"{args.slide_mpp or 'stated'} um/px), batch {batch}: peak {peak:.2f} GiB "
                    f"(goal < 3 GiB), {seconds:.0f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
