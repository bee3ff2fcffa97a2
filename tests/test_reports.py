"""Seeing the model (scripts/reports.py): training curves as PNG and CSV from real ignite and MONAI
engines, per-slide error maps over the thumbnail, and validation windows in TensorBoard."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    IMAGES,
    EventAccumulator,
)

from conftest import BUNDLE, disc_slide, write_slide
from scripts.metrics import SlideDice
from scripts.prepare import prepare_slide
from scripts.pyramid import pool_mask
from scripts.reports import (
    FN_COLOUR,
    FP_COLOUR,
    TrainingCurves,
    ValidationErrorMaps,
    ValidationImages,
    error_overlay,
)
from scripts.rle import rle_encode
from scripts.stitching import TissueWindows
from scripts.store import LABEL, read_window

# --- training curves -----------------------------------------------------------------------------


def engines(decollated: bool = True, validate_every: int = 2):
    """A trainer whose loss is ``batch * epoch`` (MONAI's output layout) and a validator scoring ``epoch / 10``."""

    def step(engine, batch):
        loss = torch.tensor(float(batch * engine.state.epoch))
        return [{"loss": loss}, {"loss": loss}] if decollated else {"loss": loss, "pred": torch.zeros(2)}

    trainer = Engine(step)
    validator = Engine(lambda engine, batch: None)
    validator.add_event_handler(
        Events.EPOCH_COMPLETED,  # as a key metric does, before the handlers
        lambda engine: engine.state.metrics.update(val_dice=trainer.state.epoch / 10),
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=validate_every), lambda engine: validator.run([0]))
    return trainer, validator


def read_rows(path):
    with open(path, newline="") as handle:
        return [
            (int(r["epoch"]), float(r["loss"]) if r["loss"] else None, float(r["val_dice"]) if r["val_dice"] else None)
            for r in csv.DictReader(handle)
        ]


@pytest.mark.parametrize("decollated", [True, False])
def test_curves_record_mean_loss_per_epoch_and_each_validation(tmp_path, decollated):
    trainer, validator = engines(decollated)
    curves = TrainingCurves(str(tmp_path), validator)
    curves.attach(trainer)
    seen_mid_run = []
    trainer.add_event_handler(
        Events.EPOCH_STARTED(once=3), lambda engine: seen_mid_run.append(read_rows(tmp_path / "training_curves.csv"))
    )
    trainer.run([1.0, 2.0, 3.0], max_epochs=5)
    # mean of batch * epoch over batches 1, 2, 3 is 2 * epoch; validated at epochs 2 and 4
    assert seen_mid_run == [[(1, 2.0, None), (2, 4.0, 0.2)]]  # a killed run still has its picture
    assert read_rows(tmp_path / "training_curves.csv") == [
        (1, 2.0, None),
        (2, 4.0, 0.2),
        (3, 6.0, None),
        (4, 8.0, 0.4),
        (5, 10.0, None),
    ]
    with Image.open(tmp_path / "training_curves.png") as png:
        png.load()
        assert png.format == "PNG" and png.size[0] > 100 and png.size[1] > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_stopped_run_records_its_partial_epoch_and_last_validation(tmp_path):
    trainer, validator = engines(validate_every=10)
    TrainingCurves(str(tmp_path), validator).attach(trainer)

    @trainer.on(Events.ITERATION_COMPLETED(once=5))  # two iterations into epoch 2, as the time budget stops
    def stop(engine):
        engine.terminate()

    trainer.add_event_handler(Events.TERMINATE, lambda engine: validator.run([0]))
    trainer.run([1.0, 2.0, 3.0], max_epochs=5)
    assert read_rows(tmp_path / "training_curves.csv") == [(1, 2.0, None), (2, 3.0, 0.2)]  # (2 + 4) / 2


def test_a_resumed_run_keeps_the_history_and_a_new_run_starts_over(tmp_path):
    trainer, validator = engines()
    TrainingCurves(str(tmp_path), validator).attach(trainer)
    trainer.run([1.0, 2.0, 3.0], max_epochs=3)

    resumed, validator = engines()
    resumed.add_event_handler(Events.STARTED, lambda engine: setattr(engine.state, "epoch", 2))  # a checkpoint's epoch
    TrainingCurves(str(tmp_path), validator).attach(resumed)
    resumed.run([10.0], max_epochs=4)
    assert read_rows(tmp_path / "training_curves.csv") == [
        (1, 2.0, None),
        (2, 4.0, 0.2),
        (3, 30.0, None),
        (4, 40.0, 0.4),
    ]
    fresh, validator = engines()
    TrainingCurves(str(tmp_path), validator).attach(fresh)
    fresh.run([1.0], max_epochs=1)
    assert read_rows(tmp_path / "training_curves.csv") == [(1, 1.0, None)]


def test_curves_from_a_monai_supervised_trainer(tmp_path):
    from monai.engines import SupervisedTrainer

    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 1, 1)
    data = [{"image": torch.rand(2, 1, 4, 4), "label": torch.rand(2, 1, 4, 4)} for _ in range(3)]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=torch.nn.MSELoss(),
    )
    losses = {}
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda engine: losses.setdefault(engine.state.epoch, []).append(float(engine.state.output[0]["loss"])),
    )
    curves = TrainingCurves(str(tmp_path))
    curves.attach(trainer)
    trainer.run()
    rows = read_rows(tmp_path / "training_curves.csv")
    assert [r[0] for r in rows] == [1, 2] and all(r[2] is None for r in rows)
    assert [r[1] for r in rows] == pytest.approx([np.mean(losses[1]), np.mean(losses[2])], rel=1e-5)
    assert (tmp_path / "training_curves.png").stat().st_size > 0


# --- error maps and TensorBoard panels on a small labelled slide --------------------------------

ROI, OVERLAP = 64, 0.25


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("slide")
    image, mask = disc_slide(shape=(400, 500), discs=((150, 180, 50), (260, 330, 40)), seed=1)
    path = write_slide(root / "s1.tiff", image)
    return prepare_slide("s1", path, root / "cache", 2, rle_encode(mask)), image


def window_outputs(prepared, predict, drop_image=False):
    """Evaluator-style outputs: one item per window, ``pred`` from ``predict(label window)``."""
    outputs = []
    for item in TissueWindows([prepared], ROI, OVERLAP).datalist:
        meta = {**item, "location": np.asarray(item["location"])}
        if drop_image:
            meta.pop("image")
        y, x = (v // item["downscale"] for v in item["location"])
        label = read_window(item["store"], LABEL, y, x, ROI, ROI).astype(np.float32)
        outputs.append(
            {
                "image": MetaTensor(torch.full((3, ROI, ROI), 0.5), meta=meta),
                "pred": torch.from_numpy(predict(label))[None],
            }
        )
    return outputs


def validate(prepared, outputs, handler, map_size=64):
    engine = Engine(lambda engine, batch: batch)
    metric = SlideDice(TissueWindows([prepared], ROI, OVERLAP), map_size=map_size)
    metric.attach(engine, "val_dice")
    handler = handler(metric)
    handler.attach(engine)
    engine.run([outputs[i : i + 4] for i in range(0, len(outputs), 4)])
    return engine, metric, handler


def read_png(path):
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB"))


def test_overlay_colours_false_positives_and_false_negatives():
    background = np.full((2, 3, 3), 100, np.uint8)
    prediction = np.array([[1, 1, 0], [0, 0, 0]])
    truth = np.array([[1, 0, 1], [0, 0, 0]])
    image = error_overlay(background, prediction, truth)
    assert tuple(image[0, 1]) == FP_COLOUR and tuple(image[0, 2]) == FN_COLOUR
    assert tuple(image[0, 0]) == (50, 150, 50)  # half-way to green
    assert (image[1] == 100).all()


def test_error_maps_picture_each_slide_over_its_thumbnail(tmp_path, slide):
    prepared, image = slide
    outputs = window_outputs(prepared, lambda label: np.roll(label, 6, axis=1))
    out = tmp_path / "validation"
    _, metric, _ = validate(prepared, outputs, lambda metric: ValidationErrorMaps(str(out), metric))
    maps = metric.error_maps()["s1"]
    assert maps.downsample == 4 and maps.prediction.shape == (50, 63)
    picture = read_png(out / "s1_errors.png")
    overlay = picture[:50, :63]
    prediction, truth = maps.prediction, maps.truth
    fp, fn, tp, neither = prediction & ~truth, truth & ~prediction, prediction & truth, ~prediction & ~truth
    assert fp.any() and fn.any() and tp.any()
    assert (overlay[fp] == FP_COLOUR).all() and (overlay[fn] == FN_COLOUR).all()
    assert (overlay[tp][:, 1] > overlay[tp][:, 0]).all() and (overlay[tp][:, 1] > overlay[tp][:, 2]).all()
    # elsewhere the thumbnail: the slide averaged over 8 x 8 level-0 blocks (JPEG-compressed, so nearly)
    expected = np.stack([pool_mask(image[..., c].astype(float), 8, "mean") for c in range(3)], -1)
    inside = neither.copy()
    inside[-1, :] = inside[:, -1] = False  # the last row and column reach past the slide
    assert np.abs(overlay[inside].astype(float) - expected[inside]).mean() < 6
    assert picture.shape[0] > 50  # the title and legend below the map
    record = json.loads((out / "errors.json").read_text())
    assert record["val_dice"] == pytest.approx(metric.compute()) and record["dice"] == metric.per_slide()


def test_error_maps_follow_the_best_model_and_survive_a_resumed_run(tmp_path, slide):
    prepared, _ = slide
    out = tmp_path / "validation"
    shifted = window_outputs(prepared, lambda label: np.roll(label, 6, axis=1))
    validate(prepared, shifted, lambda metric: ValidationErrorMaps(str(out), metric))
    first = (out / "s1_errors.png").read_bytes()
    empty = [{**o, "pred": torch.zeros_like(o["pred"])} for o in shifted]
    # worse: a resumed run keeps the best
    validate(prepared, empty, lambda metric: ValidationErrorMaps(str(out), metric))
    assert (out / "s1_errors.png").read_bytes() == first
    validate(prepared, empty, lambda metric: ValidationErrorMaps(str(out), metric, only_best=False))
    assert (out / "s1_errors.png").read_bytes() != first
    perfect = window_outputs(prepared, lambda label: label)
    validate(prepared, perfect, lambda metric: ValidationErrorMaps(str(out), metric))
    overlay = read_png(out / "s1_errors.png")[:50, :63]
    assert not (overlay == FP_COLOUR).all(-1).any() and not (overlay == FN_COLOUR).all(-1).any()
    assert json.loads((out / "errors.json").read_text())["val_dice"] == 1.0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_error_maps_without_a_readable_slide_draw_the_tissue_mask(tmp_path, slide):
    prepared, _ = slide
    outputs = window_outputs(prepared, lambda label: np.roll(label, 6, axis=1), drop_image=True)
    _, metric, _ = validate(prepared, outputs, lambda metric: ValidationErrorMaps(str(tmp_path), metric))
    maps = metric.error_maps()["s1"]
    overlay = read_png(tmp_path / "s1_errors.png")[:50, :63]
    plain = overlay[~maps.prediction & ~maps.truth]
    assert plain.min() == 205 and plain.max() == 245  # tissue grey, glass light grey (blends at the border)


def test_tensorboard_panels_show_the_same_labelled_windows_at_each_validation(tmp_path, slide):
    prepared, _ = slide
    outputs = window_outputs(prepared, lambda label: np.roll(label, 6, axis=1))
    engine, _, images = validate(
        prepared, outputs, lambda metric: ValidationImages(str(tmp_path), per_slide=2, max_windows=3)
    )
    engine.run([outputs[i : i + 4] for i in range(0, len(outputs), 4)])  # a second validation
    images.close()
    assert len(images.windows) == 2 and all(w[0] == "s1" for w in images.windows)
    accumulator = EventAccumulator(str(tmp_path), size_guidance={IMAGES: 0})
    accumulator.Reload()
    tags = accumulator.Tags()[IMAGES]
    expected = {
        f"validation/s1_y{y}_x{x}/{kind}" for _, y, x in images.windows for kind in ("image", "label", "prediction")
    }
    assert set(tags) == expected
    (_, y, x) = images.windows[0]
    events = accumulator.Images(f"validation/s1_y{y}_x{x}/label")
    assert [e.step for e in events] == [1, 1]  # one per validation (a plain engine's epoch is 1 each run)
    with Image.open(io.BytesIO(events[0].encoded_image_string)) as png:
        label = np.asarray(png.convert("L"))
    truth = read_window(prepared.store, LABEL, y // 2, x // 2, ROI, ROI)
    assert np.array_equal(label > 127, truth > 0) and truth.mean() >= 0.02
    (prediction,) = accumulator.Images(f"validation/s1_y{y}_x{x}/prediction")[:1]
    assert (prediction.width, prediction.height) == (ROI, ROI)


def test_the_config_parser_gives_the_handler_the_validators_metric(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser["output_dir"], parser["ckpt_dir"] = str(tmp_path / "logs"), str(tmp_path / "models")
    parser["imports"] = [*parser["imports"], "$import scripts.reports"]
    parser["validate"]["handlers"].append(
        {
            "_target_": "scripts.reports.ValidationErrorMaps",
            "output_dir": "$@output_dir + '/validation'",
            "metric": "@validate#key_metric#val_dice",
        }
    )
    handlers = parser.get_parsed_content("validate#handlers")
    assert handlers[-1].metric is parser.get_parsed_content("validate#key_metric")["val_dice"]
    assert str(handlers[-1].output_dir) == str(tmp_path / "logs" / "validation")


class DarkIsGlomerulus(torch.nn.Module):
    """A stand-in network: the discs are darker than tissue and glass."""

    def forward(self, image):
        return 40.0 * (0.55 - image.mean(dim=1, keepdim=True))


def test_handlers_on_a_monai_evaluator_reading_the_slide(tmp_path, slide):
    from monai.data import DataLoader
    from monai.engines import SupervisedEvaluator
    from monai.transforms import Activationsd, ScaleIntensityRanged

    from scripts.datasets import SlideRegionDataset

    prepared, _ = slide
    windows = TissueWindows([prepared], ROI, OVERLAP)
    dataset = SlideRegionDataset(windows.datalist, transform=ScaleIntensityRanged("image", 0, 255, 0.0, 1.0))
    metric = SlideDice(windows, map_size=64)
    maps_handler = ValidationErrorMaps(str(tmp_path / "validation"), metric)
    images = ValidationImages(str(tmp_path / "tb"), per_slide=1)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(dataset, batch_size=4),
        network=DarkIsGlomerulus(),
        postprocessing=Activationsd("pred", sigmoid=True),
        key_val_metric={"val_dice": metric},
        val_handlers=[maps_handler, images],
    )
    evaluator.run(3)
    images.close()
    assert evaluator.state.metrics["val_dice"] > 0.8
    maps = metric.error_maps()["s1"]
    assert maps.image == prepared.image and maps.truth.any()
    assert json.loads((tmp_path / "validation" / "errors.json").read_text())["epoch"] == 3
    assert read_png(tmp_path / "validation" / "s1_errors.png").shape[:2] >= maps.truth.shape
    ((_, y, x),) = images.windows
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    assert [e.step for e in accumulator.Images(f"validation/s1_y{y}_x{x}/image")] == [3]  # the trainer's epoch
