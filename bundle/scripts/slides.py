"""Looking inside slide TIFFs without trusting them, and making every slide safe for cuCIM.

cuCIM is fast at random tiled reads but rejects or crashes on many real files (zstd, deflate with a
predictor, stripped layouts, SubIFD pyramids, channel-first or 5-D shapes, RGBA, 16-bit). Every
slide is therefore inspected with tifffile first; a file cuCIM can read at the working resolution
as it is passes through untouched, anything else is converted once, streaming, into a canonical
tiled pyramidal RGB TIFF in a cache folder (see :mod:`scripts.pyramid`). Scanner formats that only
OpenSlide opens (:mod:`scripts.openslide_formats`) are inspected and converted through OpenSlide.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import tifffile
import zarr

from .errors import SlideError
from .isolated import run_isolated
from .openslide_formats import is_openslide_format, open_slide, openslide_band_reader, openslide_header, probe_in_child
from .pyramid import level_shape, num_levels, write_pyramid
from .resample import reduced_shape, resampled_band_reader
from .scale import stated_mpp

__all__ = [
    "SlideLayout",
    "convert_in_child",
    "ensure_readable",
    "import_cucim_in_background",
    "inspect_slide",
    "read_thumbnail",
    "working_level",
]

logger = logging.getLogger(__name__)

# Compressions cuCIM decodes on the CPU (measured); anything else goes through conversion.
CUCIM_COMPRESSIONS = {1: "none", 5: "lzw", 7: "jpeg", 8: "deflate", 32946: "deflate"}
MAX_PIXELS = 2**34  # about 130000 x 130000: larger headers are corrupt or hostile, not slides
# Slides are prepared several at a time (in threads), and cuCIM opening slides in several threads of
# one process at once crashed it (a segfault in about 1 of 30 runs of 16 threads' first reads), so the
# process's own cuCIM reads take turns; the probes stay parallel in their child processes.
CUCIM_READ_LOCK = threading.Lock()
BOMB_RATIO = 5000  # real slides compress far less, even mostly blank ones (JPEG glass: about 300 to 1)
BOMB_MIN_BYTES = 2**28  # small images may compress further (a blank test image) without harm
MAX_CHUNK_BYTES = 2**30  # a strip or tile is decoded whole: beyond this, memory would not stay bounded
CANONICAL_VERSION = 2  # bump when the canonical layout changes, so caches are rebuilt
# Tiles of the canonical copy: a window not aligned to tiles decodes the tiles it touches whole, and 256-pixel
# tiles waste less of them than 512 (cuCIM read a window of 512 in 0.6 of the time: bench/openslide_read.py).
CANONICAL_TILE = 256


@dataclasses.dataclass(frozen=True)
class SlideLayout:
    """What a slide file holds, as far as reading it is concerned.

    Attributes:
        path: the file.
        shape: level-0 ``(height, width)``.
        axes: tifffile axes of the first series, e.g. ``"YXS"`` or ``"SYX"``.
        levels: ``(height, width)`` of each page in the main IFD chain that cuCIM sees as a level.
        problems: why cuCIM cannot read it as it is at the requested downscale (empty: it can).
        stated_mpp: ``(x, y, source)`` microns per level-0 pixel as the file states them
            (:func:`scripts.scale.stated_mpp`), or None.
        via_openslide: the file is read through OpenSlide (always converted), not tifffile.
    """

    path: Path
    shape: tuple[int, int]
    axes: str
    levels: tuple[tuple[int, int], ...]
    problems: tuple[str, ...]
    stated_mpp: tuple[float, float, str] | None = None
    via_openslide: bool = False


def inspect_slide(path: str | os.PathLike, downscale: int = 1) -> SlideLayout:
    """Read a slide's header with tifffile (a scanner format's with OpenSlide) and list what stops cuCIM
    from reading it directly.

    Args:
        path: slide file.
        downscale: the working resolution; a pyramid level with exactly this reduction is needed.

    Returns:
        The file's :class:`SlideLayout`.

    Raises:
        SlideError: the file is missing, empty, not a TIFF (or not a slide OpenSlide opens), or its header
            is implausible.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: slide file not found")
    stat = path.stat()
    if stat.st_size == 0:
        raise SlideError(f"{path}: file is empty; copy the slide again")
    # a run asks about each slide several times (scale, cache check, thumbnail, working level): one header read
    inspect = _inspect_openslide if is_openslide_format(path) else _inspect_file
    layout = inspect(path, stat.st_size, stat.st_mtime_ns)
    if level_shape(layout.shape, _log2(downscale)) in layout.levels:
        return layout
    return dataclasses.replace(layout, problems=(*layout.problems, f"no pyramid level at downscale {downscale}"))


@functools.lru_cache(maxsize=256)
def _inspect_file(path: Path, size: int, mtime_ns: int) -> SlideLayout:
    """:func:`inspect_slide` of one version of a file (``size`` and ``mtime_ns`` key the cache), but for
    the working level, which depends on the downscale."""
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, series_shape, dtype = series.axes, series.shape, series.dtype
            pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]  # TiffFrames share page 0's layout
            scale = stated_mpp(tif)
    except Exception as error:  # tifffile raises many types on corrupt headers
        raise SlideError(f"{path}: not a readable TIFF ({_short(error)}); re-export it as a tiled TIFF") from None
    if "Y" not in axes or "X" not in axes:
        raise SlideError(f"{path}: TIFF has no image plane (axes {axes!r}); export the slide as an RGB image")
    shape = (series_shape[axes.index("Y")], series_shape[axes.index("X")])
    if shape[0] * shape[1] > MAX_PIXELS or min(shape) < 1:
        raise SlideError(f"{path}: implausible dimensions {shape[1]} x {shape[0]}; the header is corrupt")
    _check_data(path, pages[0])
    levels = tuple(p.shape[:2] for p in pages if _is_rgb_level(p, shape, pages[0]))
    problems = _problems(pages[0], axes, series_shape, dtype)
    return SlideLayout(path, shape, axes, levels, tuple(problems), scale)


@functools.lru_cache(maxsize=256)
def _inspect_openslide(path: Path, size: int, mtime_ns: int) -> SlideLayout:
    """:func:`inspect_slide` of a scanner format OpenSlide reads: no level cuCIM could use, so it is converted.
    The file is opened in a child process first, as cuCIM's probe does, and only then in this one."""
    failure = run_isolated(f"{probe_in_child.__module__}:{probe_in_child.__name__}", str(path))
    if failure is not None:
        raise SlideError(failure if failure.startswith(str(path)) else f"{path}: OpenSlide failed on it ({failure})")
    shape, stated = openslide_header(path)
    if shape[0] * shape[1] > MAX_PIXELS or min(shape) < 1:
        raise SlideError(f"{path}: implausible dimensions {shape[1]} x {shape[0]}; the header is corrupt")
    problem = f"{path.suffix.lower()} is read through OpenSlide"
    return SlideLayout(path, shape, "YXS", (), (problem,), stated, via_openslide=True)


def _check_data(path: Path, page) -> None:
    """Refuse a file whose image data cannot be what its header says: cut short, or a
    decompression bomb (a header claiming far more pixels than the bytes stored could hold)."""
    size = path.stat().st_size
    ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True) if count]
    if ends and max(ends) > size:
        raise SlideError(
            f"{path}: truncated: its image data runs past the end of the file ({size} bytes); copy the slide again"
        )
    claimed = int(np.prod(page.shape)) * page.dtype.itemsize
    stored = sum(page.databytecounts)
    if claimed > BOMB_MIN_BYTES and claimed > BOMB_RATIO * max(stored, 1):
        raise SlideError(
            f"{path}: the header claims {claimed / 2**30:.1f} GiB of pixels but the file stores "
            f"{stored / 2**20:.2f} MiB: a damaged file or a decompression bomb, not opened"
        )
    chunk = int(np.prod(page.chunks)) * page.dtype.itemsize * (page.samplesperpixel if page.planarconfig == 1 else 1)
    if chunk > MAX_CHUNK_BYTES and int(page.compression) != 1:  # uncompressed data is memory-mapped instead
        raise SlideError(
            f"{path}: one {'tile' if page.is_tiled else 'strip'} holds {chunk / 2**30:.1f} GiB, too much "
            "to decode in bounded memory; re-export the slide as a tiled TIFF"
        )


def _short(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:120]


def _is_rgb_level(page, shape: tuple[int, int], first) -> bool:
    """Pages of the main chain that cuCIM treats as pyramid levels of the first page."""
    same_kind = page.samplesperpixel == first.samplesperpixel and page.dtype == first.dtype
    return same_kind and page.shape[0] <= shape[0] and page.shape[1] <= shape[1] and page.is_tiled == first.is_tiled


def _problems(page, axes: str, series_shape: tuple, dtype) -> list[str]:
    """Reasons a file must be converted before cuCIM sees it, at any downscale."""
    problems = []
    if axes != "YXS" or series_shape[-1] != 3:
        problems.append(f"layout {axes} {tuple(series_shape)} is not (H, W, 3)")
    if dtype != np.uint8:
        problems.append(f"{dtype} samples, not uint8")
    if not page.is_tiled:
        problems.append("stripped, not tiled")
    if int(page.compression) not in CUCIM_COMPRESSIONS:
        problems.append(f"{page.compression.name.lower()} compression")
    if int(getattr(page, "predictor", 1)) != 1:
        problems.append("compression with a predictor (crashes cuCIM)")
    if page.planarconfig != 1 and page.samplesperpixel > 1:
        problems.append("channels stored as separate planes")
    if page.subifds:
        problems.append("pyramid stored in SubIFDs (cuCIM sees only level 0)")
    return problems


def _log2(downscale: int) -> int:
    if downscale < 1 or downscale & (downscale - 1):
        raise ValueError(f"downscale must be a power of two (1, 2, 4, ...), got {downscale}")
    return downscale.bit_length() - 1


def working_level(layout: SlideLayout, downscale: int) -> int:
    """Index of the pyramid level whose shape is ``ceil(shape / downscale)``.

    Args:
        layout: an inspected slide with no problems at this downscale.
        downscale: the working resolution, a power of two.

    Returns:
        The level index to pass to cuCIM.
    """
    return layout.levels.index(level_shape(layout.shape, _log2(downscale)))


def import_cucim_in_background() -> threading.Thread:
    """Start importing cuCIM in a thread and return it.

    cuCIM's first import in a process takes half a second or more (on a GPU machine it loads CUDA
    libraries): started before the slides' probes, it overlaps with their child processes, and the
    first in-process read waits only for what is left of it (Python's import lock).
    """
    thread = threading.Thread(target=importlib.import_module, args=("cucim",), name="import-cucim", daemon=True)
    thread.start()
    return thread


def read_thumbnail(path: str | os.PathLike, max_downsample: int = 32) -> tuple[np.ndarray, int]:
    """Read a whole low-resolution level of a cuCIM-readable slide through MONAI's ``WSIReader``.

    Args:
        path: a slide returned by :func:`ensure_readable`.
        max_downsample: the coarsest power-of-two level at or below this reduction is read.

    Returns:
        ``((h, w, 3) uint8 image, downsample)``.
    """
    # imported here, not at the top: converter child processes import this module and need no MONAI
    from monai.data import WSIReader

    layout = inspect_slide(path)
    downsample, level = 1, 0
    while downsample * 2 <= max_downsample and level_shape(layout.shape, _log2(downsample * 2)) in layout.levels:
        downsample *= 2
        level = layout.levels.index(level_shape(layout.shape, _log2(downsample)))
    with CUCIM_READ_LOCK:
        reader = WSIReader(backend="cucim", level=level)
        image, _ = reader.get_data(reader.read(str(path)), level=level)
    return np.ascontiguousarray(np.moveaxis(np.asarray(image), 0, -1)), downsample


def ensure_readable(
    path: str | os.PathLike, cache_dir: str | os.PathLike, downscale: int, resample: float | None = None
) -> Path:
    """Return a path cuCIM can read at ``downscale``: the slide itself, or its canonical copy.

    A file that looks fine is first read by cuCIM in a child process (once; the result is cached),
    because cuCIM kills its process on some files. Conversion also runs in a child process, since
    a decoder can crash on a hostile file too. The copy is written once, streaming, to
    ``cache_dir`` under a name keyed on the source's path, size and modification time (and the
    resampling), so an edited slide is converted again.

    Args:
        path: the slide.
        cache_dir: folder for canonical copies.
        downscale: the working resolution, a power of two.
        resample: level-0 pixels per pixel of a copy resampled to the working scale
            (:func:`scripts.scale.working_resolution`); None: the slide's own pixels.

    Returns:
        Path of a tiled pyramidal RGB TIFF with a level at ``downscale``.

    Raises:
        SlideError: when the file cannot be read or converted.
    """
    layout = inspect_slide(path, downscale)
    stat = layout.path.stat()
    key = f"{layout.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{CANONICAL_VERSION}"
    if resample is not None:
        key += f"|{resample!r}"
    name = f"{layout.path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    cache_dir = Path(cache_dir)
    if not layout.problems and resample is None:
        probed = cache_dir / "probed" / name
        if probed.exists():
            return layout.path
        failure = _probe(layout.path, working_level(layout, downscale))
        if failure is None:
            probed.parent.mkdir(parents=True, exist_ok=True)
            probed.touch()
            return layout.path
        layout = dataclasses.replace(layout, problems=(f"cuCIM failed on it: {failure}",))
    target = cache_dir / f"{name}.tiff"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        why = (
            f"resampled by 1/{resample:.4g} to the working scale"
            if resample is not None
            else "; ".join(layout.problems)
        )
        logger.info("converting %s for cuCIM (%s)", layout.path.name, why)
        _convert_isolated(layout.path, target, downscale, resample)
    return target


def _probe(path: Path, level: int) -> str | None:
    """Read a few regions with cuCIM in a child process; ``None`` when that works."""
    return run_isolated("probe", str(path), str(level))


def _convert_isolated(source: Path, target: Path, downscale: int, resample: float | None) -> None:
    """:func:`convert_to_canonical` in a child process; its failure becomes one line."""
    arguments = (str(source), str(target), str(downscale), "" if resample is None else repr(resample))
    failure = run_isolated(f"{__name__}:{convert_in_child.__name__}", *arguments)
    if failure is not None:
        raise SlideError(
            failure if failure.startswith(str(source)) else f"{source}: could not be converted ({failure})"
        )


def convert_in_child(source: str, target: str, downscale: str, resample: str) -> None:
    """The child side of :func:`_convert_isolated` (arguments as strings): a failure exits with one line."""
    try:
        layout = inspect_slide(source, int(downscale))
        convert_to_canonical(layout, Path(target), int(downscale), float(resample) if resample else None)
    except SlideError as error:
        sys.exit(str(error))  # one line on stderr: run_isolated passes it on


def convert_to_canonical(layout: SlideLayout, target: Path, downscale: int = 1, resample: float | None = None) -> Path:
    """Stream a slide into a tiled pyramidal RGB ``uint8`` TIFF, one band of rows at a time.

    Args:
        layout: the inspected source.
        target: output path (written atomically).
        downscale: the working resolution; the pyramid reaches at least this level, however small the slide.
        resample: level-0 pixels of the source per level-0 pixel of the copy
            (:func:`scripts.resample.resampled_band_reader`); None: the source's own pixels.

    Returns:
        ``target``.
    """
    shape = layout.shape if resample is None else reduced_shape(layout.shape, resample)
    levels = max(num_levels(shape), _log2(downscale) + 1)
    try:
        with _level_bands(layout, resample or 1) as (read_band, level_shape):
            if resample is not None:
                # from the level read, finer than the working scale (level 0 enlarging a coarse slide)
                factor = resample * level_shape[1] / layout.shape[1]
                read_band = resampled_band_reader(read_band, level_shape, factor, shape[1])
            return write_pyramid(
                target, read_band, shape, levels=levels, tile=CANONICAL_TILE, compression="jpeg", quality=95
            )
    except SlideError as error:
        message = str(error)
        raise SlideError(message if message.startswith(str(layout.path)) else f"{layout.path}: {message}") from None
    except Exception as error:
        raise SlideError(
            f"{layout.path}: could not be decoded ({_short(error)}); re-export it as a tiled RGB TIFF"
        ) from None


@contextlib.contextmanager
def _level_bands(layout: SlideLayout, downsample: float = 1):
    """``(read_band(y0, y1), (height, width))`` of the coarsest level of the slide at most ``downsample``
    times smaller than level 0, through OpenSlide or tifffile, open while in use."""

    def coarsest(shapes: list[tuple[int, int]]) -> int:
        # a level's reduction from its width; a millionth of slack for a level whose reduction is exact
        fits = [i for i, shape in enumerate(shapes) if layout.shape[1] / shape[1] <= downsample * (1 + 1e-6)]
        return max(fits, key=lambda i: layout.shape[1] / shapes[i][1], default=0)

    if layout.via_openslide:
        with open_slide(layout.path) as slide:
            level = coarsest([(height, width) for width, height in slide.level_dimensions])
            width, height = slide.level_dimensions[level]
            yield openslide_band_reader(slide, level), (height, width)
        return
    with tifffile.TiffFile(layout.path) as tif:
        series = tif.series[0]
        axes = series.axes
        shapes = [(level.shape[axes.index("Y")], level.shape[axes.index("X")]) for level in series.levels]
        level = coarsest(shapes)
        yield _band_reader(_open_source(layout.path, tif, level), axes), shapes[level]


def _open_source(path: Path, tif: tifffile.TiffFile, level: int = 0):
    """A level of the first series as an array read lazily: level 0 memory-mapped when it is stored
    uncompressed in one piece (even a single huge strip then costs no memory), else tifffile's chunked
    zarr view."""
    if level == 0:
        try:
            return tifffile.memmap(path, series=0, mode="r")
        except ValueError:
            pass
    return zarr.open(tif.series[0].aszarr(level=level), mode="r")


def _band_reader(source, axes: str):
    """A ``read_band(y0, y1) -> (h, W, 3) uint8`` over any tifffile axes order and sample type."""
    channel_axis = next((axes.index(a) for a in "SC" if a in axes), None)
    if channel_axis is None:  # e.g. (1, 1, 3, H, W) with generic axes: the small non-spatial axis
        channel_axis = next((i for i, a in enumerate(axes) if a not in "YX" and source.shape[i] in (3, 4)), None)

    def read_band(y0: int, y1: int) -> np.ndarray:
        index = tuple(
            slice(y0, y1) if a == "Y" else slice(None) if a == "X" or i == channel_axis else 0
            for i, a in enumerate(axes)
        )
        kept = [a for i, a in enumerate(axes) if a in "YX" or i == channel_axis]
        band = np.asarray(source[index])
        order = [kept.index("Y"), kept.index("X")] + (
            [kept.index(axes[channel_axis])] if channel_axis is not None else []
        )
        band = band.transpose(order)
        return _to_rgb8(band)

    return read_band


def _to_rgb8(band: np.ndarray) -> np.ndarray:
    """Bring ``(h, w[, c])`` samples of any common type to ``(h, w, 3) uint8``."""
    if band.ndim == 2:
        band = band[..., None]
    if band.shape[2] == 1 or band.shape[2] == 2:
        band = np.repeat(band[..., :1], 3, axis=2)
    band = band[..., :3]  # drops alpha
    if band.dtype == np.uint8:
        return np.ascontiguousarray(band)
    if band.dtype == np.uint16:
        return (band >> 8).astype(np.uint8)
    if band.dtype == bool:
        return band.astype(np.uint8) * 255
    if np.issubdtype(band.dtype, np.floating):
        return (np.clip(band, 0, 1) * 255 + 0.5).astype(np.uint8)
    raise SlideError(f"{band.dtype} samples are not supported; export the slide as 8-bit RGB")
