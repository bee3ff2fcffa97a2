"""Seeing the model: what training did and what the model gets wrong, as files a user can open.

Three ignite handlers, each with ``attach(engine)`` like those in :mod:`scripts.handlers`:

- :class:`TrainingCurves` (on the trainer): ``<output_dir>/training_curves.png`` (mean training
  loss per epoch and validation Dice) and ``training_curves.csv`` (``epoch,loss,val_dice``),
  rewritten after every validation and when training ends, so a killed run still has a current
  picture. A run resumed from ``last.pt`` keeps the history up to the resumed epoch.
- :class:`ValidationErrorMaps` (on the validator): per validation slide,
  ``<output_dir>/<slide_id>_errors.png``, the slide thumbnail with true positives tinted green,
  false positives in red and false negatives in cyan (a legend is drawn under the map), from
  the small maps :class:`scripts.metrics.SlideDice` keeps while it scores.
- :class:`ValidationImages` (on the validator): TensorBoard image panels of a few fixed
  validation windows (image, label, predicted probability), one step per validation.

Every file is written to a temporary name and renamed into place (:mod:`scripts.files`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch
from monai.handlers import from_engine

from .distributed import is_main_process
from .files import atomic_path, write_csv, write_text_atomic
from .keys import LOCATION, SLIDE_ID
from .metrics import SlideDice, SlideMaps
from .outputs import write_png
from .slides import read_thumbnail
from .store import read_tissue
from .transforms import label_window

__all__ = [
    "FN_COLOUR",
    "FP_COLOUR",
    "TP_COLOUR",
    "TrainingCurves",
    "ValidationErrorMaps",
    "ValidationImages",
    "error_overlay",
    "render_error_map",
]

logger = logging.getLogger(__name__)

TP_COLOUR = (0, 200, 0)  # predicted and true: tinted half-way to green
FP_COLOUR = (255, 0, 0)  # predicted, not in the label: red (magenta would vanish in PAS stain)
FN_COLOUR = (0, 255, 255)  # in the label, missed: cyan
TP_TINT = 0.5


class TrainingCurves:
    """Mean training loss per epoch and validation Dice, as a PNG plot and a CSV.

    The loss of every iteration is averaged over its epoch; the validator's metric is recorded for
    the trainer's epoch each time the validator runs. Both files are rewritten after every
    validation and when training ends (or is stopped); a partial epoch (a run stopped by the time
    budget) gets the mean of the iterations it ran. When the trainer starts at a later epoch (a
    run resumed from a checkpoint), the rows of the existing CSV up to that epoch are kept; a run
    starting from epoch 0 starts a new history. The PNG is drawn by matplotlib's Agg backend (no
    screen); without matplotlib only the CSV is written.

    Args:
        output_dir: folder of ``<name>.png`` and ``<name>.csv``.
        validator: the validation evaluator, or None for loss only.
        metric: the validator's metric to plot.
        output_transform: the trainer's output to the iteration's loss (MONAI's trainer: a list of
            decollated dicts or a dict, both with ``loss``).
        name: file name stem.
    """

    HEADER = ("epoch", "loss", "val_dice")

    def __init__(
        self,
        output_dir: str,
        validator: Engine | None = None,
        metric: str = "val_dice",
        output_transform: Callable | None = None,
        name: str = "training_curves",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.validator = validator
        self.metric = metric
        self.output_transform = output_transform or from_engine(["loss"], first=True)
        self.name = name
        self.loss: dict[int, float] = {}
        self.dice: dict[int, float] = {}
        self._trainer: Engine | None = None
        self._sum = 0.0
        self._count = 0
        self._warned = False

    @property
    def csv_path(self) -> Path:
        return self.output_dir / f"{self.name}.csv"

    @property
    def png_path(self) -> Path:
        return self.output_dir / f"{self.name}.png"

    def attach(self, trainer: Engine) -> None:
        """Register with the trainer (after any handler that restores its epoch on start) and the validator."""
        self._trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._started)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._record_loss)
        trainer.add_event_handler(Events.TERMINATE, self._record_loss)
        trainer.add_event_handler(Events.COMPLETED, self._completed)
        if self.validator is not None:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    def rows(self) -> list[tuple[int, float | None, float | None]]:
        """``(epoch, mean loss, val_dice)``, None where not known, by epoch."""
        return [(epoch, self.loss.get(epoch), self.dice.get(epoch)) for epoch in sorted({*self.loss, *self.dice})]

    def _started(self, trainer: Engine) -> None:
        self._sum, self._count = 0.0, 0
        self.loss, self.dice = {}, {}
        resumed = trainer.state.epoch
        if resumed > 0 and self.csv_path.is_file():
            for epoch, loss, dice in _read_curves(self.csv_path):
                if epoch <= resumed:
                    if loss is not None:
                        self.loss[epoch] = loss
                    if dice is not None:
                        self.dice[epoch] = dice

    def _epoch_started(self, trainer: Engine) -> None:
        self._sum, self._count = 0.0, 0

    def _iteration_completed(self, trainer: Engine) -> None:
        loss = self.output_transform(trainer.state.output)
        while isinstance(loss, (tuple, list)) and len(loss) == 1:
            loss = loss[0]
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if math.isfinite(value):
            self._sum += value
            self._count += 1

    def _record_loss(self, trainer: Engine) -> None:
        if self._count:
            self.loss[trainer.state.epoch] = self._sum / self._count

    def _validated(self, validator: Engine) -> None:
        epoch = self._trainer.state.epoch if self._trainer is not None else validator.state.epoch
        if self._trainer is not None:
            self._record_loss(self._trainer)  # the validated epoch's loss (validation runs at its end)
        self.dice[epoch] = float(validator.state.metrics[self.metric])
        self.write()

    def _completed(self, trainer: Engine) -> None:
        self._record_loss(trainer)
        self.write()

    def write(self) -> None:
        """Write the CSV and the PNG (rank 0 only)."""
        if not is_main_process():
            return
        rows = self.rows()
        write_csv(self.csv_path, self.HEADER, [(e, _number(loss), _number(dice)) for e, loss, dice in rows])
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            if not self._warned:
                logger.warning("matplotlib is not installed: %s is not drawn (the CSV is written)", self.png_path)
                self._warned = True
            return
        figure = Figure(figsize=(7, 6), layout="constrained")
        FigureCanvasAgg(figure)
        loss_axes, dice_axes = figure.subplots(2, 1, sharex=True)
        epochs = [e for e, loss, _ in rows if loss is not None]
        loss_axes.plot(epochs, [self.loss[e] for e in epochs], marker="o", markersize=3, color="tab:blue")
        loss_axes.set_ylabel("mean training loss")
        loss_axes.grid(alpha=0.3)
        validated = [e for e, _, dice in rows if dice is not None and math.isfinite(dice)]
        dice_axes.plot(validated, [self.dice[e] for e in validated], marker="o", markersize=4, color="tab:green")
        dice_axes.set_ylabel(f"validation Dice ({self.metric})")
        dice_axes.set_xlabel("epoch")
        dice_axes.set_ylim(0.0, 1.02)
        dice_axes.grid(alpha=0.3)
        if validated:
            best = max(validated, key=lambda e: self.dice[e])
            dice_axes.set_title(f"best {self.dice[best]:.4f} at epoch {best}", fontsize=10)
        figure.suptitle("training curves")
        with atomic_path(self.png_path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)


def _number(value: float | None) -> str:
    return "" if value is None else format(value, ".6g")


def _read_curves(path: Path) -> list[tuple[int, float | None, float | None]]:
    """Rows of a curves CSV; an unreadable file reads as no rows."""

    def value(text: str | None) -> float | None:
        return float(text) if text not in (None, "") else None

    try:
        with open(path, newline="") as handle:
            return [
                (int(row["epoch"]), value(row.get("loss")), value(row.get("val_dice")))
                for row in csv.DictReader(handle)
            ]
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("cannot read %s (%s); the curves start over", path, error)
        return []


def error_overlay(background: np.ndarray, prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Colour a slide's errors over its thumbnail.

    Args:
        background: ``(h, w, 3)`` ``uint8`` thumbnail at the maps' size.
        prediction: ``(h, w)`` predicted mask.
        truth: ``(h, w)`` true mask.

    Returns:
        A copy of ``background``: true positives tinted half-way to :data:`TP_COLOUR` (green),
        false positives :data:`FP_COLOUR` (red), false negatives :data:`FN_COLOUR` (cyan).
    """
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    image = background.copy()
    hit = prediction & truth
    image[hit] = (image[hit] * (1 - TP_TINT) + np.asarray(TP_COLOUR) * TP_TINT).round().astype(np.uint8)
    image[prediction & ~truth] = FP_COLOUR
    image[truth & ~prediction] = FN_COLOUR
    return image


def render_error_map(background: np.ndarray, prediction: np.ndarray, truth: np.ndarray, title: str = "") -> np.ndarray:
    """:func:`error_overlay` at the top left (pixel for pixel), a title and a legend below it.

    Without Pillow (which draws the text) the overlay alone is returned.
    """
    overlay = error_overlay(background, prediction, truth)
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return overlay
    line = 14
    entries = [
        (TP_COLOUR, "true positive (tinted)"),
        (FP_COLOUR, "false positive: predicted, not in label"),
        (FN_COLOUR, "false negative: in label, missed"),
    ]
    height, width = overlay.shape[:2]
    canvas = Image.new("RGB", (max(width, 300), height + line * (len(entries) + 1) + 8), (255, 255, 255))
    canvas.paste(Image.fromarray(overlay), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + 4
    draw.text((4, y), title, fill=(0, 0, 0))
    for colour, text in entries:
        y += line
        draw.rectangle((4, y + 2, 14, y + 11), fill=colour, outline=(0, 0, 0))
        draw.text((20, y), text, fill=(0, 0, 0))
    return np.asarray(canvas)


class ValidationErrorMaps:
    """Per validation slide, ``<output_dir>/<slide_id>_errors.png``: where the model is wrong.

    The slide thumbnail at the size of the maps :class:`scripts.metrics.SlideDice` keeps (longest
    side about ``map_size``, 1024 by default) with **true positives tinted green**, **false
    positives red** (predicted, not in the label) and **false negatives cyan** (in the label,
    missed); a title (slide, Dice, epoch) and this legend are drawn under the map. A map pixel
    stands for a block of working pixels and counts as predicted (or true) when any pixel of its
    block is, so a block holding both kinds of error shows as a true positive.

    By default the pictures are written only when ``metric`` beats the best value seen (the rule
    :class:`scripts.handlers.BestModelSaver` uses, so they show the saved ``model.pt``);
    ``<output_dir>/errors.json`` records that value, its epoch and each slide's Dice, and a
    resumed run goes on from it. With ``only_best=False`` every validation rewrites them.

    Args:
        output_dir: folder of the pictures (e.g. ``<logs>/validation``).
        metric: the validator's :class:`scripts.metrics.SlideDice` (the same object as its key metric).
        metric_name: the name the validator stores that metric under.
        only_best: write only on a new best value.
    """

    def __init__(
        self, output_dir: str, metric: SlideDice, metric_name: str = "val_dice", only_best: bool = True
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metric = metric
        self.metric_name = metric_name
        self.only_best = only_best
        self._best: float | None = None
        self._best_loaded = False
        self._backgrounds: dict[tuple, np.ndarray] = {}

    def attach(self, validator: Engine) -> None:
        validator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def best(self) -> float | None:
        """The best value pictured so far (this run or one it resumed)."""
        if not self._best_loaded:
            path = self.output_dir / "errors.json"
            try:
                self._best = float(json.loads(path.read_text())["val_dice"]) if path.is_file() else None
            except (OSError, ValueError, KeyError, TypeError):
                self._best = None
            self._best_loaded = True
        return self._best

    def __call__(self, validator: Engine) -> None:
        if not is_main_process():
            return
        value = float(validator.state.metrics[self.metric_name])
        if self.only_best:
            best = self.best()
            if math.isnan(value) or (best is not None and value <= best):
                return
        per_slide = self.metric.per_slide()
        epoch = validator.state.epoch
        for slide_id, maps in self.metric.error_maps().items():
            title = f"{slide_id}  Dice {per_slide.get(slide_id, float('nan')):.4f}  epoch {epoch}"
            image = render_error_map(self._background(maps), maps.prediction, maps.truth, title)
            write_png(self.output_dir / f"{slide_id}_errors.png", image)
        write_text_atomic(
            self.output_dir / "errors.json",
            json.dumps({"val_dice": value, "epoch": epoch, "dice": per_slide}, indent=1),
        )
        self._best, self._best_loaded = value, True

    def _background(self, maps: SlideMaps) -> np.ndarray:
        """The slide's thumbnail at the maps' size (cached); the tissue mask in grey when unreadable."""
        key = (maps.store, maps.image, maps.prediction.shape, maps.downsample)
        if key not in self._backgrounds:
            level0 = maps.downsample * maps.downscale  # level-0 pixels per map pixel
            try:
                if maps.image is None:
                    raise ValueError("no slide image in the window metadata")
                thumbnail, scale = read_thumbnail(maps.image, max_downsample=level0)
            except Exception as error:  # noqa: BLE001 - any unreadable slide: fall back to the tissue mask
                logger.warning("thumbnail of %s unreadable (%s); drawing its tissue mask", maps.store, error)
                tissue, scale = read_tissue(maps.store)
                thumbnail = np.where(tissue[..., None], np.uint8(205), np.uint8(245)).repeat(3, axis=2)
            self._backgrounds[key] = _resample(thumbnail[..., :3], scale, level0, maps.prediction.shape)
        return self._backgrounds[key]


def _resample(image: np.ndarray, scale: int, target_scale: int, shape: tuple[int, int]) -> np.ndarray:
    """An ``(h, w, 3)`` image at ``scale`` level-0 pixels per pixel, at ``target_scale`` and ``shape``:
    block means by the whole ratio, then the nearest pixel (edge pixels repeat past the slide)."""
    image = np.asarray(image, np.float32)
    factor = max(int(target_scale) // int(scale), 1)
    if factor > 1:
        h, w = image.shape[:2]
        padded = np.pad(image, ((0, -h % factor), (0, -w % factor), (0, 0)), mode="edge")
        image = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, -1).mean(
            axis=(1, 3)
        )
    ratio = target_scale / (scale * factor)  # source pixels per target pixel (1 for powers of two)
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * ratio).astype(int), image.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * ratio).astype(int), image.shape[1] - 1)
    return image[rows][:, cols].round().clip(0, 255).astype(np.uint8)


class ValidationImages:
    """TensorBoard image panels of a few validation windows: the image, its label and the prediction.

    The validation batch holds ``image`` and ``pred`` only (labels live in the slides' zarr
    stores), so for a window to show the label window is read from the store as
    :class:`scripts.transforms.LoadLabelPatchd` reads it. The windows are chosen once, during the
    first validation: the first ``per_slide`` windows of each slide (in validation order) whose
    label covers at least ``min_fraction`` of the window, at most ``max_windows`` in all. The same
    windows are then shown at every validation, one TensorBoard step per validation (the
    trainer's epoch), under ``<tag>/<slide>_y<row>_x<col>/{image,label,prediction}`` (level-0
    corner). Written with ``torch.utils.tensorboard.SummaryWriter.add_image`` into ``log_dir``
    (beside the scalars of MONAI's ``TensorBoardStatsHandler``); the prediction is the
    post-processed probability, in grey.

    Args:
        log_dir: TensorBoard log folder.
        per_slide: windows shown per slide.
        max_windows: windows shown in all.
        min_fraction: smallest share of label foreground a shown window has.
        tag: prefix of the image tags.
    """

    def __init__(
        self,
        log_dir: str,
        per_slide: int = 2,
        max_windows: int = 8,
        min_fraction: float = 0.02,
        tag: str = "validation",
    ) -> None:
        self.log_dir = Path(log_dir)
        self.per_slide = per_slide
        self.max_windows = max_windows
        self.min_fraction = min_fraction
        self.tag = tag
        self._chosen: list[tuple[str, int, int]] = []
        self._rejected: set[tuple[str, int, int]] = set()
        self._choosing = True
        self._writer = None

    def attach(self, validator: Engine) -> None:
        validator.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        validator.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    @property
    def windows(self) -> list[tuple[str, int, int]]:
        """The chosen windows: ``(slide_id, level-0 row, level-0 column)``."""
        return list(self._chosen)

    def _iteration_completed(self, validator: Engine) -> None:
        output = validator.state.output
        if isinstance(output, dict):
            output = decollate_batch(output)
        for item in output or ():
            meta = item["image"].meta
            key = (str(meta[SLIDE_ID]), *(int(v) for v in meta[LOCATION]))
            if key not in self._chosen:
                if not self._choosing or key in self._rejected or len(self._chosen) >= self.max_windows:
                    continue
                if sum(k[0] == key[0] for k in self._chosen) >= self.per_slide:
                    continue
            label = label_window(meta) != 0
            if key not in self._chosen:
                if label.mean() < self.min_fraction or not label.any():
                    self._rejected.add(key)
                    continue
                self._chosen.append(key)
            self._write(key, item, label, validator.state.epoch)

    def _epoch_completed(self, validator: Engine) -> None:
        self._choosing = False  # later validations show the same windows
        self._rejected.clear()
        if self._writer is not None:
            self._writer.flush()

    def _write(self, key: tuple[str, int, int], item: dict, label: np.ndarray, step: int) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        prefix = f"{self.tag}/{key[0]}_y{key[1]}_x{key[2]}"
        image = torch.as_tensor(item["image"]).detach().float().cpu().clamp(0, 1)
        prediction = torch.as_tensor(item["pred"]).detach().float().cpu().clamp(0, 1)
        self._writer.add_image(f"{prefix}/image", image.as_subclass(torch.Tensor), step, dataformats="CHW")
        self._writer.add_image(f"{prefix}/label", label[None].astype(np.float32), step, dataformats="CHW")
        self._writer.add_image(
            f"{prefix}/prediction", prediction[:1].as_subclass(torch.Tensor), step, dataformats="CHW"
        )

    def close(self) -> None:
        """Close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
