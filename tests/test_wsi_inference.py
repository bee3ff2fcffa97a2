"""Whole-slide inference (scripts/wsi_inference.py): tissue windows, and the writer that stitches
window predictions into submission rows, masks, polygons, previews, summaries and Dice, run
through a real MONAI evaluator with cuCIM reading real TIFFs."""

from __future__ import annotations

import csv
import json
import threading

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.inferers import SimpleInferer
from monai.transforms import Activationsd, Compose, ScaleIntensityRanged
from skimage.transform import resize

from conftest import disc_slide, write_slide
from scripts.annotations import PolygonTracer, rasterize, read_annotations
from scripts.datasets import SlideRegionDataset, StreamedItems
from scripts.outputs import RunOutputs
from scripts.prepare import prepare_slide
from scripts.rle import rle_decode, rle_encode
from scripts.scale import SlideScale, working_resolution
from scripts.slides import inspect_slide, read_thumbnail
from scripts.stitching import SlideStitchers, TissueWindows
from scripts.workflow import SlideSet
from scripts.wsi_inference import SlidePredictionWriter, finished_slides

DISCS = ((260, 300, 90), (600, 700, 70), (700, 300, 100))
SCALE = SlideScale(0.5, "slide_mpp setting")  # what preparation found for s1; the empty slide states none


class PurpleDetector(torch.nn.Module):
    """A fixed 'network': logit high where the local mean of the green channel is low (the discs).

    The 15 x 15 mean gives it a receptive field and zero padding at window borders, as a CNN has.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (0.4 - F.avg_pool2d(x[:, 1:2], 15, stride=1, padding=7)) * 40


@pytest.fixture()
def slides(tmp_path):
    image, mask = disc_slide(shape=(1000, 1200), discs=DISCS)
    image[:, 900:] = 241  # glass on the right: the windows there are never run
    blank = np.full((600, 700, 3), 241, np.uint8)  # glass only: no tissue window at all
    prepared = [
        prepare_slide("s1", write_slide(tmp_path / "s1.tiff", image), tmp_path / "cache", 2, scale=SCALE),
        prepare_slide("empty", write_slide(tmp_path / "empty.tiff", blank), tmp_path / "cache", 2),
    ]
    return prepared, mask, image


def run_inference(slides, output_dir, roi=128, overlap=0.25, blend="gaussian", done=(), save_heatmap=False, **fields):
    """Segment prepared slides as inference.yaml does: the windows streamed through the DataLoader's sampler.

    Returns:
        The window items the readers were given, and the writer.
    """
    slide_set = SlideSet(prepared={slide.slide_id: slide for slide in slides}, **fields)
    windows, items = TissueWindows([], roi, overlap, blend, skip=done), []
    dataset = SlideRegionDataset(StreamedItems(), transform=ScaleIntensityRanged("image", 0, 255, 0.0, 1.0))
    sampler = (items.append(item) or item for item in windows.stream(slide_set.ready()))
    writer = SlidePredictionWriter(str(output_dir), slide_set, windows, save_heatmap=save_heatmap)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(dataset, batch_size=3, sampler=sampler),
        network=PurpleDetector(),
        inferer=SimpleInferer(),
        postprocessing=Compose([Activationsd("pred", sigmoid=True)]),
        val_handlers=[writer],
    )
    evaluator.run()
    return items, writer


def test_every_output_agrees_with_the_truth_and_with_each_other(slides, tmp_path):
    prepared, mask, _ = slides
    out = tmp_path / "out"
    run_inference(
        prepared,
        out,
        truth={"s1": rle_encode(mask), "empty": ""},
        failed={"gone": "train.csv row 9: slide 'gone' has no image"},
        listed=["s1", "empty", "gone"],
    )
    with open(out / "submission.csv") as handle:
        rows = {row["id"]: row["predicted"] for row in csv.DictReader(handle)}
    assert list(rows) == ["s1", "empty", "gone"] and rows["empty"] == "" and rows["gone"] == ""
    predicted = rle_decode(rows["s1"], (1000, 1200))
    dice = 2 * (predicted & mask).sum() / (predicted.sum() + mask.sum())
    assert dice > 0.97
    with tifffile.TiffFile(out / "masks" / "s1.tiff") as tif:
        assert tif.pages[0].is_tiled and len(tif.pages) > 1
        np.testing.assert_array_equal(tif.pages[0].asarray() > 0, predicted > 0)
    polygons = read_annotations(out / "glomeruli" / "s1.geojson")
    assert len(polygons) == 3 and {p.name for p in polygons} == {"glomerulus"}
    drawn = rasterize(polygons, (1000, 1200))
    assert 2 * (drawn & predicted).sum() / (drawn.sum() + predicted.sum()) > 0.98
    summary = json.loads((out / "summaries" / "s1.json").read_text())
    assert summary["glomeruli"] == 3 and summary["glomerulus_pixels"] == predicted.sum()
    assert summary["dice"] == pytest.approx(dice) and 0.3 < summary["tissue_fraction"] < 0.9
    assert (summary["mpp"], summary["mpp_source"], summary["downscale"]) == (0.5, "slide_mpp setting", 2)
    assert json.loads((out / "summaries" / "empty.json").read_text())["mpp_source"] == "none"
    # the mask states the slide's scale, so a viewer lays it over the slide
    assert inspect_slide(out / "masks" / "s1.tiff").stated_mpp == pytest.approx((0.5, 0.5, "TIFF resolution tags"))
    preview = imagecodecs.imread(out / "previews" / "s1.png")
    assert preview.shape == (500, 600, 3)
    green, blue = ((preview == colour).all(axis=-1).sum() for colour in ((0, 200, 0), (30, 60, 255)))
    assert green > 500 and blue > 0  # predicted outline over the truth's, which shows where they differ
    with open(out / "metrics.csv") as handle:
        metrics = {row["id"]: float(row["dice"]) for row in csv.DictReader(handle)}
    assert metrics["empty"] == 1.0 and metrics["mean"] == pytest.approx((dice + 1.0) / 2, abs=1e-4)
    assert not (out / ".work").exists()


def test_windows_give_the_slide_predicted_in_one_piece(slides, tmp_path):
    """The documented tolerance, against one forward pass over the whole working level: with the
    'centre' blend (margin at least the network's receptive radius) probabilities agree within
    2/255 (8-bit storage); with Gaussian blending, which also weighs window borders a little,
    masks agree on at least 99.9 % of pixels, although this network's zero padding makes its
    window borders far worse than a trained CNN's."""
    prepared, _, _ = slides
    level, downsample = read_thumbnail(prepared[0].image, 2)
    assert downsample == 2
    whole = torch.from_numpy(np.pad(level, ((8, 8), (8, 8), (0, 0)), mode="symmetric"))  # as windows see the edge
    with torch.no_grad():
        one_piece = torch.sigmoid(PurpleDetector()(whole.permute(2, 0, 1)[None].float() / 255))[0, 0, 8:-8, 8:-8]
    one_piece = one_piece.numpy()
    for blend in ("centre", "gaussian"):
        run_inference(prepared[:1], tmp_path / blend, blend=blend, save_heatmap=True)
        stitched = tifffile.imread(tmp_path / blend / "heatmaps" / "s1.tiff", level=0) / 255
        disagree = ((stitched > 0.5) != (one_piece > 0.5)).mean()
        if blend == "centre":
            assert np.abs(stitched - one_piece).max() <= 2 / 255 and disagree < 1e-5
        else:
            assert disagree < 1e-3 and np.abs(stitched - one_piece).mean() < 0.01


def test_done_slides_are_skipped_and_their_results_reused(slides, tmp_path):
    prepared, mask, _ = slides
    out = tmp_path / "out"
    run_inference(prepared, out)
    first = (out / "masks" / "s1.tiff").stat().st_mtime_ns
    ids = [slide.slide_id for slide in prepared]
    done = finished_slides(str(out), ids)
    assert done == {"s1", "empty"} and finished_slides(str(out), ids, overwrite=True) == set()
    data, _ = run_inference(prepared, out, done=done, truth={"s1": rle_encode(mask), "empty": ""})
    assert data == [] and (out / "masks" / "s1.tiff").stat().st_mtime_ns == first
    assert json.loads((out / "summaries" / "s1.json").read_text())["dice"] > 0.97  # scored from the saved RLE
    assert (out / "submission.csv").read_text().count("\n") == 3


def test_a_window_that_cannot_be_read_fails_its_slide_only(slides, tmp_path, monkeypatch):
    prepared, _, _ = slides
    original = SlideRegionDataset.__mro__[1]._get_data  # MONAI's PatchWSIDataset._get_data

    def flaky(self, sample):
        if sample["slide_id"] == "s1" and min(sample["location"]) < 0:  # the windows at the top-left corner
            raise RuntimeError("corrupt tile")
        return original(self, sample)

    monkeypatch.setattr(SlideRegionDataset.__mro__[1], "_get_data", flaky)
    _, writer = run_inference(prepared, tmp_path / "out", listed=["s1", "empty"])
    assert "corrupt tile" in writer.failed["s1"] and "empty" not in writer.failed
    assert (tmp_path / "out" / "summaries" / "empty.json").is_file()
    assert not (tmp_path / "out" / "summaries" / "s1.json").exists()
    assert (tmp_path / "out" / "submission.csv").read_text() == "id,predicted\ns1,\nempty,\n"


def test_a_slide_is_written_while_the_next_slides_windows_are_stitched(slides, tmp_path, monkeypatch):
    """A slide's outputs (RLE pass, polygons, preview) must not hold up the next slide's windows:
    s1's writing waits for s2's first stitched window, which only comes if they overlap."""
    prepared, _, image = slides
    second = prepare_slide("s2", write_slide(tmp_path / "s2.tiff", image), tmp_path / "cache", 2)
    next_slide_started, write_slide_calls = threading.Event(), []
    add_window, write_outputs = SlideStitchers.add, SlidePredictionWriter._write_slide

    def add_and_signal(self, meta, probability):
        if meta["slide_id"] == "s2":
            next_slide_started.set()
        return add_window(self, meta, probability)

    def write_when_the_next_slide_started(self, state):
        if state.slide.slide_id == "s1":
            write_slide_calls.append(next_slide_started.wait(timeout=20))
        return write_outputs(self, state)

    monkeypatch.setattr(SlideStitchers, "add", add_and_signal)
    monkeypatch.setattr(SlidePredictionWriter, "_write_slide", write_when_the_next_slide_started)
    _, writer = run_inference([prepared[0], second], tmp_path / "out")
    assert write_slide_calls == [True] and not writer.failed
    masks = [tifffile.imread(tmp_path / "out" / "masks" / f"{name}.tiff", level=0) for name in ("s1", "s2")]
    np.testing.assert_array_equal(masks[0], masks[1])  # the same image gives the same prediction


def test_the_next_slide_is_prepared_while_the_first_slides_windows_run(slides, tmp_path, monkeypatch):
    """inference.yaml's stream: s2's preparation waits for s1's first stitched window (preparing every
    slide before the first window would wait for ever), and s2 still gets the results of its image."""
    prepared, _, image = slides
    path, first_window = write_slide(tmp_path / "s2.tiff", image), threading.Event()
    add_window = SlideStitchers.add

    def add_and_signal(self, meta, probability):
        if meta["slide_id"] == "s1":
            first_window.set()
        return add_window(self, meta, probability)

    def prepare(slide_id):
        if slide_id == "s1":
            return prepared[0]
        assert first_window.wait(timeout=30), "s2 was to be prepared before s1's windows ran"
        return prepare_slide("s2", path, tmp_path / "cache", 2, scale=SCALE)

    monkeypatch.setattr(SlideStitchers, "add", add_and_signal)
    items, writer = run_inference([], tmp_path / "out", ids=["s1", "s2"], prepare=prepare)
    assert [item["slide_id"] for item in items] == sorted(item["slide_id"] for item in items) and not writer.failed
    masks = [tifffile.imread(tmp_path / "out" / "masks" / f"{name}.tiff", level=0) for name in ("s1", "s2")]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert (tmp_path / "out" / "submission.csv").read_text().startswith("id,predicted\ns1,")


def test_a_band_step_that_fails_fails_its_slide_only(slides, tmp_path, monkeypatch):
    """The polygons, the level-0 mask and the store take each band in threads of their own: an error
    there is reported as the slide's, and the next slide's results are still written."""
    prepared, _, image = slides
    second = prepare_slide("s2", write_slide(tmp_path / "s2.tiff", image), tmp_path / "cache", 2)
    add_rows, calls = PolygonTracer.add, []

    def fail_first(self, rows):
        calls.append(len(rows))
        if len(calls) == 1:
            raise MemoryError("no room for the rows")
        return add_rows(self, rows)

    monkeypatch.setattr(PolygonTracer, "add", fail_first)
    _, writer = run_inference([prepared[0], second], tmp_path / "out")
    assert "MemoryError: no room for the rows" in writer.failed["s1"] and "s2" not in writer.failed
    assert not (tmp_path / "out" / "summaries" / "s1.json").exists()
    assert json.loads((tmp_path / "out" / "summaries" / "s2.json").read_text())["glomeruli"] == 3


def test_a_mask_tiff_that_cannot_be_written_fails_its_slide_only_and_nothing_waits(slides, tmp_path, monkeypatch):
    """The mask TIFF reads its rows in a thread of its own: when it fails (a full disk), the rows' maker
    must not wait for it for ever, the error is the slide's, and the next slide's results are written."""
    prepared, _, image = slides
    second = prepare_slide("s2", write_slide(tmp_path / "s2.tiff", image), tmp_path / "cache", 2)
    write_mask = RunOutputs.write_mask

    def disk_full(self, slide_id, read_rows, shape, resolution_um=None):
        if slide_id == "s1":
            read_rows(0, 16)
            raise OSError("No space left on device")
        return write_mask(self, slide_id, read_rows, shape, resolution_um)

    monkeypatch.setattr(RunOutputs, "write_mask", disk_full)
    run = threading.Thread(target=run_inference, args=([prepared[0], second], tmp_path / "out"), daemon=True)
    run.start()
    run.join(timeout=120)
    assert not run.is_alive()
    summaries = tmp_path / "out" / "summaries"
    assert not (summaries / "s1.json").exists() and not (tmp_path / "out" / "masks" / "s1.tiff").exists()
    assert json.loads((summaries / "s2.json").read_text())["glomeruli"] == 3
    assert (tmp_path / "out" / "submission.csv").read_text().startswith("id,predicted\ns1,\ns2,")


def test_a_stitching_error_ends_the_run_with_that_error_and_nothing_waits(slides, tmp_path, monkeypatch):
    """An error in the writer's own thread (a bug, not a slide's fault) is raised by the run once the
    queue is drained, and the open slide's mask TIFF writer, waiting for rows, is stopped first."""
    prepared, _, _ = slides
    add_window, calls, raised = SlideStitchers.add, [], []

    def fail_third(self, meta, probability):
        calls.append(meta["slide_id"])
        if len(calls) == 3:
            raise ValueError("windows out of order")
        return add_window(self, meta, probability)

    def run():
        try:
            run_inference(prepared, tmp_path / "out")
        except ValueError as error:
            raised.append(str(error))

    monkeypatch.setattr(SlideStitchers, "add", fail_third)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive() and raised == ["windows out of order"]
    assert not (tmp_path / "out" / "masks" / "s1.tiff").exists()


def test_the_same_tissue_scanned_at_three_scales_gives_the_same_mask_at_each_slides_level_0(tmp_path):
    """A model's working scale (1 micron per pixel here) reached from a 0.5, a 0.25 and a 0.357
    micron-per-pixel scan of the same tissue: the first two work at their own level (downscale 2 and 4),
    the third lies between levels and is resampled to the working scale; each mask is at the slide's own
    level 0, and a speck below the smallest glomerulus is left out of every count."""
    image, _ = disc_slide(shape=(1000, 1200), discs=(*DISCS, (150, 900, 22)))
    between = resize(image, (1400, 1680), order=1, anti_aliasing=True, preserve_range=True).astype(np.uint8)
    scans = {
        "coarse": (image, 0.5),
        "fine": (np.repeat(np.repeat(image, 2, axis=0), 2, axis=1), 0.25),
        "between": (between, 0.5 / 1.4),
    }
    prepared = []
    for name, (pixels, mpp) in scans.items():
        scale = SlideScale(mpp, "TIFF resolution tags")
        resolution = working_resolution(scale, 1.0, 2, name)
        path = write_slide(tmp_path / f"{name}.tiff", pixels)
        prepared.append(
            prepare_slide(
                name, path, tmp_path / "cache", resolution.downscale, scale=scale, resample=resolution.resample
            )
        )
    assert [slide.downscale for slide in prepared] == [2, 4, 1]
    assert prepared[2].level0_scale == pytest.approx(2.8) and prepared[2].level0_shape == (1400, 1680)
    assert prepared[0].working_shape == prepared[1].working_shape == prepared[2].working_shape == (500, 600)
    run_inference(prepared, tmp_path / "out")
    masks = {name: tifffile.imread(tmp_path / "out" / "masks" / f"{name}.tiff") > 0 for name in scans}
    assert masks["fine"].shape == (2000, 2400) and masks["between"].shape == (1400, 1680)
    coarse = masks["coarse"]
    assert coarse.sum() > 0.05 * coarse.size
    # each mask at the coarse scan's pixel centres
    centres = [((np.arange(n) + 0.5) * 1.4).astype(int) for n in coarse.shape]
    for name, sampled in (("fine", masks["fine"][::2, ::2]), ("between", masks["between"][np.ix_(*centres)])):
        assert (coarse != sampled).mean() < 0.005, name
    for name in scans:
        summary = json.loads((tmp_path / "out" / "summaries" / f"{name}.json").read_text())
        assert summary["glomeruli"] == len(DISCS), name
        assert (summary["height"], summary["width"]) == masks[name].shape
    preview = tmp_path / "out" / "previews" / "between.png"
    assert preview.exists()
    # a rerun reuses the results and scores them against a truth at each slide's own level 0
    truth = {name: rle_encode(mask) for name, mask in masks.items()}
    run_inference(prepared, tmp_path / "out", done=tuple(scans), truth=truth)
    for name in scans:
        assert json.loads((tmp_path / "out" / "summaries" / f"{name}.json").read_text())["dice"] == 1.0, name
