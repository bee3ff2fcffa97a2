"""Finding and preparing the slides of a run (scripts/workflow.py): bad input is one line, and one
bad slide never costs the others."""

from __future__ import annotations

import threading

import pytest

import scripts.workflow
from conftest import disc_slide, write_slide
from scripts.files import write_csv
from scripts.rle import rle_encode
from scripts.workflow import (
    evaluation_slides,
    inference_slides,
    training_slides,
)


def make_dataset(root, bad_rows=()):
    """Two good training slides, one test slide, and whatever bad rows are asked for."""
    rows = []
    for slide_id, seed in (("good1", 1), ("good2", 2)):
        image, mask = disc_slide(seed=seed)
        write_slide(root / "train" / f"{slide_id}.tiff", image)
        rows.append((slide_id, rle_encode(mask)))
    image, mask = disc_slide(seed=3)
    write_slide(root / "test" / "t1.tiff", image)
    write_csv(root / "train.csv", ("id", "encoding"), rows + list(bad_rows))
    write_csv(root / "solution.csv", ("id", "encoding"), [("t1", rle_encode(mask))])
    return root


def prepare(root, tmp_path, function=training_slides, **kwargs):
    return function(str(root), str(tmp_path / "no-demo"), str(tmp_path / "cache"), 2, **kwargs)


def test_bad_rows_are_reported_and_the_good_slides_prepared(tmp_path):
    root = make_dataset(
        tmp_path / "data",
        bad_rows=[
            ("badrle", "1 2 3"),
            ("nofile", "1 5"),
            ("../escape", "1 5"),
            ("notatiff", "1 5"),
            ("toolong", "1 999999999"),
        ],
    )
    (root / "train" / "badrle.tiff").write_bytes((root / "train" / "good1.tiff").read_bytes())
    (root / "train" / "notatiff.tiff").write_text("this is not a TIFF")
    (root / "train" / "toolong.tiff").write_bytes((root / "train" / "good1.tiff").read_bytes())
    slides = prepare(root, tmp_path)
    assert list(slides.prepared) == ["good1", "good2"]
    reasons = slides.failed
    assert "odd number of tokens" in reasons["badrle"] and "badrle" in reasons["badrle"]
    assert "has no image train/nofile.tiff" in reasons["nofile"] and "row 5" in reasons["nofile"]
    assert "not a plain slide name" in reasons["train.csv row 6"]
    assert "notatiff.tiff" in reasons["notatiff"] and "not a readable TIFF" in reasons["notatiff"]
    assert "past the image" in reasons["toolong"]
    assert all("\n" not in reason for reason in reasons.values())
    assert set(slides.truth) == {"good1", "good2"}


def test_slides_are_prepared_several_at_a_time_and_kept_in_listing_order(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data")
    together, real = threading.Barrier(2, timeout=30), scripts.workflow.prepare_slide

    def meet_then_prepare(*args, **kwargs):
        together.wait()  # passed only when both training slides are being prepared at once
        return real(*args, **kwargs)

    monkeypatch.setattr(scripts.workflow, "prepare_slide", meet_then_prepare)
    slides = prepare(root, tmp_path)
    assert list(slides.prepared) == ["good1", "good2"] and set(slides.truth) == {"good1", "good2"}


def test_missing_dataset_dir_says_how_to_use_the_demo(tmp_path):
    with pytest.raises(SystemExit) as error:
        prepare(tmp_path / "nowhere", tmp_path)
    message = str(error.value)
    assert message.startswith("error: dataset_dir") and "demo" in message and "train.csv" in message
    assert "\n" not in message


def test_too_few_usable_training_slides_is_one_line(tmp_path):
    root = make_dataset(tmp_path / "data")
    (root / "train" / "good2.tiff").unlink()
    with pytest.raises(SystemExit, match="1 usable training slide"):
        prepare(root, tmp_path)


def test_inference_lists_sample_submission_and_reports_missing_slides(tmp_path):
    root = make_dataset(tmp_path / "data")
    write_csv(root / "sample_submission.csv", ("id", "predicted"), [("t1", ""), ("absent", "")])
    slides = prepare(root, tmp_path, inference_slides)
    assert "absent" in slides.failed and slides.listed == ["t1", "absent"] and slides.truth is None
    assert not slides.prepared and slides.ids == ["t1"]  # prepared once the run asks for them
    assert [slide.slide_id for slide in slides.ready()] == ["t1"] and list(slides.prepared) == ["t1"]


def test_a_streamed_set_hands_on_each_slide_while_the_next_ones_are_prepared(tmp_path, monkeypatch):
    """Evaluation's slides come in listing order, the first before the second is prepared; one that
    cannot be used is passed over, leaving the truth, and the others still come."""
    root = make_dataset(tmp_path / "data", bad_rows=[("notatiff", "1 5")])
    (root / "train" / "notatiff.tiff").write_text("this is not a TIFF")
    release, second_started, real = threading.Event(), threading.Event(), scripts.workflow.prepare_slide
    started = []

    def prepare_slide(slide_id, *args, **kwargs):
        started.append(slide_id)
        if slide_id == "good2":
            second_started.set()
            if not release.wait(timeout=30):
                raise AssertionError("good2 was waited for before good1 was handed on")
        return real(slide_id, *args, **kwargs)

    monkeypatch.setattr(scripts.workflow, "prepare_slide", prepare_slide)
    slides = prepare(root, tmp_path, evaluation_slides, split="train")
    assert started == [] and set(slides.truth) == {"good1", "good2", "notatiff"}
    stream = slides.ready()
    first = next(stream)  # good2 is being prepared meanwhile, and waits for the release below
    assert first.slide_id == "good1" and second_started.wait(timeout=30) and "good2" not in slides.prepared
    release.set()
    assert [slide.slide_id for slide in stream] == ["good2"] and "not a readable TIFF" in slides.failed["notatiff"]
    assert list(slides.prepared) == ["good1", "good2"] and set(slides.truth) == {"good1", "good2"}
    assert [slide.slide_id for slide in slides.slides] == ["good1", "good2"]  # a second pass prepares nothing again
    assert sorted(started) == ["good1", "good2"]  # each prepared once (notatiff fails before)


def test_evaluation_reads_solution_for_test_and_train_csv_for_train(tmp_path):
    root = make_dataset(tmp_path / "data")
    assert list(prepare(root, tmp_path, evaluation_slides, split="test").truth) == ["t1"]
    assert list(prepare(root, tmp_path, evaluation_slides, split="train").truth) == ["good1", "good2"]
    with pytest.raises(SystemExit, match="eval_split"):
        prepare(root, tmp_path, evaluation_slides, split="validation")


def _polygon_json(path, discs):
    import json

    import numpy as np

    features = []
    for cy, cx, radius in discs:
        angles = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        ring = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1).tolist()
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
                "properties": {"classification": {"name": "glomerulus"}},
            }
        )
    path.write_text(json.dumps(features))


def test_slides_with_polygons_and_no_row_are_labelled_from_them(tmp_path):
    root = make_dataset(tmp_path / "data")
    image, _ = disc_slide(seed=4)
    write_slide(root / "train" / "poly.tiff", image)
    _polygon_json(root / "train" / "poly.json", [(300, 300, 80), (450, 650, 60)])
    _polygon_json(root / "train" / "good1.json", [(100, 100, 10)])  # has a train.csv row: the RLE wins
    _polygon_json(root / "train" / "far.json", [(5000, 5000, 50)])
    write_slide(root / "train" / "far.tiff", image)
    slides = prepare(root, tmp_path)
    assert list(slides.prepared) == ["good1", "good2", "poly"]
    assert slides.prepared["poly"].has_label and slides.prepared["poly"].glomeruli == 2
    assert slides.prepared["good1"].glomeruli == 2 and "poly" not in slides.truth
    assert (
        "far.json: polygon 0 (glomerulus)" in slides.failed["far"]
        and "outside the 900 x 700 slide" in slides.failed["far"]
    )


def _scaled_dataset(root, mpps: dict[str, float | None], csv_mpp: dict[str, str]):
    """Training slides written with the given microns per pixel in their resolution tags (None: none),
    and a train.csv with an ``mpp`` column."""
    from scripts.pyramid import write_pyramid

    rows = []
    for seed, (slide_id, mpp) in enumerate(mpps.items()):
        image, mask = disc_slide(seed=seed)
        path = root / "train" / f"{slide_id}.tiff"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pyramid(path, lambda y0, y1, image=image: image[y0:y1], image.shape[:2], tile=256, resolution_um=mpp)
        rows.append((slide_id, rle_encode(mask), csv_mpp.get(slide_id, "")))
    write_csv(root / "train.csv", ("id", "encoding", "mpp"), rows)
    return root


def test_with_a_model_scale_each_slide_works_at_the_level_its_own_stated_scale_gives(tmp_path):
    from scripts.store import read_scale

    mpps = {"fine": 0.25, "coarse": 0.5, "plain": None, "listed": 0.25, "absurd": 0.5, "between": 0.4}
    root = _scaled_dataset(tmp_path / "data", mpps, {"listed": "1.0", "absurd": "-1"})
    slides = prepare(root, tmp_path, working_mpp=1.0)
    downscales = {slide_id: slide.level0_scale for slide_id, slide in slides.prepared.items()}
    # the file's scale, then the CSV column over the file's; a slide stating none keeps the downscale setting;
    # one between two levels is resampled to the working scale
    assert downscales == {"fine": 4, "coarse": 2, "plain": 2, "listed": 1, "between": 2.5}
    between = slides.prepared["between"]
    assert between.downscale == 1 and between.working_shape == (280, 360) and between.level0_shape == (700, 900)
    scales = {slide_id: read_scale(slide.store) for slide_id, slide in slides.prepared.items()}
    assert scales["fine"].mpp == pytest.approx(0.25) and scales["fine"].source == "TIFF resolution tags"
    assert scales["listed"].mpp == 1.0 and scales["listed"].source == "train.csv row 5"
    assert scales["plain"].mpp is None and scales["plain"].source == "none"
    assert list(slides.failed) == ["absurd"] and "train.csv row 6" in slides.failed["absurd"]
    assert "\n" not in slides.failed["absurd"]

    # one scale for every slide, over files and CSV; without a model scale, every slide at the setting
    given = prepare(root, tmp_path, working_mpp=1.0, slide_mpp=0.5)
    assert {slide.downscale for slide in given.prepared.values()} == {2} and not given.failed
    assert read_scale(given.prepared["fine"].store).source == "slide_mpp setting"
    # without a model scale nothing depends on a slide's: a wrong one is reported, not fatal
    unscaled = prepare(root, tmp_path, slide_mpp=None)
    assert {slide.downscale for slide in unscaled.prepared.values()} == {2} and not unscaled.failed
    assert read_scale(unscaled.prepared["absurd"].store).source == "none"
