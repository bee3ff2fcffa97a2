"""Slide files (scripts/slides.py): inspecting the TIFF layouts seen in real data, converting every
one cuCIM cannot read into a canonical pyramid that it reads with the right pixels, passing canonical
files through, caching conversions, one-line errors for broken files, and thumbnails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tifffile

from conftest import patch_dimensions, smooth_rgb, write_slide
from scripts import resample
from scripts import slides as slides_module
from scripts.errors import SlideError
from scripts.isolated import BUNDLE
from scripts.pyramid import level_shape, reduce2x, write_pyramid
from scripts.slides import ensure_readable, inspect_slide, read_thumbnail, working_level

SHAPE = (530, 1100)  # a canonical pyramid of this size has a level at downscale 2 (and 4)
TILE = dict(tile=(256, 256))


RGB = smooth_rgb(SHAPE)
GRAY = RGB[..., 1]
RGB16 = np.stack(np.mgrid[: SHAPE[0], : SHAPE[1]] * [[[60000 / SHAPE[0]]], [[60000 / SHAPE[1]]]] + 2000, -1).astype(
    np.uint16
)[..., [0, 1, 1]]
RGB16[..., 2] = 30000


def write_subifd_pyramid(path):
    with tifffile.TiffWriter(path) as writer:
        writer.write(RGB, photometric="rgb", subifds=1, **TILE)
        writer.write(reduce2x(RGB), photometric="rgb", subfiletype=1, **TILE)


# name: (writer, expected RGB content, a phrase of the problem it must be converted for)
LAYOUTS = {
    "tiled_no_pyramid": (
        lambda p: tifffile.imwrite(p, RGB, photometric="rgb", **TILE),
        RGB,
        "no pyramid level at downscale 2",
    ),
    "zstd": (
        lambda p: tifffile.imwrite(p, RGB, photometric="rgb", compression="zstd", **TILE),
        RGB,
        "zstd compression",
    ),
    "deflate_predictor": (
        lambda p: tifffile.imwrite(p, RGB, photometric="rgb", compression="zlib", predictor=True, **TILE),
        RGB,
        "predictor (crashes cuCIM)",
    ),
    "stripped": (lambda p: tifffile.imwrite(p, RGB, photometric="rgb"), RGB, "stripped, not tiled"),
    "planar_chw": (
        lambda p: tifffile.imwrite(p, np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate", **TILE),
        RGB,
        "channels stored as separate planes",
    ),
    "five_d": (
        lambda p: tifffile.imwrite(p, np.moveaxis(RGB, -1, 0)[None, None], **TILE),
        RGB,
        f"layout QQSYX (1, 1, 3, {SHAPE[0]}, {SHAPE[1]}) is not (H, W, 3)",
    ),
    "rgba": (
        lambda p: tifffile.imwrite(
            p,
            np.dstack([RGB, (np.arange(SHAPE[1]) % 256 + np.zeros(SHAPE)).astype(np.uint8)]),
            photometric="rgb",
            extrasamples=["unassalpha"],
            **TILE,
        ),
        RGB,
        f"layout YXS ({SHAPE[0]}, {SHAPE[1]}, 4)",
    ),
    "rgb16": (
        lambda p: tifffile.imwrite(p, RGB16, photometric="rgb", **TILE),
        (RGB16 / 257).round().astype(np.uint8),
        "uint16 samples, not uint8",
    ),
    "gray": (
        lambda p: tifffile.imwrite(p, GRAY, photometric="minisblack", **TILE),
        np.dstack([GRAY] * 3),
        f"layout YX {SHAPE}",
    ),
    "subifd_pyramid": (write_subifd_pyramid, RGB, "pyramid stored in SubIFDs"),
}


@pytest.fixture()
def cache(tmp_path):
    return tmp_path / "cache"


def written(tmp_path, name):
    path = tmp_path / "src" / f"{name}.tiff"
    path.parent.mkdir(exist_ok=True)
    LAYOUTS[name][0](path)
    return path


def read_level(path, level, shape):
    from cucim import CuImage

    region = CuImage(str(path)).read_region(location=(0, 0), size=(shape[1], shape[0]), level=level, device="cpu")
    return np.asarray(region)[..., :3]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_inspect_names_why_the_layout_needs_conversion(tmp_path, name):
    layout = inspect_slide(written(tmp_path, name), 2)
    assert layout.shape == SHAPE
    assert any(LAYOUTS[name][2] in problem for problem in layout.problems), layout.problems


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_converted_copy_is_read_by_cucim_with_the_source_pixels(tmp_path, cache, name):
    source = written(tmp_path, name)
    expected = LAYOUTS[name][1]
    readable = ensure_readable(source, cache, 2)
    assert readable != source and readable.parent == cache and readable.is_file()
    assert readable.name.startswith(name)
    layout = inspect_slide(readable, 2)
    assert layout.problems == () and layout.shape == SHAPE and layout.axes == "YXS"
    level = working_level(layout, 2)
    working_shape = level_shape(SHAPE, 1)
    pixels = read_level(readable, level, working_shape)
    assert pixels.shape == (*working_shape, 3)
    assert_close_and_aligned(pixels, reduce2x(expected))
    assert_close_and_aligned(read_level(readable, 0, SHAPE), expected)


def assert_close_and_aligned(pixels, expected):
    """JPEG-close (mean abs diff < 3), and closer than the same pixels shifted by one row or column."""
    pixels, expected = pixels.astype(int), expected.astype(int)
    error = np.abs(pixels - expected).mean()
    assert error < 3
    assert error < np.abs(pixels[1:] - expected[:-1]).mean() and error < np.abs(pixels[:-1] - expected[1:]).mean()
    assert error < np.abs(pixels[:, 1:] - expected[:, :-1]).mean()


def test_plain_tiled_file_passes_through_at_full_resolution(tmp_path, cache):
    source = written(tmp_path, "tiled_no_pyramid")
    assert inspect_slide(source, 1).problems == ()
    assert ensure_readable(source, cache, 1) == source
    assert not list(cache.glob("*.tiff"))  # no copy: cuCIM read it in a probe (remembered under probed/)
    assert [p.parent.name for p in cache.rglob("*") if p.is_file()] == ["probed"]


def test_canonical_file_passes_through_unchanged(tmp_path, cache, monkeypatch):
    path = write_slide(tmp_path / "canonical.tiff", RGB)
    before = path.stat().st_mtime_ns
    monkeypatch.setattr(slides_module, "_convert_isolated", lambda *a: pytest.fail("converted a canonical file"))
    for downscale in (1, 2, 4):
        assert ensure_readable(path, cache, downscale) == path
    assert path.stat().st_mtime_ns == before and not list(cache.glob("*.tiff"))


def test_second_call_reuses_the_cached_copy(tmp_path, cache, monkeypatch):
    source = written(tmp_path, "zstd")
    first = ensure_readable(source, cache, 2)
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(slides_module, "_convert_isolated", lambda *a: pytest.fail("converted twice"))
    assert ensure_readable(source, cache, 2) == first
    assert first.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no temporary files either


def test_touched_source_is_converted_again(tmp_path, cache):
    source = written(tmp_path, "stripped")
    first = ensure_readable(source, cache, 2)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second = ensure_readable(source, cache, 2)
    assert second != first and second.is_file() and inspect_slide(second, 2).problems == ()


def test_inspect_lists_the_levels_cucim_sees(tmp_path):
    path = write_pyramid(tmp_path / "p.tiff", lambda y0, y1: RGB[y0:y1], SHAPE, tile=256)
    layout = inspect_slide(path, 4)
    assert layout.levels == ((530, 1100), (265, 550), (133, 275)) and layout.problems == ()
    assert working_level(layout, 1) == 0 and working_level(layout, 4) == 2
    assert inspect_slide(path, 8).problems == ("no pyramid level at downscale 8",)


def test_downscale_must_be_a_power_of_two(tmp_path):
    path = write_slide(tmp_path / "p.tiff", RGB)
    with pytest.raises(ValueError, match="power of two"):
        inspect_slide(path, 3)


def test_ome_tiff_with_one_channel_per_page_is_converted(tmp_path, cache):
    source = tmp_path / "ome.tiff"
    tifffile.imwrite(source, np.moveaxis(RGB, -1, 0)[None, None], ome=True, **TILE)
    assert inspect_slide(source, 2).problems
    readable = ensure_readable(source, cache, 2)
    assert np.abs(read_level(readable, 0, SHAPE).astype(int) - RGB.astype(int)).mean() < 3


def test_small_slide_converted_copy_has_the_working_level(tmp_path, cache):
    source = tmp_path / "small.tiff"
    tifffile.imwrite(source, smooth_rgb((300, 400)), photometric="rgb", **TILE)
    readable = ensure_readable(source, cache, 2)
    assert inspect_slide(readable, 2).problems == ()


# --- broken files -------------------------------------------------------------------------------


def broken_files(tmp_path):
    good = written(tmp_path, "tiled_no_pyramid")
    empty = tmp_path / "empty.tiff"
    empty.write_bytes(b"")
    text = tmp_path / "notes.tiff"
    text.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(good.read_bytes()[:200])
    half = tmp_path / "half.tiff"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {"missing": tmp_path / "missing.tiff", "empty": empty, "text": text, "truncated": truncated, "half": half}


@pytest.mark.parametrize("name", ["missing", "empty", "text", "truncated", "half"])
def test_broken_file_is_a_one_line_slide_error(tmp_path, cache, name):
    path = broken_files(tmp_path)[name]
    with pytest.raises(SlideError) as caught:
        ensure_readable(path, cache, 2)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert not cache.exists() or [p for p in cache.iterdir()] == []  # nothing half-written


@pytest.mark.parametrize("name", ["missing", "empty", "text", "truncated"])
def test_inspect_of_broken_file_is_a_slide_error(tmp_path, name):
    path = broken_files(tmp_path)[name]
    with pytest.raises(SlideError, match=str(path)):
        inspect_slide(path)


# --- thumbnails ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("max_downsample", "expected"), [(1, 1), (2, 2), (3, 2), (4, 4), (32, 4)])
def test_thumbnail_is_the_coarsest_level_within_the_limit(tmp_path, max_downsample, expected):
    path = write_pyramid(tmp_path / "p.tiff", lambda y0, y1: RGB[y0:y1], SHAPE, tile=256, compression="lzw")
    with tifffile.TiffFile(path) as tif:
        pages = [page.asarray() for page in tif.pages]
    thumbnail, downsample = read_thumbnail(path, max_downsample)
    assert downsample == expected
    assert thumbnail.dtype == np.uint8 and thumbnail.shape == (*level_shape(SHAPE, expected.bit_length() - 1), 3)
    np.testing.assert_array_equal(thumbnail, pages[expected.bit_length() - 1])


def test_thumbnails_read_in_several_threads_take_turns_in_cucim(tmp_path, monkeypatch):
    """cuCIM crashed (rarely) when threads of one process opened slides at once, as preparing four
    slides at a time did: the reads must not overlap, and each thread still gets its own slide."""
    from monai.data import WSIReader

    paths = [
        write_pyramid(
            tmp_path / f"s{i}.tiff", lambda y0, y1, i=i: RGB[y0:y1] // (i + 1), SHAPE, tile=256, compression="lzw"
        )
        for i in range(4)
    ]
    inside, most = [0], [0]
    real_read = WSIReader.read

    def read_counting(self, *args, **kwargs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.05)  # long enough for another thread to enter, were it allowed
        try:
            return real_read(self, *args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(WSIReader, "read", read_counting)
    with ThreadPoolExecutor(4) as pool:
        thumbnails = list(pool.map(read_thumbnail, paths))
    assert most[0] == 1
    for i, (thumbnail, downsample) in enumerate(thumbnails):
        np.testing.assert_array_equal(thumbnail, read_thumbnail(paths[i], downsample)[0])
        assert thumbnail.mean() == pytest.approx(thumbnails[0][0].mean() / (i + 1), abs=2)


# --- hostile files --------------------------------------------------------------------------------


def patched_dimensions(tmp_path, width: int, height: int):
    """A small stripped TIFF whose header is then made to claim ``width x height`` pixels."""
    path = tmp_path / "bomb.tiff"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb", compression="zlib", rowsperstrip=64)
    patch_dimensions(path, width, height)
    return path


def test_decompression_bomb_is_refused_before_decoding(tmp_path, cache):
    bomb = patched_dimensions(tmp_path, 60000, 60000)
    with pytest.raises(SlideError, match="decompression bomb") as caught:
        ensure_readable(bomb, cache, 2)
    assert str(bomb) in str(caught.value) and "\n" not in str(caught.value)


def test_a_strip_too_large_to_decode_in_bounded_memory_is_refused(tmp_path, cache, monkeypatch):
    path = tmp_path / "one_strip.tiff"
    tifffile.imwrite(path, RGB, photometric="rgb", compression="zlib", rowsperstrip=RGB.shape[0])
    monkeypatch.setattr(slides_module, "MAX_CHUNK_BYTES", RGB.nbytes // 2)
    with pytest.raises(SlideError, match="one strip holds .* re-export the slide as a tiled TIFF"):
        inspect_slide(path)


def test_a_file_cucim_crashes_on_is_converted_instead(tmp_path, cache, monkeypatch):
    source = written(tmp_path, "tiled_no_pyramid")
    failures = {"probe": "the reader crashed (SIGSEGV)"}
    real = slides_module.run_isolated
    monkeypatch.setattr(
        slides_module, "run_isolated", lambda command, *args: failures.get(command) or real(command, *args)
    )
    readable = ensure_readable(source, cache, 1)
    assert readable != source and readable.parent == cache  # a canonical copy, never the crashing file
    assert inspect_slide(readable, 1).problems == ()


def test_cucim_is_imported_in_a_background_thread():
    """The first import of cuCIM (slow, more so on a GPU machine) overlaps with the probes' child processes."""
    code = (
        "import sys; from scripts.slides import import_cucim_in_background; assert 'cucim' not in sys.modules; "
        "thread = import_cucim_in_background(); thread.join(); print(thread.name, 'cucim' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=BUNDLE, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["import-cucim", "True"]


@pytest.mark.parametrize("suffix", [".tiff", ".ndpi"])  # read with tifffile, and through OpenSlide
def test_a_slide_resampled_between_levels_is_read_from_the_level_just_finer(tmp_path, suffix):
    """4.4 level-0 pixels per working pixel: the copy is resampled from the level at 1/4 (1.1 times its
    scale), not from level 0, and holds the same image either way."""
    image = smooth_rgb((1500, 1700))
    path = write_slide(tmp_path / f"slide{suffix}", image, compression="zlib")
    layout = inspect_slide(path)
    with slides_module._level_bands(layout, 4.4) as (_, shape):
        assert shape == level_shape(image.shape[:2], 2)
    with slides_module._level_bands(layout, 0.7) as (_, shape):  # a coarse slide enlarged: from level 0
        assert shape == image.shape[:2]
    copy = ensure_readable(path, tmp_path / "cache", 1, 4.4)
    assert copy != path and inspect_slide(copy).shape == (341, 387)  # 1500 / 4.4 and 1700 / 4.4, rounded up
    resampled = tifffile.imread(copy, level=0)
    from_level0 = resample.resampled_band_reader(lambda y0, y1: image[y0:y1], image.shape[:2], 4.4)(0, 341)
    # the checkerboard's edges at a slightly different blur; a shift of one pixel would move them everywhere
    assert np.abs(resampled.astype(int) - from_level0).mean() < 3
    assert ensure_readable(path, tmp_path / "cache", 1, 4.4) == copy  # converted once
