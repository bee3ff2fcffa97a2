"""Datalist and window metadata keys (scripts/keys.py): the slide's keys are the prepared slide's
field names, and the window's are the ones MONAI's whole-slide datasets read."""

from __future__ import annotations

from dataclasses import fields

from monai.data import PatchWSIDataset

from scripts import keys
from scripts.prepare import PreparedSlide


def test_the_slide_keys_name_fields_of_the_prepared_slide_as_it_travels_in_datalists():
    slide = PreparedSlide("s1", "s1.tiff", (700, 900), 1, 2, (700, 900), 2, "stores/s1", True, 2)
    item = slide.as_dict()
    for key in (keys.SLIDE_ID, keys.IMAGE, keys.SHAPE, keys.DOWNSCALE, keys.STORE, *keys.WINDOW_META_KEYS):
        assert key in {field.name for field in fields(PreparedSlide)} and key in item
    assert item[keys.SLIDE_ID] == "s1" and item[keys.DOWNSCALE] == 2 and item[keys.STORE] == "stores/s1"


def test_the_window_keys_are_those_monai_reads_a_region_from():
    dataset = PatchWSIDataset([], patch_size=None, patch_level=0, center_location=False)
    item = {keys.IMAGE: "s1.tiff", keys.LOCATION: [3, 4], keys.SIZE: [8, 6]}
    assert dataset._get_location(item) == (3, 4) and dataset._get_size(item) == (8, 6)
