"""Reading slides through OpenSlide against cuCIM, side by side on the same Aperio SVS.

    python bench/openslide_read.py                  # the demo's test slide as an SVS, 200 windows
    python bench/openslide_read.py --windows 500 --repeats 3

Writes the demo's test slide (generated on first use) as an Aperio SVS (JPEG 90 tiles of 256, the
scale in the description, reduced levels at 2 and 4) that both libraries open. The path the bundle
takes for NDPI, MRXS, SCN and BIF slides: the same pixels as a file only OpenSlide is asked to open,
converted once into the canonical pyramid cuCIM reads (``slides.ensure_readable``), timed as
megapixels of level 0 per second. Then the same ``--windows`` windows of 512 x 512 at the working
level (downscale 2) are read through cuCIM and OpenSlide from the SVS and through cuCIM from the
converted copy, in turn, for ``--repeats`` rounds; printed: the median milliseconds per window of
each, OpenSlide/cuCIM, and **converted/cuCIM** (goal for reading a scanner format: at most 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from cucim import CuImage

from common import BUNDLE, demo_test_slide, read_level0
from scripts.demo import DEMO_MPP
from scripts.openslide_formats import open_slide
from scripts.slides import ensure_readable, inspect_slide, working_level

LEVELS = (1, 2, 4)  # level-0 pixels per pixel of each level written
WINDOW = 512  # working pixels a side
DOWNSCALE = 2


def write_svs(path: Path, image: np.ndarray) -> None:
    """An Aperio SVS of ``image`` as scanners write it (tifffile's own metadata left out, so that
    OpenSlide reads the Aperio description)."""
    height, width = image.shape[:2]
    description = f"Aperio Image Library v12.0.15\n{width}x{height} (256x256) JPEG/RGB Q=90|MPP = {DEMO_MPP}"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in LEVELS:
            pixels = np.ascontiguousarray(image[::level, ::level])
            options = dict(tile=(256, 256), compression="jpeg", compressionargs={"level": 90}, photometric="rgb")
            first = description if level == 1 else "Aperio Image Library"
            tif.write(pixels, description=first, metadata=None, **options)


def window_origins(shape: tuple[int, int], count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Level-0 ``(x, y)`` of ``count`` windows spread over the slide (the same for both readers)."""
    rng = np.random.default_rng(seed)
    side = WINDOW * DOWNSCALE
    ys = rng.integers(0, max(shape[0] - side, 1), count)
    xs = rng.integers(0, max(shape[1] - side, 1), count)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def time_reads(read, origins) -> float:
    """Median milliseconds per window of ``read(x, y)``."""
    times = []
    for x, y in origins:
        start = time.perf_counter()
        window = read(x, y)
        times.append((time.perf_counter() - start) * 1000)
        assert window.shape[:2] == (WINDOW, WINDOW)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=str(BUNDLE / "data" / "demo"))
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    image = read_level0(demo_test_slide(args.demo))
    work = Path(tempfile.mkdtemp(prefix="openslide_read_"))
    svs = work / "slide.svs"
    write_svs(svs, image)
    origins = window_origins(image.shape[:2], args.windows)
    level = LEVELS.index(DOWNSCALE)

    scanner_format = work / "slide.ndpi"  # a name the bundle reads through OpenSlide (which opens it by content)
    scanner_format.symlink_to(svs)
    start = time.perf_counter()
    converted = ensure_readable(scanner_format, work / "cache", DOWNSCALE)
    seconds = time.perf_counter() - start
    megapixels = image.shape[0] * image.shape[1] / 1e6
    print(
        f"conversion through OpenSlide into cuCIM's pyramid: {megapixels:.1f} MP in {seconds:.1f} s, "
        f"{megapixels / seconds:.1f} MP/s (once per slide)"
    )

    cucim_slide, cucim_copy = CuImage(str(svs)), CuImage(str(converted))
    copy_level = working_level(inspect_slide(converted, DOWNSCALE), DOWNSCALE)
    with open_slide(svs) as slide:
        assert slide.properties.get("openslide.vendor") == "aperio" and slide.level_downsamples[level] == DOWNSCALE

        def through_openslide(x: int, y: int) -> np.ndarray:
            return np.asarray(slide.read_region((x, y), level, (WINDOW, WINDOW)))[..., :3]

        def through_cucim(x: int, y: int) -> np.ndarray:
            return np.asarray(cucim_slide.read_region(location=(x, y), size=(WINDOW, WINDOW), level=level))

        def converted_through_cucim(x: int, y: int) -> np.ndarray:
            return np.asarray(cucim_copy.read_region(location=(x, y), size=(WINDOW, WINDOW), level=copy_level))

        rounds = []
        for _ in range(args.repeats):
            readers = (through_cucim, through_openslide, converted_through_cucim)
            rounds.append(tuple(time_reads(read, origins) for read in readers))
    cucim_ms, openslide_ms, converted_ms = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(
        f"{image.shape[1]} x {image.shape[0]} SVS, {args.windows} windows of {WINDOW} at downscale {DOWNSCALE}, "
        f"{args.repeats} rounds (cuCIM, OpenSlide, cuCIM on the converted copy, ms per window: "
        + "; ".join(", ".join(f"{v:.2f}" for v in r) for r in rounds)
        + ")"
    )
    print(
        f"cuCIM {cucim_ms:.2f} ms, OpenSlide {openslide_ms:.2f} ms per window: OpenSlide/cuCIM "
        f"{openslide_ms / cucim_ms:.2f}; the bundle's reads of a scanner format (cuCIM on its converted copy) "
        f"{converted_ms:.2f} ms: converted/cuCIM {converted_ms / cucim_ms:.2f} (goal: at most 1.5)"
    )


if __name__ == "__main__":
    main()
