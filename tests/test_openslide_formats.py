"""Scanner formats through OpenSlide (scripts/openslide_formats.py, and their conversion in
scripts/slides.py): an Aperio file read by both readers with the same pixels and scale, a format only
OpenSlide opens converted into a slide cuCIM reads and prepared like any other, and one line for files
no reader opens."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from conftest import disc_slide, smooth_rgb
from scripts.errors import SlideError
from scripts.files import write_csv
from scripts.openslide_formats import open_slide, openslide_band_reader, openslide_header
from scripts.slides import ensure_readable, inspect_slide, read_thumbnail
from scripts.workflow import inference_slides

openslide = pytest.importorskip("openslide")
APERIO = "Aperio Image Library v12.0.15\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = 0.4990"


def write_aperio(path, image):
    """An Aperio SVS as the scanner lays it out: JPEG tiles, the scale in the first page's description,
    a reduced level (tifffile's own metadata left out, so OpenSlide sees the Aperio description)."""
    height, width = image.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        options = dict(tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
        tif.write(image, description=APERIO.format(w=width, h=height), **options)
        tif.write(np.ascontiguousarray(image[::4, ::4]), description="Aperio Image Library v12.0.15", **options)
    return path


def write_generic(path, image, mpp):
    """A tiled, losslessly compressed TIFF stating its scale; OpenSlide opens it whatever its name."""
    per_cm = 1e4 / mpp
    tifffile.imwrite(
        path, image, tile=(256, 256), compression="zlib", photometric="rgb", resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER", metadata=None,
    )  # fmt: skip
    return path


def test_an_aperio_slide_gives_the_same_pixels_and_scale_through_cucim_and_openslide(tmp_path):
    cucim = pytest.importorskip("cucim")
    image, _ = disc_slide(shape=(700, 900))
    path = write_aperio(tmp_path / "slide.svs", image)
    layout = inspect_slide(path)
    assert not layout.via_openslide and layout.stated_mpp == pytest.approx((0.499, 0.499, "Aperio description"))
    shape, stated = openslide_header(path)
    assert shape == layout.shape == (700, 900) and stated == pytest.approx((0.499, 0.499, "OpenSlide mpp"))
    with open_slide(path) as slide:
        through_openslide = openslide_band_reader(slide)(100, 356)
    through_cucim = np.asarray(cucim.CuImage(str(path)).read_region(location=(0, 100), size=(900, 256), level=0))
    difference = np.abs(through_openslide.astype(int) - through_cucim.astype(int))
    assert through_openslide.shape == through_cucim.shape == (256, 900, 3)
    assert difference.max() <= 2  # the same JPEG tiles, decoded by two libjpeg builds


def test_a_format_only_openslide_opens_is_converted_once_into_a_slide_cucim_reads(tmp_path):
    image = smooth_rgb((700, 900))
    path = write_generic(tmp_path / "slide.ndpi", image, mpp=0.25)
    layout = inspect_slide(path, 4)
    assert layout.via_openslide and layout.problems
    assert layout.stated_mpp == pytest.approx((0.25, 0.25, "OpenSlide mpp"))
    copy = ensure_readable(path, tmp_path / "cache", 4)
    assert copy.suffix == ".tiff" and copy.parent == tmp_path / "cache"
    assert not inspect_slide(copy, 4).problems  # a pyramid cuCIM reads at the working level
    converted = tifffile.imread(copy)
    assert converted.shape == image.shape and np.abs(converted.astype(int) - image).mean() < 3  # JPEG 95
    assert ensure_readable(path, tmp_path / "cache", 4) == copy and len(list((tmp_path / "cache").iterdir())) == 1
    thumbnail, downsample = read_thumbnail(copy)
    assert thumbnail.shape[:2] == (-(-700 // downsample), -(-900 // downsample))


def test_a_scanner_slide_in_test_is_listed_prepared_and_brought_to_the_models_scale(tmp_path):
    root = tmp_path / "data"
    (root / "test").mkdir(parents=True)
    image, _ = disc_slide(shape=(700, 900))
    write_generic(root / "test" / "scan.ndpi", image, mpp=0.25)
    write_csv(root / "sample_submission.csv", ("id", "predicted"), [("scan", "")])
    slides = inference_slides(str(root), str(tmp_path / "no-demo"), str(tmp_path / "cache"), 2, working_mpp=1.0)
    [slide] = slides.slides
    assert slide.slide_id == "scan" and slide.downscale == 4 and slide.shape == (700, 900)
    assert slide.image.endswith(".tiff") and not slides.failed


def test_transparent_pixels_outside_the_scan_become_glass():
    class Slide:  # what OpenSlide's read_region gives: RGBA, alpha 0 where nothing was scanned
        level_dimensions = ((3, 2),)
        level_downsamples = (1.0,)

        def read_region(self, location, level, size):
            rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [0, 0, 0, 0]]] * size[1], np.uint8)
            return rgba[:, : size[0]]

    band = openslide_band_reader(Slide())(0, 2)
    assert band.shape == (2, 3, 3) and band.dtype == np.uint8
    assert band[0, 0].tolist() == [200, 100, 50] and band[0, 1].tolist() == band[1, 2].tolist() == [255, 255, 255]


def test_an_mrxs_without_its_folder_and_a_file_no_reader_opens_are_one_line_each(tmp_path):
    index = tmp_path / "slide.mrxs"
    index.write_text("[GENERAL]\n")
    with pytest.raises(SlideError) as error:
        inspect_slide(index)
    assert "slide/" in str(error.value) and "copy the folder" in str(error.value) and "\n" not in str(error.value)
    garbage = tmp_path / "broken.ndpi"
    garbage.write_bytes(b"not a slide" * 100)
    with pytest.raises(SlideError) as error:
        inspect_slide(garbage)
    message = str(error.value)
    assert message.startswith(f"{garbage}: OpenSlide cannot open it") and "\n" not in message
