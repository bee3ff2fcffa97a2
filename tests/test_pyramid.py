"""Tiled pyramidal TIFFs (scripts/pyramid.py): level shapes, 2x reduction, mask pooling, the
page layout written, lossless level 0, cuCIM reading aligned locations exactly, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from scripts.pyramid import level_shape, num_levels, pool_mask, reduce2x, write_pyramid


def smooth_rgb(shape, seed=0):
    """Random but compressible RGB: noise on a gradient, so every pixel is distinct enough to catch shifts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = np.stack([yy * 255 // max(shape[0] - 1, 1), xx * 255 // max(shape[1] - 1, 1), (yy + xx) % 256], -1)
    return np.clip(base + rng.integers(-20, 21, (*shape, 3)), 0, 255).astype(np.uint8)


def pages_of(path):
    with tifffile.TiffFile(path) as tif:
        return [
            (page.shape, page.is_tiled, page.tilewidth, page.tilelength, int(page.subfiletype), page.asarray())
            for page in tif.pages
        ]


# --- shapes and reductions ----------------------------------------------------------------------


def test_level_shape_is_ceil_division():
    assert level_shape((1001, 1501), 0) == (1001, 1501)
    assert level_shape((1001, 1501), 1) == (501, 751)
    assert level_shape((1001, 1501), 3) == (126, 188)
    assert level_shape((1024, 1), 4) == (64, 1)


def test_num_levels_stops_at_the_smallest_size():
    assert num_levels((512, 300)) == 1
    assert num_levels((513, 300)) == 2
    assert num_levels((1001, 1501)) == 3  # 1501 -> 751 -> 376
    assert num_levels((4000, 100), smallest=1000) == 3  # 4000 -> 2000 -> 1000


def test_reduce2x_mean_rounds_to_nearest():
    band = np.array([[1, 2], [3, 4]], np.uint8)[..., None]  # mean 2.5
    assert reduce2x(band).tolist() == [[[3]]]
    band = np.full((2, 2, 1), 255, np.uint8)
    assert reduce2x(band).tolist() == [[[255]]] and reduce2x(band).dtype == np.uint8


def test_reduce2x_pads_odd_edges_by_repetition():
    band = np.array([[10, 20, 30], [50, 60, 70], [90, 100, 110]], np.uint8)[..., None]
    reduced = reduce2x(band)[..., 0]
    # right column padded with itself: (30+30+70+70)/4 = 50; bottom row: (90+100+90+100)/4 = 95
    assert reduced.tolist() == [[35, 50], [95, 110]]


def test_reduce2x_max_keeps_a_single_pixel():
    band = np.zeros((5, 5, 1), np.uint8)
    band[3, 3] = 1
    reduced = reduce2x(band, "max")
    assert reduced.shape == (3, 3, 1) and reduced[..., 0].tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert reduce2x(band).max() == 0  # the mean of one pixel in four rounds to 0


def test_reduce2x_keeps_channels_separate():
    band = np.zeros((4, 6, 3), np.uint8)
    band[..., 0], band[..., 1], band[..., 2] = 10, 100, 200
    reduced = reduce2x(band)
    assert reduced.shape == (2, 3, 3) and (reduced == [10, 100, 200]).all()


def test_pool_mask_max_and_mean_with_background_padding():
    mask = np.zeros((5, 7), np.uint8)
    mask[4, 6] = 1
    mask[0:2, 0:2] = 1
    pooled = pool_mask(mask, 2)
    assert pooled.shape == (3, 4) and pooled[0, 0] == 1 and pooled[2, 3] == 1 and pooled.sum() == 2
    mean = pool_mask(mask, 2, "mean")
    assert mean[0, 0] == 1.0 and mean[2, 3] == 0.25  # the padding is background
    assert pool_mask(np.ones((9, 9)), 4, "mean")[2, 2] == pytest.approx(1 / 16)


# --- write_pyramid ------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lzw", "zlib", None])
def test_rgb_pyramid_layout_and_pixels(tmp_path, compression):
    shape = (1001, 1501)
    image = smooth_rgb(shape)
    path = write_pyramid(tmp_path / "slide.tiff", lambda y0, y1: image[y0:y1], shape, tile=256, compression=compression)
    assert path == tmp_path / "slide.tiff"
    pages = pages_of(path)
    assert len(pages) == num_levels(shape) == 3
    expected = image
    for level, (page_shape, tiled, tile_w, tile_h, subfiletype, pixels) in enumerate(pages):
        assert page_shape == (*level_shape(shape, level), 3)
        assert tiled and tile_w == tile_h == 256
        assert subfiletype == (0 if level == 0 else 1)
        np.testing.assert_array_equal(pixels, expected, err_msg=f"level {level}")
        expected = reduce2x(expected)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series) == 1 and len(tif.series[0].levels) == 3
        assert not tif.pages[0].subifds


def test_single_channel_pyramid_with_max_reduction(tmp_path):
    shape = (1001, 1501)
    mask = np.zeros(shape, np.uint8)
    mask[::7, ::11] = 255  # isolated pixels: max pooling keeps every one
    path = write_pyramid(
        tmp_path / "mask.tiff", lambda y0, y1: mask[y0:y1], shape, channels=1, levels=4, tile=256, reduce="max"
    )
    pages = pages_of(path)
    assert len(pages) == 4
    expected = mask[..., None]
    for level, (page_shape, tiled, tile_w, _, subfiletype, pixels) in enumerate(pages):
        assert page_shape == level_shape(shape, level) and tiled and tile_w == 256
        assert subfiletype == (0 if level == 0 else 1)
        np.testing.assert_array_equal(pixels, expected[..., 0], err_msg=f"level {level}")
        expected = reduce2x(expected, "max")
    assert pages[3][5].max() == 255 and pages[3][5].mean() > 150  # thin structures survive 8x reduction


def test_a_deflated_mask_of_mostly_empty_tiles_reads_back_exactly(tmp_path):
    shape = (1001, 1501)
    mask = np.zeros(shape, np.uint8)
    mask[300:420, 700:1100] = 255  # a few tiles hold foreground, the rest are empty
    mask[1000, 1500] = 255  # the last pixel, in a tile padded past the edge
    path = write_pyramid(
        tmp_path / "mask.tiff",
        lambda y0, y1: mask[y0:y1],
        shape,
        channels=1,
        tile=256,
        compression="zlib",
        reduce="max",
    )
    expected = mask[..., None]
    for level, (page_shape, _, _, _, _, pixels) in enumerate(pages_of(path)):
        assert page_shape == level_shape(shape, level)
        np.testing.assert_array_equal(pixels, expected[..., 0], err_msg=f"level {level}")
        expected = reduce2x(expected, "max")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_read_band_is_called_top_to_bottom_once_per_tile_row(tmp_path):
    image = smooth_rgb((600, 300))
    calls = []

    def read_band(y0, y1):
        calls.append((y0, y1))
        return image[y0:y1]

    write_pyramid(tmp_path / "s.tiff", read_band, (600, 300), tile=256)
    assert calls == [(0, 256), (256, 512), (512, 600)]


def test_a_band_of_the_wrong_shape_is_refused(tmp_path):
    image = smooth_rgb((300, 300))
    with pytest.raises(ValueError, match="band at row 0"):
        write_pyramid(tmp_path / "s.tiff", lambda y0, y1: image[y0:y1, :200], (300, 300), tile=256)


def test_resolution_is_recorded_per_level(tmp_path):
    image = smooth_rgb((600, 600))
    path = write_pyramid(tmp_path / "s.tiff", lambda y0, y1: image[y0:y1], (600, 600), tile=256, resolution_um=0.5)
    with tifffile.TiffFile(path) as tif:
        assert [round(p.get_resolution("CENTIMETER")[0]) for p in tif.pages] == [20000, 10000]


@pytest.mark.parametrize("shape", [(1001, 1501), (1501, 1001)])
def test_cucim_reads_aligned_locations_exactly(tmp_path, shape):
    from cucim import CuImage

    image = smooth_rgb(shape, seed=3)
    path = write_pyramid(tmp_path / "s.tiff", lambda y0, y1: image[y0:y1], shape, levels=4, tile=256, compression="lzw")
    levels = [p[5] for p in pages_of(path)]
    slide = CuImage(str(path))
    assert slide.resolutions["level_count"] == 4
    rng = np.random.default_rng(0)
    for level in range(4):
        scale = 2**level
        height, width = level_shape(shape, level)
        corners = [(0, 0), ((height - 1) * scale, (width - 1) * scale)]
        corners += [(int(rng.integers(0, height)) * scale, int(rng.integers(0, width)) * scale) for _ in range(6)]
        for y, x in corners:
            h, w = min(40, height - y // scale), min(40, width - x // scale)
            region = np.asarray(slide.read_region(location=(x, y), size=(w, h), level=level, device="cpu"))
            np.testing.assert_array_equal(
                region[..., :3],
                levels[level][y // scale : y // scale + h, x // scale : x // scale + w],
                err_msg=f"level {level} at (y={y}, x={x})",
            )


@pytest.mark.xfail(
    reason="cuCIM maps level-0 locations with one downsample averaged over width and height; "
    "for a tall narrow slide (4000 x 257) it differs from 2**k enough to shift rows",
    strict=True,
)
def test_cucim_alignment_holds_for_tall_narrow_slides(tmp_path):
    from cucim import CuImage

    shape = (4000, 257)
    image = smooth_rgb(shape)
    path = write_pyramid(tmp_path / "s.tiff", lambda y0, y1: image[y0:y1], shape, levels=2, tile=256, compression=None)
    level1 = pages_of(path)[1][5]
    y = 3000  # a multiple of 2
    region = np.asarray(CuImage(str(path)).read_region(location=(0, y), size=(8, 8), level=1, device="cpu"))
    np.testing.assert_array_equal(region[..., :3], level1[y // 2 : y // 2 + 8, :8])


def test_write_leaves_no_temporary_files(tmp_path):
    image = smooth_rgb((300, 400))
    write_pyramid(tmp_path / "s.tiff", lambda y0, y1: image[y0:y1], (300, 400), tile=256)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tiff"]


def test_failed_write_leaves_nothing_behind(tmp_path):
    image = smooth_rgb((700, 400))

    def read_band(y0, y1):
        if y0 >= 512:
            raise RuntimeError("disk read failed")
        return image[y0:y1]

    with pytest.raises(RuntimeError, match="disk read failed"):
        write_pyramid(tmp_path / "s.tiff", read_band, (700, 400), tile=256)
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path):
    image = smooth_rgb((300, 300))
    path = write_pyramid(tmp_path / "s.tiff", lambda y0, y1: image[y0:y1], (300, 300), tile=256)
    before = path.read_bytes()

    def broken(y0, y1):
        raise OSError("gone")

    with pytest.raises(OSError):
        write_pyramid(path, broken, (300, 300), tile=256)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tiff"]
