"""Slides in scanner formats that cuCIM does not open and OpenSlide does (Hamamatsu NDPI, 3DHISTECH
MRXS, Leica SCN, Ventana BIF): their size and stated scale, and their level-0 pixels band by band.

:mod:`scripts.slides` treats such a slide as it treats a TIFF cuCIM cannot read: it converts it once,
streaming and in a child process, into the canonical pyramidal TIFF that cuCIM reads, so the tissue
windows then stream exactly as for any other slide. MONAI's ``OpenSlideWSIReader`` reads regions through
the same library for random access; here each slide's level 0 is read once, a band of rows at a time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import SlideError

__all__ = [
    "OPENSLIDE_SUFFIXES",
    "is_openslide_format",
    "open_slide",
    "openslide_band_reader",
    "openslide_header",
    "probe_in_child",
]

# Formats read through OpenSlide. Aperio SVS is a TIFF that cuCIM reads directly (and converts like any
# awkward TIFF when it cannot), so it stays on that faster path.
OPENSLIDE_SUFFIXES = (".ndpi", ".mrxs", ".scn", ".bif")
MPP_KEYS = ("openslide.mpp-x", "openslide.mpp-y")  # OpenSlide's vendor-neutral scale properties

BandReader = Callable[[int, int], np.ndarray]


def is_openslide_format(path: str | os.PathLike) -> bool:
    """Whether a slide file is one of :data:`OPENSLIDE_SUFFIXES` (by its extension, as scanners name them)."""
    return Path(path).suffix.lower() in OPENSLIDE_SUFFIXES


def open_slide(path: str | os.PathLike):
    """Open a slide with OpenSlide.

    Args:
        path: the slide file (for MRXS the ``.mrxs`` index, with its data folder beside it).

    Returns:
        The ``openslide.OpenSlide``.

    Raises:
        SlideError: OpenSlide cannot open it (one line saying what to do).
    """
    import openslide  # imported here: most runs never read these formats

    path = Path(path)
    if path.suffix.lower() == ".mrxs" and not path.with_suffix("").is_dir():
        raise SlideError(
            f"{path}: an MRXS slide keeps its pixels in the folder {path.with_suffix('').name}/ beside it, which "
            "is missing; copy the folder with the .mrxs file"
        )
    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError, ValueError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        raise SlideError(
            f"{path}: OpenSlide cannot open it ({reason}); re-export it as a tiled TIFF or an Aperio SVS"
        ) from None


def openslide_header(path: str | os.PathLike) -> tuple[tuple[int, int], tuple[float, float, str] | None]:
    """A slide's level-0 ``(height, width)`` and the scale it states.

    Args:
        path: the slide file.

    Returns:
        ``(shape, stated)``: ``stated`` is ``(x, y, "OpenSlide mpp")`` microns per pixel as the file
        states them (unchecked: :func:`scripts.scale.check_mpp` judges them), or None.

    Raises:
        SlideError: OpenSlide cannot open it.
    """
    with open_slide(path) as slide:
        width, height = slide.dimensions
        values = [slide.properties.get(key) for key in MPP_KEYS]
    stated = None
    if all(value is not None for value in values):
        stated = (_number(values[0]), _number(values[1]), "OpenSlide mpp")
    return (int(height), int(width)), stated


def probe_in_child(path: str) -> None:
    """Open a slide and decode a small region of each level, in the child process
    :func:`scripts.slides.inspect_slide` starts before it trusts the file (OpenSlide's decoders are native
    code: a crafted file must cost its slide, not the run); a failure exits with one line."""
    try:
        with open_slide(path) as slide:
            for level, (width, height) in enumerate(slide.level_dimensions):
                scale = slide.level_downsamples[level]
                centre = (int(width // 2 * scale), int(height // 2 * scale))
                slide.read_region(centre, level, (min(64, width), min(64, height)))
    except SlideError as error:
        sys.exit(str(error))  # one line on stderr: run_isolated passes it on


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")  # check_mpp names the source of a scale that is not a number


def openslide_band_reader(slide, level: int = 0) -> BandReader:
    """``read_band(y0, y1) -> (y1 - y0, width, 3) uint8``: rows of one level of an open slide.

    OpenSlide gives RGBA in which pixels outside the scanned area are transparent; they become white,
    the glass the tissue mask expects there.

    Args:
        slide: an ``openslide.OpenSlide``.
        level: the level read (OpenSlide's numbering).

    Returns:
        The band reader.
    """
    width = slide.level_dimensions[level][0]
    downsample = slide.level_downsamples[level]  # OpenSlide places regions in level-0 pixels

    def read_band(y0: int, y1: int) -> np.ndarray:
        rgba = np.asarray(slide.read_region((0, round(y0 * downsample)), level, (width, y1 - y0)), dtype=np.uint8)
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = rgba[..., :3].astype(np.uint16)
        return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)

    return read_band
