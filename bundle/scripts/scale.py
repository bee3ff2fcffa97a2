"""A slide's physical scale (microns per level-0 pixel): stated in its file or given by the user,
checked, and how a slide reaches the working scale of a model trained at a stated scale."""

from __future__ import annotations

import logging
import math
import numbers
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import NamedTuple

import tifffile

from .errors import SlideError

__all__ = [
    "AXIS_TOLERANCE",
    "MAX_MPP",
    "SlideScale",
    "WorkingResolution",
    "check_mpp",
    "slide_scale",
    "stated_mpp",
    "working_resolution",
]

logger = logging.getLogger(__name__)

# Even a 1x overview scan is about 10 microns per pixel; a larger value is a unit mistake (centimetres or
# inches read as microns, a dpi read as a scale) or a thumbnail, and working from it would pick a wrong level.
MAX_MPP = 50.0
# The working image is reduced by the same power of two on both axes, so clearly non-square pixels would
# distort every glomerulus; scanners round x and y slightly differently, which this allows.
AXIS_TOLERANCE = 0.05
# Levels are a factor of two apart, so a slide's nearest level is usually somewhat off the model's scale. Within
# this fraction the level is used as it is (training's own zoom augmentation covers it); beyond it the slide is
# resampled to the model's scale once, since glomeruli seen 16 % too large already cost agreement (benchmarks.md).
RESAMPLE_TOLERANCE = 0.05
# A slide much coarser than the model's scale has lost the detail an enlargement would pretend to have, and its
# copy would grow with the square of the factor: beyond this factor it is read as it is, with a warning.
MAX_ENLARGEMENT = 2.0

# OME-XML length units, in microns. "µ" is the micro sign (U+00B5); "μ" the Greek mu (U+03BC) some writers use.
_OME_UNITS = {
    "µm": 1.0,
    "μm": 1.0,
    "um": 1.0,
    "nm": 1e-3,
    "Å": 1e-4,
    "pm": 1e-6,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "in": 25400.0,
}
# TIFF ResolutionUnit values that are physical, in microns per unit; 1 ("none") states only an aspect ratio.
_RESOLUTION_UNITS = {2: 25400.0, 3: 10000.0}
# 72 and 96 dpi are the screen defaults image libraries write when they know nothing; no scanner works there.
_SCREEN_DPI = {72.0, 96.0}
# Aperio puts its scale as a "|MPP = 0.2520|" field of the ImageDescription.
_APERIO_MPP = re.compile(r"(?:^|\|)\s*MPP\s*=\s*([^|\r\n]*)", re.MULTILINE)


@dataclass(frozen=True)
class SlideScale:
    """A slide's scale and where it was found.

    Attributes:
        mpp: microns per level-0 pixel (the mean of the two axes), None where nothing states it.
        source: where it came from: "slide_mpp setting", a CSV location such as "train.csv row 3",
            "Aperio description", "OME-XML", "TIFF resolution tags", or "none".
    """

    mpp: float | None
    source: str


def stated_mpp(tif: tifffile.TiffFile) -> tuple[float, float, str] | None:
    """The microns per pixel an open TIFF states for its first page (:func:`scripts.slides.inspect_slide`
    reads them with the rest of the header).

    The Aperio description is tried first, then OME-XML, then the TIFF resolution tags. Values are
    returned as stated (a value that is not a number comes back as NaN): :func:`check_mpp` judges them.

    Args:
        tif: the open file.

    Returns:
        ``(x, y, source)``: microns per level-0 pixel along each axis and where they were stated
        ("Aperio description", "OME-XML" or "TIFF resolution tags"), or None when the file states no scale.
    """
    page = tif.pages[0]
    description = page.description if isinstance(page, tifffile.TiffPage) else ""
    ome = tif.ome_metadata if tif.is_ome else None
    tags = {name: _tag_value(page, name) for name in ("XResolution", "YResolution", "ResolutionUnit")}
    for found in (_aperio_mpp(description), _ome_mpp(ome, tif.filename), _resolution_mpp(tags)):
        if found is not None:
            return found
    return None


def _tag_value(page, name: str):
    """A tag's value on a page, None where the page lacks it."""
    tag = page.tags.get(name) if isinstance(page, tifffile.TiffPage) else None
    return None if tag is None else tag.value


def _number(text) -> float:
    """A stated value as a float; NaN when it is not a number, so that check_mpp reports it with its source."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _aperio_mpp(description: str) -> tuple[float, float, str] | None:
    """The MPP field of an Aperio ImageDescription (one value for both axes)."""
    if not description.startswith("Aperio"):
        return None
    match = _APERIO_MPP.search(description)
    if match is None:  # some Aperio files (e.g. macro images, old exports) carry no scale
        return None
    mpp = _number(match.group(1).strip())
    return mpp, mpp, "Aperio description"


def _ome_mpp(ome: str | None, path: str) -> tuple[float, float, str] | None:
    """PhysicalSizeX and PhysicalSizeY of the first Pixels element of OME-XML, in microns."""
    if not ome:
        return None
    try:
        root = ElementTree.fromstring(ome)
    except ElementTree.ParseError:
        logger.warning("%s: its OME-XML does not parse; its scale is taken from elsewhere in the file", path)
        return None
    # the OME namespace changes with the schema version (2013-06, 2016-06, ...): match the local tag name
    pixels = next((element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "XY":
        size = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")  # the OME schema's default unit
        if size is None:
            sizes.append(None)
            continue
        if unit.strip() not in _OME_UNITS:
            logger.warning("%s: OME-XML states PhysicalSize%s in %r, not a length unit known here", path, axis, unit)
            return None
        sizes.append(_number(size) * _OME_UNITS[unit.strip()])
    if sizes == [None, None]:
        return None
    # a writer that states one axis means square pixels
    x, y = (sizes[0], sizes[0]) if sizes[1] is None else (sizes[1], sizes[1]) if sizes[0] is None else sizes
    return x, y, "OME-XML"


def _resolution_mpp(tags: dict) -> tuple[float, float, str] | None:
    """Microns per pixel from XResolution and YResolution (pixels per unit) and ResolutionUnit."""
    unit, x_resolution, y_resolution = tags["ResolutionUnit"], tags["XResolution"], tags["YResolution"]
    # TIFF's default unit is the inch, but files that omit the unit (or say "none") state no physical scale
    if unit is None or int(unit) not in _RESOLUTION_UNITS or x_resolution is None or y_resolution is None:
        return None
    x_per_unit, y_per_unit = _rational(x_resolution), _rational(y_resolution)
    if int(unit) == 2 and x_per_unit in _SCREEN_DPI and y_per_unit in _SCREEN_DPI:
        return None
    microns = _RESOLUTION_UNITS[int(unit)]
    return _per_pixel(microns, x_per_unit), _per_pixel(microns, y_per_unit), "TIFF resolution tags"


def _rational(value) -> float:
    """A TIFF RATIONAL as a float: tifffile gives (numerator, denominator); NaN for a zero denominator."""
    if isinstance(value, tuple) and len(value) == 2:
        numerator, denominator = value
        return numerator / denominator if denominator else math.nan
    return _number(value)


def _per_pixel(microns_per_unit: float, pixels_per_unit: float) -> float:
    """Microns per pixel; infinite for zero pixels per unit (check_mpp rejects it with its source)."""
    return microns_per_unit / pixels_per_unit if pixels_per_unit else math.inf


def check_mpp(x: float, y: float, where: str) -> float:
    """Check a stated scale and return it as one number.

    Args:
        x: microns per level-0 pixel along x.
        y: microns per level-0 pixel along y.
        where: where the values were stated, for the error message (e.g. ``"slide.tif: OME-XML"``).

    Returns:
        The mean of ``x`` and ``y``.

    Raises:
        SlideError: either value is not a finite number, is not above zero or above :data:`MAX_MPP`, or the
            two differ by more than :data:`AXIS_TOLERANCE` of their mean.
    """
    fix = "state the slide's true scale in microns per level-0 pixel (the slide_mpp setting or an mpp CSV column)"
    for value in (x, y):
        # numbers.Real takes numpy scalars too; bool is refused (a true/false setting is no scale)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise SlideError(f"{where}: microns per pixel {value!r} is not a finite number; {fix}")
        if value <= 0:
            raise SlideError(f"{where}: microns per pixel {value:g} is not above zero; {fix}")
        if value > MAX_MPP:
            raise SlideError(
                f"{where}: microns per pixel {value:g} is above {MAX_MPP:g}, too coarse for a slide scan "
                f"(a unit mistake?); {fix}"
            )
    mean = (x + y) / 2
    if abs(x - y) > AXIS_TOLERANCE * mean:
        raise SlideError(
            f"{where}: pixels are not square ({x:g} x {y:g} microns, more than {AXIS_TOLERANCE:.0%} apart); "
            f"resample the slide to square pixels or {fix}"
        )
    return mean


def slide_scale(
    stated: tuple[float, float, str] | None,
    where: str,
    slide_mpp: float | str | None = None,
    csv_mpp: str | None = None,
    csv_where: str = "",
) -> SlideScale:
    """Find a slide's scale: an explicit setting wins over what the file states.

    The run's ``slide_mpp`` override comes first, then the slide's CSV value, then the file's.
    Every value is checked with :func:`check_mpp`.

    Args:
        stated: what the slide's file states (:func:`stated_mpp`), or None.
        where: the slide file, for messages about what it states.
        slide_mpp: the run's override, one value for every slide; None or an empty string: not given.
        csv_mpp: the slide's ``mpp`` CSV cell as a string; None or an empty string: not given.
        csv_where: where the CSV value is, e.g. ``"train.csv row 3"``; it becomes the source.

    Returns:
        The slide's :class:`SlideScale`; ``SlideScale(None, "none")`` when nothing states a scale.

    Raises:
        SlideError: a given value is not a number, or a value fails :func:`check_mpp`.
    """
    # the config may leave the setting as an empty string rather than null
    if slide_mpp is not None and str(slide_mpp).strip():
        return _given_scale(slide_mpp, "slide_mpp setting")
    if csv_mpp is not None and csv_mpp.strip():
        return _given_scale(csv_mpp, csv_where or "mpp CSV column")
    if stated is None:
        return SlideScale(None, "none")
    x, y, source = stated
    return SlideScale(check_mpp(x, y, f"{where}: {source}"), source)


def _given_scale(value: float | str, where: str) -> SlideScale:
    """A user-given scale (one number for both axes), checked."""
    number = value  # a number is passed on as it is (check_mpp refuses a bool)
    if not isinstance(value, numbers.Real):
        try:
            number = float(str(value).strip())
        except ValueError:
            raise SlideError(
                f"{where}: mpp {value!r} is not a number; give microns per level-0 pixel, e.g. 0.25"
            ) from None
    return SlideScale(check_mpp(number, number, where), where)


class WorkingResolution(NamedTuple):
    """How a slide reaches the working resolution.

    Attributes:
        downscale: level-0 pixels per working pixel of the image that is read: a power of two, the
            pyramid level read.
        resample: level-0 pixels per working pixel when the slide is first resampled to the working
            scale (its copy is then read at ``downscale`` 1); None when a pyramid level is read as it is.
    """

    downscale: int
    resample: float | None = None


def working_resolution(
    scale: SlideScale, working_mpp: float | None, downscale: int, slide_id: str
) -> WorkingResolution:
    """How a slide is brought to the model's working scale.

    The pyramid level nearest ``working_mpp`` is read as it is when it lies within
    ``RESAMPLE_TOLERANCE`` of it; otherwise the slide is resampled to ``working_mpp`` exactly
    (between two levels, or coarser than the model's scale by up to ``MAX_ENLARGEMENT``; a slide
    coarser still is read at level 0 with a warning).

    Args:
        scale: the slide's scale.
        working_mpp: microns per pixel the model was trained at; None: the model states none.
        downscale: the configured downscale, used when either scale is unknown.
        slide_id: the slide's name, for the log.

    Returns:
        The :class:`WorkingResolution`; ``downscale`` as it is when either scale is unknown.

    Raises:
        ValueError: ``working_mpp`` is not a positive finite number (a configuration mistake).
    """
    if working_mpp is None:
        return WorkingResolution(downscale)
    if not math.isfinite(working_mpp) or working_mpp <= 0:
        raise ValueError(f"working_mpp must be a positive number of microns per pixel, got {working_mpp!r}")
    if scale.mpp is None:
        logger.info(
            "%s: the slide states no scale (microns per pixel), so it works at downscale %d; "
            "the slide_mpp setting or an mpp CSV column sets it",
            slide_id,
            downscale,
        )
        return WorkingResolution(downscale)
    factor = round(working_mpp / scale.mpp, 6)  # a ratio like 1 / (0.5 / 1.4) is 2.8, not 2.8000000000000003
    # a tie between two levels goes to the finer one: detail is kept rather than lost
    nearest = 2 ** max(0, math.ceil(math.log2(factor) - 0.5))
    if abs(nearest / factor - 1) <= RESAMPLE_TOLERANCE:
        return WorkingResolution(nearest)
    if factor < 1 / MAX_ENLARGEMENT:
        logger.warning(
            "%s: scanned at %g microns per pixel, over %g times coarser than the model's working_mpp %g: it is "
            "read as it is, and glomeruli will look smaller than in training and may be missed",
            slide_id,
            scale.mpp,
            MAX_ENLARGEMENT,
            working_mpp,
        )
        return WorkingResolution(1)
    logger.info(
        "%s: scanned at %g microns per pixel, between the pyramid's levels for the model's working_mpp %g: "
        "it is resampled to that scale once (%.4g level-0 pixels per working pixel)",
        slide_id,
        scale.mpp,
        working_mpp,
        factor,
    )
    return WorkingResolution(1, factor)
