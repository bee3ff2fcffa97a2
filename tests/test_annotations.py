"""QuPath GeoJSON (scripts/annotations.py): reading lists and FeatureCollections, MultiPolygons and
holes, rejecting broken files, rasterizing at a downscale and window, tracing masks back to polygons
(whole, or tile by tile as rows arrive), writing QuPath files, and the real HuBMAP annotations of
slide aaa6a05cc."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_path
from scripts import annotations as annotations_module
from scripts.annotations import (
    Annotation,
    PolygonTracer,
    mask_to_annotations,
    rasterize,
    read_annotations,
    write_annotations,
)
from scripts.errors import InputError
from scripts.metrics import dice_score
from scripts.pyramid import pool_mask

SQUARE = [[10, 20], [50, 20], [50, 60], [10, 60], [10, 20]]  # x 10..50, y 20..60
HOLE = [[20, 30], [40, 30], [40, 50], [20, 50], [20, 30]]  # x 20..40, y 30..50
TRIANGLE = [[70, 5], [95, 5], [80, 35], [70, 5]]


def feature(geometry_type, coordinates, name="glomerulus"):
    return {
        "type": "Feature",
        "id": "PathAnnotationObject",
        "geometry": {"type": geometry_type, "coordinates": coordinates},
        "properties": {"classification": {"name": name, "colorRGB": -3140401}, "isLocked": True},
    }


def write_json(path, document):
    path.write_text(json.dumps(document))
    return path


def disc_mask(shape, discs):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, np.uint8)
    for cy, cx, radius in discs:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 1
    return mask


# --- reading -------------------------------------------------------------------------------------


def test_read_qupath_feature_list(tmp_path):
    path = write_json(tmp_path / "a.json", [feature("Polygon", [SQUARE]), feature("Polygon", [TRIANGLE], "Cortex")])
    annotations = read_annotations(path)
    assert [a.name for a in annotations] == ["glomerulus", "Cortex"]
    assert len(annotations[0].rings) == 1
    np.testing.assert_array_equal(annotations[0].rings[0], np.array(SQUARE, float))
    assert annotations[1].rings[0].shape == (4, 2) and annotations[1].rings[0].dtype == np.float64


def test_read_feature_collection(tmp_path):
    document = {"type": "FeatureCollection", "features": [feature("Polygon", [TRIANGLE])]}
    annotations = read_annotations(write_json(tmp_path / "a.geojson", document))
    assert len(annotations) == 1 and annotations[0].rings[0][2].tolist() == [80, 35]


def test_multipolygon_is_split_into_polygons(tmp_path):
    path = write_json(tmp_path / "a.json", [feature("MultiPolygon", [[SQUARE, HOLE], [TRIANGLE]], "Cortex")])
    annotations = read_annotations(path)
    assert [(a.name, len(a.rings)) for a in annotations] == [("Cortex", 2), ("Cortex", 1)]


def test_non_polygon_features_are_skipped(tmp_path):
    document = [
        feature("Point", [5, 5]),
        feature("LineString", [[0, 0], [5, 5]]),
        feature("Polygon", [SQUARE]),
        {"type": "Feature", "geometry": None, "properties": {}},
    ]
    assert len(read_annotations(write_json(tmp_path / "a.json", document))) == 1


def test_class_name_falls_back_to_name_then_unclassified(tmp_path):
    unnamed = feature("Polygon", [SQUARE])
    unnamed["properties"] = {"name": "region 1"}
    bare = feature("Polygon", [SQUARE])
    del bare["properties"]
    annotations = read_annotations(write_json(tmp_path / "a.json", [unnamed, bare]))
    assert [a.name for a in annotations] == ["region 1", "unclassified"]


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "",
        '{"type": "FeatureCollection"}',
        '"a string"',
        "42",
        json.dumps([feature("Polygon", [[[0, 0], [1], [1, 1]]])]),
        json.dumps([{"geometry": {"type": "Polygon"}}]),
    ],
)
def test_broken_files_raise_input_error_naming_the_file(tmp_path, text):
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(InputError, match="broken.json") as caught:
        read_annotations(path)
    assert "\n" not in str(caught.value)


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="nothing.json"):
        read_annotations(tmp_path / "nothing.json")


@pytest.mark.parametrize("document", [[None], [1], [{"geometry": [1]}]])
def test_features_that_are_not_objects_raise_input_error(tmp_path, document):
    with pytest.raises(InputError, match="broken.json"):
        read_annotations(write_json(tmp_path / "broken.json", document))


# --- rasterize ----------------------------------------------------------------------------------


def test_rasterize_fills_pixel_centres_inside_and_leaves_holes_empty():
    mask = rasterize([Annotation("g", (np.array(SQUARE, float), np.array(HOLE, float)))], (80, 100))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert mask[25, 15] == 1 and mask[40, 30] == 0 and mask[55, 45] == 1 and mask[5, 5] == 0
    assert mask[:, :9].sum() == 0 and mask[:19].sum() == 0 and mask[:, 52:].sum() == 0
    assert abs(int(mask.sum()) - (40 * 40 - 20 * 20)) <= 2 * (160 + 80)  # boundary pixels either way


def test_rasterize_clips_polygons_outside_the_mask():
    ring = np.array([[-50, -50], [500, -50], [500, 500], [-50, 500]], float)
    assert rasterize([Annotation("g", (ring,))], (30, 40)).all()


def test_rasterize_at_half_scale_with_origin_matches_full_resolution_window():
    rng = np.random.default_rng(0)
    annotations = []
    for _ in range(6):
        cx, cy, radius = rng.uniform(40, 360), rng.uniform(40, 260), rng.uniform(12, 40)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
        radii = radius * rng.uniform(0.7, 1.0, 24)
        annotations.append(Annotation("g", (np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1),)))
    full = rasterize(annotations, (300, 400))
    origin = (36, 50)  # level-0 (y, x)
    window = full[origin[0] : origin[0] + 2 * 120, origin[1] : origin[1] + 2 * 160]
    expected = pool_mask(window, 2, "mean") >= 0.5
    half = rasterize(annotations, (120, 160), scale=0.5, origin=origin)
    assert expected.sum() > 1000
    assert dice_score(half, expected) > 0.97


def test_rasterize_with_origin_shifts_by_whole_pixels():
    annotations = [Annotation("g", (np.array(TRIANGLE, float),))]
    full = rasterize(annotations, (60, 120))
    np.testing.assert_array_equal(rasterize(annotations, (40, 50), origin=(3, 60)), full[3:43, 60:110])


# --- masks to polygons ---------------------------------------------------------------------------


def test_mask_to_annotations_traces_each_disc():
    mask = disc_mask((120, 160), [(30, 40, 15), (80, 110, 25), (100, 20, 8), (0, 150, 10)])  # one cut by the edge
    annotations = mask_to_annotations(mask, "glomerulus")
    assert len(annotations) == 4 and {a.name for a in annotations} == {"glomerulus"}
    assert all(len(a.rings) == 1 for a in annotations)
    assert dice_score(rasterize(annotations, mask.shape), mask) > 0.95
    first = min(annotations, key=lambda a: a.rings[0][:, 0].mean())  # smallest mean x: the disc at x = 20
    assert abs(first.rings[0][:, 0].mean() - 20) < 1.5 and abs(first.rings[0][:, 1].mean() - 100) < 1.5  # [x, y]


def test_mask_to_annotations_at_scale_and_origin_maps_to_level_0():
    mask = disc_mask((60, 80), [(20, 25, 10), (40, 60, 12)])
    origin = (100.0, 300.0)
    annotations = mask_to_annotations(mask, scale=2, origin=origin)
    assert len(annotations) == 2
    back = rasterize(annotations, mask.shape, scale=0.5, origin=(100, 300))
    assert dice_score(back, mask) > 0.95
    full = rasterize(annotations, (220, 460))
    upsampled = np.kron(mask, np.ones((2, 2), np.uint8))
    assert dice_score(full[100:220, 300:460], upsampled) > 0.95 and full[:100].sum() == 0 and full[:, :300].sum() == 0
    centre = next(a for a in annotations if a.rings[0][:, 0].mean() < 400).rings[0].mean(0)
    assert np.abs(centre - [300 + 2 * 25 + 0.5, 100 + 2 * 20 + 0.5]).max() < 2  # [x, y] at level 0


def test_mask_to_annotations_drops_small_objects_and_empty_masks():
    mask = disc_mask((60, 80), [(20, 25, 10), (45, 60, 3)])
    assert len(mask_to_annotations(mask, min_area=100)) == 1
    assert len(mask_to_annotations(mask, scale=4, min_area=100)) == 2  # areas count in level-0 pixels
    assert mask_to_annotations(np.zeros((10, 10), np.uint8)) == []


def test_tracing_rows_as_they_arrive_finds_each_component_once_and_whole():
    # tiles of 64 with a halo of 32: discs across tile borders and corners, one cut by the last row
    mask = disc_mask((300, 260), [(60, 64, 20), (128, 130, 12), (190, 40, 25), (250, 200, 15), (296, 100, 10)])
    mask[5, 250] = 1  # a speck, left out by min_area
    tracer = PolygonTracer(mask.shape, scale=2, tile=64, halo=32, min_area=40)
    traced, kept = [], []
    for row in range(0, 300, 37):
        tracer.add(mask[row : row + 37] > 0)
        traced.append(len(tracer.polygons))
        kept.append(sum(len(band) for _, band in tracer._bands))
    whole = mask_to_annotations(mask, scale=2, min_area=40)
    assert len(tracer.polygons) == len(whole) == 5
    np.testing.assert_array_equal(
        rasterize(tracer.polygons, mask.shape, scale=0.5), rasterize(whole, mask.shape, scale=0.5)
    )
    assert traced[-2] >= 3  # most were traced before the last rows came
    assert max(kept) < 64 + 2 * 32 + 2 * 37  # only the rows a row of tiles reads, not the mask
    tracer.close()
    assert len(tracer.polygons) == 5  # closing after the last row traces nothing again


def test_closing_early_treats_the_rows_never_given_as_background():
    mask = disc_mask((200, 100), [(40, 50, 15), (150, 50, 15)]) > 0
    tracer = PolygonTracer(mask.shape, tile=64, halo=16)
    tracer.add(mask[:100])
    tracer.close()
    assert len(tracer.polygons) == 1


def test_tracing_labels_only_tiles_that_hold_foreground(monkeypatch):
    mask = disc_mask((500, 400), [(50, 50, 20)]) > 0  # in the first tile's window only
    labelled = []
    label = annotations_module.ndimage.label
    monkeypatch.setattr(
        annotations_module.ndimage, "label", lambda window: labelled.append(window.shape) or label(window)
    )
    tracer = PolygonTracer(mask.shape, tile=128, halo=16)
    tracer.add(mask)
    assert len(tracer.polygons) == 1 and labelled == [(144, 144)]  # 1 of 16 tiles


# --- writing -------------------------------------------------------------------------------------


def test_write_then_read_gives_the_same_polygons(tmp_path):
    annotations = [
        Annotation("glomerulus", (np.array(TRIANGLE[:-1], float),)),
        Annotation("Cortex", (np.array(SQUARE, float), np.array(HOLE, float))),
    ]
    path = write_annotations(tmp_path / "out.json", annotations)
    assert path == tmp_path / "out.json" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    back = read_annotations(path)
    assert [a.name for a in back] == ["glomerulus", "Cortex"]
    np.testing.assert_array_equal(back[0].rings[0], np.array(TRIANGLE, float))  # rings are closed on write
    for ring, expected in zip(back[1].rings, annotations[1].rings, strict=True):
        np.testing.assert_array_equal(ring, expected)


def test_written_file_is_qupath_format(tmp_path):
    mask = disc_mask((60, 80), [(20, 25, 10), (40, 60, 12)])
    path = write_annotations(tmp_path / "out.json", mask_to_annotations(mask))
    document = json.loads(path.read_text())
    assert isinstance(document, list) and len(document) == 2
    for item in document:
        assert item["type"] == "Feature" and item["geometry"]["type"] == "Polygon"
        assert item["properties"]["classification"]["name"] == "glomerulus"
        ring = item["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and all(len(point) == 2 for point in ring)


# --- the real HuBMAP files ----------------------------------------------------------------------


def test_real_glomerulus_file_rasterizes_to_plausible_areas():
    annotations = read_annotations(shared_path("data", "hubmap_format", "aaa6a05cc.json"))
    assert len(annotations) == 96 and {a.name for a in annotations} == {"glomerulus"}
    mask = rasterize(annotations, (18484, 13013))  # height x width: coordinates are [x, y]
    total = 0.0
    for annotation in annotations:
        ring = annotation.rings[0]
        (x0, y0), (x1, y1) = np.floor(ring.min(0)).astype(int), np.ceil(ring.max(0)).astype(int)
        assert 0 <= x0 and x1 < 13013 and 0 <= y0 and y1 < 18484
        pixels = int(mask[y0 : y1 + 1, x0 : x1 + 1].sum())
        area = 0.5 * abs(np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], -1)))
        assert 1e3 <= area <= 2e5 and pixels >= 0.95 * area  # a neighbour may reach into the box, never less
        total += area
    assert abs(mask.sum(dtype=np.int64) - total) < 0.02 * total


def test_real_anatomical_structure_file_has_cortex_and_medulla():
    path = shared_path("data", "hubmap_format", "aaa6a05cc-anatomical-structure.json")
    annotations = read_annotations(path)
    assert {a.name for a in annotations} == {"Cortex", "Medulla"}
    assert sum(a.name == "Cortex" for a in annotations) == 2  # the MultiPolygon, split
    regions = rasterize(annotations, (18484 // 16, 13013 // 16), scale=1 / 16)
    assert 0.1 < regions.mean() < 1.0
