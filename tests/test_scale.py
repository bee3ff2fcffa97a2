"""Slide scale (scripts/scale.py): microns per pixel read from Aperio descriptions, OME-XML and TIFF
resolution tags of real files, checked, overridden by the user's settings, and turned into the
power-of-two working downscale for a model trained at a stated scale."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import tifffile

from scripts.errors import SlideError
from scripts.scale import MAX_MPP, SlideScale, WorkingResolution, check_mpp, slide_scale, working_resolution
from scripts.slides import inspect_slide

DATA = np.zeros((64, 64, 3), np.uint8)
APERIO = (
    "Aperio Image Library v12.0.15\n64x64 [0,0 64x64] (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.2527|"
    "Filename = slide|Date = 01/01/24"
)


def read_file_mpp(path):
    """What the file states, read as every slide's header is (:func:`scripts.slides.inspect_slide`)."""
    return inspect_slide(path).stated_mpp


def scale_of(path, **given):
    """:func:`slide_scale` of a slide file."""
    return slide_scale(read_file_mpp(path), str(path), **given)


def write_ome(path, size, unit):
    metadata = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size}
    metadata.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    tifffile.imwrite(path, DATA, ome=True, metadata=metadata)
    return path


def write_resolution(path, pixels_per_unit, unit):
    tifffile.imwrite(path, DATA, resolution=(pixels_per_unit, pixels_per_unit), resolutionunit=unit)
    return path


def test_aperio_description(tmp_path):
    path = tmp_path / "aperio.tif"
    tifffile.imwrite(path, DATA, description=APERIO)
    assert read_file_mpp(path) == (0.2527, 0.2527, "Aperio description")


def test_aperio_description_without_mpp_states_nothing(tmp_path):
    path = tmp_path / "aperio.tif"
    tifffile.imwrite(path, DATA, description="Aperio Image Library v12.0.15\n64x64|AppMag = 40")
    assert read_file_mpp(path) is None


def test_ome_xml_in_microns(tmp_path):
    assert read_file_mpp(write_ome(tmp_path / "ome.tif", 0.5, "µm")) == (0.5, 0.5, "OME-XML")


def test_ome_xml_units_convert(tmp_path):
    x, y, source = read_file_mpp(write_ome(tmp_path / "nm.tif", 250, "nm"))
    assert (x, y, source) == pytest.approx((0.25, 0.25, "OME-XML"))
    x, y, _ = read_file_mpp(write_ome(tmp_path / "mm.tif", 0.0005, "mm"))
    assert (x, y) == pytest.approx((0.5, 0.5))


def test_ome_xml_without_unit_is_in_microns(tmp_path):
    """The OME schema's default unit is the micron; any namespace version is found by the local tag name."""
    path = tmp_path / "ome.tif"
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2013-06">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="64" SizeY="64" '
        'SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="0.4" PhysicalSizeY="0.41"/></Image></OME>'
    )
    tifffile.imwrite(path, DATA, description=xml, metadata=None)
    assert read_file_mpp(path) == (0.4, 0.41, "OME-XML")


def test_resolution_tags_centimetre_and_inch(tmp_path):
    assert read_file_mpp(write_resolution(tmp_path / "cm.tif", 40000, "CENTIMETER")) == (
        pytest.approx(0.25),
        pytest.approx(0.25),
        "TIFF resolution tags",
    )
    x, y, source = read_file_mpp(write_resolution(tmp_path / "inch.tif", 50800, "INCH"))
    assert (x, y, source) == (pytest.approx(0.5), pytest.approx(0.5), "TIFF resolution tags")


@pytest.mark.parametrize(
    "pixels_per_unit, unit",
    [(40000, "NONE"), (72, "INCH"), (96, "INCH")],
    ids=["unit none", "72 dpi", "96 dpi"],
)
def test_resolution_tags_that_state_no_scale(tmp_path, pixels_per_unit, unit):
    assert read_file_mpp(write_resolution(tmp_path / "slide.tif", pixels_per_unit, unit)) is None


def test_plain_file_states_nothing(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, DATA)
    assert read_file_mpp(path) is None


@pytest.mark.parametrize(
    "x, y",
    [(0.0, 0.0), (-0.25, -0.25), (math.nan, math.nan), (0.25, math.inf), (60.0, 60.0), (0.25, 0.27)],
    ids=["zero", "negative", "nan", "infinite", "too coarse", "not square"],
)
def test_check_mpp_refuses(x, y):
    with pytest.raises(SlideError) as raised:
        check_mpp(x, y, "train.csv row 7")
    message = str(raised.value)
    assert message.startswith("train.csv row 7: ")
    assert "\n" not in message
    assert "slide_mpp" in message  # says what to do


def test_check_mpp_accepts_near_square_pixels():
    assert check_mpp(0.25, 0.26, "here") == pytest.approx(0.255)
    assert check_mpp(MAX_MPP, MAX_MPP, "here") == MAX_MPP
    assert check_mpp(np.float32(0.5), np.float32(0.5), "here") == pytest.approx(0.5)  # numpy scalars are numbers


def test_slide_scale_precedence(tmp_path):
    path = write_resolution(tmp_path / "slide.tif", 40000, "CENTIMETER")  # the file states 0.25
    assert scale_of(path) == SlideScale(pytest.approx(0.25), "TIFF resolution tags")
    assert scale_of(path, csv_mpp="0.5", csv_where="train.csv row 3") == SlideScale(0.5, "train.csv row 3")
    assert scale_of(path, slide_mpp=1.0, csv_mpp="0.5", csv_where="train.csv row 3") == SlideScale(
        1.0, "slide_mpp setting"
    )
    assert scale_of(path, slide_mpp="2", csv_mpp="0.5") == SlideScale(2.0, "slide_mpp setting")
    assert scale_of(path, csv_mpp=" ", csv_where="train.csv row 3") == SlideScale(
        pytest.approx(0.25), "TIFF resolution tags"
    )
    assert scale_of(path, slide_mpp="", csv_mpp="") == SlideScale(pytest.approx(0.25), "TIFF resolution tags")


def test_slide_scale_refuses_bad_values_naming_them(tmp_path):
    path = write_resolution(tmp_path / "slide.tif", 40000, "CENTIMETER")
    with pytest.raises(SlideError, match=r"^train\.csv row 3: mpp 'abc' is not a number"):
        scale_of(path, csv_mpp="abc", csv_where="train.csv row 3")
    with pytest.raises(SlideError, match="^slide_mpp setting: "):
        scale_of(path, slide_mpp="0.25um")
    with pytest.raises(SlideError, match="^train.csv row 4: microns per pixel 0 is not above zero"):
        scale_of(path, csv_mpp="0", csv_where="train.csv row 4")


def test_slide_scale_checks_the_file(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, DATA, description=APERIO.replace("0.2527", "500"))
    with pytest.raises(SlideError, match=r"slide\.tif: Aperio description: microns per pixel 500 is above"):
        scale_of(path)
    assert scale_of(path, slide_mpp=0.5) == SlideScale(0.5, "slide_mpp setting")  # the setting fixes it


def test_slide_scale_with_nothing_stated(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, DATA)
    assert scale_of(path, csv_mpp="") == SlideScale(None, "none")


def test_working_resolution_without_working_mpp_is_the_setting(caplog):
    with caplog.at_level(logging.DEBUG, logger="scripts.scale"):
        assert working_resolution(SlideScale(0.25, "OME-XML"), None, 2, "s1") == WorkingResolution(2, None)
        assert working_resolution(SlideScale(None, "none"), None, 8, "s1") == WorkingResolution(8, None)
    assert caplog.records == []


@pytest.mark.parametrize("mpp, expected", [(0.25, 4), (0.5, 2), (0.2527, 4), (0.243, 4), (1.0, 1), (0.125, 8)])
def test_working_resolution_reads_the_nearest_level_quietly(caplog, mpp, expected):
    with caplog.at_level(logging.INFO, logger="scripts.scale"):
        assert working_resolution(SlideScale(mpp, "OME-XML"), 1.0, 2, "s1") == WorkingResolution(expected, None)
    assert caplog.records == []


@pytest.mark.parametrize("mpp", [0.345, 0.4415, 0.263, 2.0])  # between levels (Hamamatsu 20x, Leica), coarser
def test_working_resolution_resamples_a_slide_off_every_level(caplog, mpp):
    with caplog.at_level(logging.INFO, logger="scripts.scale"):
        resolution = working_resolution(SlideScale(mpp, "Aperio description"), 1.0, 2, "slide-7")
    assert resolution.downscale == 1 and resolution.resample == pytest.approx(1.0 / mpp)
    [record] = caplog.records
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "slide-7" in message and f"{mpp:g}" in message and "resampled" in message and "working_mpp 1" in message


def test_a_slide_far_coarser_than_the_model_is_read_as_it_is_with_a_warning(caplog):
    with caplog.at_level(logging.INFO, logger="scripts.scale"):
        assert working_resolution(SlideScale(4.0, "slide_mpp setting"), 1.0, 2, "overview") == WorkingResolution(1)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "overview" in record.getMessage() and "4 microns" in record.getMessage() and "smaller" in record.getMessage()


def test_working_resolution_without_slide_scale_keeps_the_setting(caplog):
    with caplog.at_level(logging.INFO, logger="scripts.scale"):
        assert working_resolution(SlideScale(None, "none"), 1.0, 4, "slide-9") == WorkingResolution(4, None)
    [record] = caplog.records
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "slide-9" in message and "no scale" in message and "downscale 4" in message and "slide_mpp" in message


def test_working_resolution_refuses_a_bad_working_mpp():
    with pytest.raises(ValueError, match="working_mpp"):
        working_resolution(SlideScale(0.25, "OME-XML"), 0.0, 2, "s1")
