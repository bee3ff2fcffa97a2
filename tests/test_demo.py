"""The synthetic demo dataset: HuBMAP layout, readable slides, labels that agree, determinism, looks, and
the folder bookkeeping of ``ensure_demo``."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage
from skimage.measure import points_in_poly

from scripts import demo
from scripts.annotations import rasterize, read_annotations
from scripts.demo import DEMO_SEED, ensure_demo, generate_demo
from scripts.errors import DatasetError
from scripts.rle import rle_decode
from scripts.slides import inspect_slide

SIZE = (1024, 1280)
INFO_COLUMNS = (
    "image_file,width_pixels,height_pixels,anatomical_structures_segmention_file,glomerulus_segmentation_file,"
    "patient_number,race,ethnicity,sex,age,weight_kilograms,height_centimeters,bmi_kg/m^2,laterality,"
    "percent_cortex,percent_medulla"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "hubmap", num_train=2, num_test=1, size=SIZE)


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def ids(root: Path, split: str) -> list[str]:
    return [r["id"] for r in rows(root / ("train.csv" if split == "train" else "sample_submission.csv"))]


def region(root: Path, split: str, slide_id: str, name: str):
    annotations = read_annotations(root / split / f"{slide_id}-anatomical-structure.json")
    (wanted,) = [a for a in annotations if a.name == name]
    return wanted


def region_mask(root: Path, split: str, slide_id: str, name: str) -> np.ndarray:
    """The region filled at 1/4 scale and enlarged (filling large polygons at full size takes seconds);
    its edge is a couple of pixels off, far less than the margins the checks below leave."""
    small = rasterize([region(root, split, slide_id, name)], (SIZE[0] // 4, SIZE[1] // 4), scale=0.25)
    return small.repeat(4, axis=0).repeat(4, axis=1).astype(bool)


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation."""
    high, low = image.max(axis=-1).astype(np.float64), image.min(axis=-1)
    return (high - low) / np.maximum(high, 1)


def test_layout_files_and_ids(dataset):
    assert (dataset / "train.csv").read_text().splitlines()[0] == "id,encoding"
    assert (dataset / "solution.csv").read_text().splitlines()[0] == "id,encoding"
    assert (dataset / "sample_submission.csv").read_text().splitlines()[0] == "id,predicted"
    assert (dataset / "HuBMAP-20-dataset_information.csv").read_text().splitlines()[0] == INFO_COLUMNS
    train, test = ids(dataset, "train"), ids(dataset, "test")
    assert len(train) == 2 and len(test) == 1
    assert all(re.fullmatch(r"[0-9a-f]{9}", i) for i in train + test)
    assert len(set(train + test)) == 3
    assert [r["predicted"] for r in rows(dataset / "sample_submission.csv")] == [""]
    assert [r["id"] for r in rows(dataset / "solution.csv")] == test
    for i in train:
        for name in (f"{i}.tiff", f"{i}.json", f"{i}-anatomical-structure.json"):
            assert (dataset / "train" / name).is_file(), name
    assert (dataset / "test" / f"{test[0]}.tiff").is_file()
    assert not (dataset / "test" / f"{test[0]}.json").exists()  # the answer lives in solution.csv only
    info = rows(dataset / "HuBMAP-20-dataset_information.csv")
    assert [r["image_file"] for r in info] == [f"{i}.tiff" for i in train + test]
    for r in info:
        assert (int(r["height_pixels"]), int(r["width_pixels"])) == SIZE
        assert int(r["percent_cortex"]) + int(r["percent_medulla"]) == 100


def test_slides_are_tiled_pyramids_that_cucim_reads(dataset):
    cucim = pytest.importorskip("cucim")
    paths = sorted(dataset.glob("t*/*.tiff"))
    assert len(paths) == 3
    for path in paths:
        with tifffile.TiffFile(path) as tif:
            pages = list(tif.pages)
            assert len(pages) >= 3
            assert all(p.is_tiled and p.compression == tifffile.COMPRESSION.JPEG for p in pages)
            assert pages[0].shape == (*SIZE, 3)
            for level, page in enumerate(pages[1:], start=1):
                assert page.subfiletype == tifffile.FILETYPE.REDUCEDIMAGE
                assert page.shape[:2] == (-(-SIZE[0] // 2**level), -(-SIZE[1] // 2**level))
        image = cucim.CuImage(str(path))
        assert image.resolutions["level_count"] == len(pages)
        region = np.asarray(image.read_region(location=(256, 128), size=(300, 200), level=1, device="cpu"))
        assert region.shape == (200, 300, 3) and region.dtype == np.uint8


def test_slides_state_their_scale_so_a_model_trained_on_them_records_it(dataset):
    for path in sorted(dataset.glob("t*/*.tiff")):
        assert inspect_slide(path).stated_mpp == pytest.approx((demo.DEMO_MPP, demo.DEMO_MPP, "TIFF resolution tags"))


def test_train_rle_is_the_rasterized_polygons(dataset):
    for row in rows(dataset / "train.csv"):
        polygons = read_annotations(dataset / "train" / f"{row['id']}.json")
        assert polygons and {p.name for p in polygons} == {"glomerulus"}
        mask = rle_decode(row["encoding"], SIZE)
        assert mask.any()
        np.testing.assert_array_equal(mask, rasterize(polygons, SIZE))


def test_solution_marks_the_test_slide_glomeruli(dataset):
    (row,) = rows(dataset / "solution.csv")
    mask = rle_decode(row["encoding"], SIZE).astype(bool)
    assert mask.any()
    cortex = region_mask(dataset, "test", row["id"], "Cortex")
    assert not (mask & ~cortex).any()
    labels, count = ndimage.label(mask)
    for box in ndimage.find_objects(labels):
        assert all(100 <= s.stop - s.start <= 300 for s in box)
    image = tifffile.imread(dataset / "test" / f"{row['id']}.tiff")
    assert_glomeruli_stand_out(image, mask, cortex)


def test_glomeruli_are_100_to_300_px_and_inside_the_cortex(dataset):
    for i in ids(dataset, "train"):
        polygons = read_annotations(dataset / "train" / f"{i}.json")
        for polygon in polygons:
            extent = polygon.rings[0].max(axis=0) - polygon.rings[0].min(axis=0)
            assert ((100 <= extent) & (extent <= 300)).all(), extent
        vertices = np.concatenate([p.rings[0] for p in polygons])
        outer, hole = region(dataset, "train", i, "Cortex").rings
        (medulla,) = region(dataset, "train", i, "Medulla").rings
        assert points_in_poly(vertices, outer).all()
        assert not points_in_poly(vertices, hole).any() and not points_in_poly(vertices, medulla).any()


def assert_glomeruli_stand_out(image: np.ndarray, glomeruli: np.ndarray, cortex: np.ndarray) -> None:
    """Glomeruli (and even more their tufts) are darker and more saturated than the cortex around them."""
    gray, vivid = image.mean(axis=-1), saturation(image)
    around = ndimage.binary_dilation(glomeruli, iterations=40) & ~ndimage.binary_dilation(glomeruli, iterations=5)
    around &= cortex
    core = ndimage.binary_erosion(glomeruli, iterations=20)
    assert gray[glomeruli].mean() < gray[around].mean() - 3
    assert vivid[glomeruli].mean() > vivid[around].mean()
    assert gray[core].mean() < gray[around].mean() - 15
    assert vivid[core].mean() > vivid[around].mean() + 0.05


def test_slides_look_like_tissue(dataset):
    for i in ids(dataset, "train"):
        image = tifffile.imread(dataset / "train" / f"{i}.tiff")
        cortex = region_mask(dataset, "train", i, "Cortex")
        tissue = cortex | region_mask(dataset, "train", i, "Medulla")
        assert 0.3 < tissue.mean() < 0.75
        background = ~ndimage.binary_dilation(tissue, iterations=20)
        gray, vivid = image.mean(axis=-1), saturation(image)
        assert gray[background].mean() > 220 and gray[background].std() < 6
        assert gray[tissue].mean() < gray[background].mean() - 30
        assert vivid[tissue].mean() > vivid[background].mean() + 0.15
        glomeruli = rasterize(read_annotations(dataset / "train" / f"{i}.json"), SIZE).astype(bool)
        assert_glomeruli_stand_out(image, glomeruli, cortex)


def test_same_seed_same_bytes_other_seed_other_ids(dataset, tmp_path):
    again = generate_demo(tmp_path / "again", num_train=2, num_test=1, size=SIZE)
    texts = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.suffix in (".csv", ".json"))
    assert len(texts) == 4 + 2 * 2 + 1
    for name in texts:
        assert (again / name).read_text() == (dataset / name).read_text(), name
    for path in dataset.glob("t*/*.tiff"):
        np.testing.assert_array_equal(tifffile.imread(again / path.relative_to(dataset)), tifffile.imread(path))
    other = generate_demo(tmp_path / "other", seed=DEMO_SEED + 1, num_train=2, num_test=1, size=SIZE)
    assert set(ids(other, "train") + ids(other, "test")).isdisjoint(ids(dataset, "train") + ids(dataset, "test"))


def test_rejects_slides_too_small_for_glomeruli(tmp_path):
    with pytest.raises(ValueError, match="1024"):
        generate_demo(tmp_path / "tiny", size=(512, 512))
    assert not (tmp_path / "tiny").exists()


@pytest.fixture
def small_defaults(monkeypatch):
    """Make ``ensure_demo``'s default-size slides small, so its real code path runs in seconds."""
    monkeypatch.setattr(demo, "DEFAULT_SIDES", (1024, 1100))


def test_ensure_demo_generates_then_leaves_a_complete_demo_alone(tmp_path, small_defaults):
    root = tmp_path / "data"
    assert ensure_demo(root) == root
    assert len(ids(root, "train")) == 4 and len(ids(root, "test")) == 1
    marker = json.loads((root / demo.MARKER).read_text())
    assert marker["seed"] == DEMO_SEED and marker["format"] == demo.FORMAT_VERSION
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    start = time.perf_counter()
    assert ensure_demo(root) == root
    assert time.perf_counter() - start < 0.5
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps


def test_ensure_demo_rebuilds_an_incomplete_demo(tmp_path, small_defaults):
    root = ensure_demo(tmp_path / "data")
    original = (root / "train.csv").read_text()
    slide = next(root.glob("train/*.tiff"))
    (root / demo.MARKER).unlink()
    slide.unlink()
    (root / "train.csv").write_text("id,encoding\n")
    ensure_demo(root)
    assert (root / demo.MARKER).is_file() and slide.is_file()
    assert (root / "train.csv").read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no build or old folder left beside it


def test_ensure_demo_never_touches_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "train.csv").write_text("id,encoding\nabc,1 2\n")
    with pytest.raises(DatasetError, match="not a demo dataset"):
        ensure_demo(root)
    assert (root / "train.csv").read_text() == "id,encoding\nabc,1 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_a_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(demo, "_write_slide", fail)
    with pytest.raises(RuntimeError, match="killed"):
        generate_demo(tmp_path / "data", num_train=1, num_test=0, size=SIZE)
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_killed_runs_are_cleared(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".data.partial-abc123"
    stale.mkdir()
    (stale / demo.OWNER).write_text(json.dumps({"pid": int(dead.stdout)}))
    unknown = tmp_path / ".data.partial-xyz"  # no owner file: maybe someone else's, so kept
    unknown.mkdir()
    generate_demo(tmp_path / "data", num_train=1, num_test=0, size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.partial-xyz", "data"]
