"""Shared by the benchmark scripts: the bundle on the import path, and slides to measure on."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(BUNDLE))


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory of this process (or of its waited-for children), MiB."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and its waited-for children (such as
    DataLoader workers that have exited), in seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def read_level0(path: Path) -> np.ndarray:
    """A (demo-size) slide's level 0, whole, as ``(h, w, 3) uint8``, through cuCIM."""
    from cucim import CuImage

    return np.asarray(CuImage(str(path)).read_region(location=(0, 0), level=0, device="cpu"))[..., :3]


def demo_test_slide(demo_dir: str | Path) -> Path:
    """The demo's test slide, the demo generated first where it is missing or outdated."""
    from scripts.demo import ensure_demo

    return sorted((ensure_demo(demo_dir) / "test").glob("*.tiff"))[0]


def tiled_slide(
    path: Path,
    source: Path,
    rows: int,
    cols: int,
    glass_cols: int = 0,
    crop: tuple[int, int] | None = None,
    compression: str = "jpeg",
) -> tuple[int, int]:
    """Write a large slide made of ``rows x cols`` copies of a real or demo slide, plus ``glass_cols``
    copies' width of empty glass on the right, band by band (never whole in memory).

    Args:
        path: the slide to write.
        source: the slide to copy.
        rows: copies down.
        cols: copies across.
        glass_cols: copies' width of glass on the right.
        crop: cut the result to this ``(height, width)``.
        compression: ``"jpeg"`` (as scanners write) or ``"zlib"``.

    Returns:
        The slide's ``(height, width)``.
    """
    from scripts.pyramid import write_pyramid

    tile = read_level0(source)
    height, width = crop or (tile.shape[0] * rows, tile.shape[1] * (cols + glass_cols))
    glass = np.full((tile.shape[0], tile.shape[1] * glass_cols, 3), 240, np.uint8)
    strip = np.concatenate([np.concatenate([tile] * cols, axis=1), glass], axis=1)[:, :width]

    def read_band(y0: int, y1: int) -> np.ndarray:
        rows_index = np.arange(y0, y1) % tile.shape[0]
        return strip[rows_index]

    write_pyramid(
        path, read_band, (height, width), compression=compression, quality=90 if compression == "jpeg" else None
    )
    return height, width
