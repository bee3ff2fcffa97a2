"""Ignite handlers MONAI lacks: a wall-clock budget for training that still ends with the best
model saved, the best model (or, without validation slides, the last one) written atomically,
resuming a killed run, and the moving average of the weights that is validated and saved.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

from .distributed import any_rank, is_main_process
from .errors import InputError
from .files import atomic_path, write_text_atomic

__all__ = [
    "MODEL_FILE",
    "RECORD_FILE",
    "BestModelSaver",
    "LastModelSaver",
    "TrainingCheckpoint",
    "TrainingTimeLimit",
    "WeightAverage",
    "read_record",
]

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"  # a saved model's weights (what the Model Zoo and inference load)
RECORD_FILE = "best.json"  # beside it: {"metric", "epoch"} and the settings it was trained with


def read_record(folder: str | Path) -> dict | None:
    """The record saved beside a folder's model (:data:`RECORD_FILE`), or None when there is none."""
    path = Path(folder) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else None


class TrainingTimeLimit:
    """Stop training once ``max_minutes`` of wall-clock time are spent, validating one last time.

    The check runs after every iteration. It stops early enough to fit one more validation (as
    long as the last one took), and on stopping runs the validator if the model changed since its
    last run, so the checkpoint handlers on the validator save the best model seen. Under
    ``torchrun`` all ranks stop at the same iteration, and rank 0 validates.

    ignite's ``TimeLimit`` stops at the limit itself: it leaves no time for the last validation,
    runs none, and lets ranks stop at different iterations (a hang under ``torchrun``).

    Args:
        max_minutes: the budget; None or 0 disables it.
        validator: the validation evaluator (its handlers save the best model), or None.
    """

    def __init__(self, max_minutes: float | None, validator: Engine | None = None) -> None:
        self.budget = None if not max_minutes else float(max_minutes) * 60
        self.validator = validator
        self._start = 0.0
        self._validation_began = 0.0
        self._validation_seconds = 0.0
        self._validated_at = -1

    def attach(self, engine: Engine) -> None:
        """Register with the trainer (and time the validator's runs)."""
        if self.budget is None:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        engine.add_event_handler(Events.TERMINATE, self._validate_last)
        if self.validator is not None:
            self.validator.add_event_handler(Events.STARTED, self._validation_started)
            self.validator.add_event_handler(Events.COMPLETED, self._validation_completed, engine)

    def _started(self, engine: Engine) -> None:
        self._start = time.monotonic()

    def _validation_started(self, validator: Engine) -> None:
        self._validation_began = time.monotonic()

    def _validation_completed(self, validator: Engine, trainer: Engine) -> None:
        self._validation_seconds = time.monotonic() - self._validation_began
        self._validated_at = trainer.state.iteration

    def _check(self, engine: Engine) -> None:
        elapsed = time.monotonic() - self._start
        if any_rank(elapsed + self._validation_seconds >= self.budget):  # every rank stops at the same step
            logger.info(
                "time budget of %.1f min reached after %d epochs; stopping", self.budget / 60, engine.state.epoch
            )
            engine.terminate()

    def _validate_last(self, engine: Engine) -> None:
        if self.validator is not None and self._validated_at != engine.state.iteration and is_main_process():
            self.validator.run(engine.state.epoch)


class BestModelSaver:
    """Save the network when the validation metric improves: ``model.pt`` (weights only, what the
    Model Zoo and inference load) and ``best.json`` (the metric, its epoch and ``settings``), each
    written to a temporary name and renamed, so a crash never leaves a corrupt model. The best
    value survives a resumed run.

    ignite's ``Checkpoint`` with ``DiskSaver(atomic=True)`` and a ``score_function`` saves the same
    weights, but under its own file names, without the record inference checks (``best.json``, with
    the settings), and it forgets the best score when a killed run resumes.

    Args:
        save_dir: the checkpoint folder.
        network: the network whose ``state_dict`` is saved.
        metric: the validator's metric to maximise.
        settings: what a user of the model must match (e.g. ``downscale``), recorded in ``best.json``.
    """

    def __init__(self, save_dir: str, network: torch.nn.Module, metric: str, settings: dict | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.network = network
        self.metric = metric
        self.settings = dict(settings or {})

    def attach(self, validator: Engine) -> None:
        validator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def best(self) -> dict | None:
        """``{"metric", "epoch"}`` of the best validated model saved so far, if any."""
        best = read_record(self.save_dir)
        return best if best and best["metric"] is not None else None  # None: a last-epoch model (LastModelSaver)

    def __call__(self, validator: Engine) -> None:
        value = float(validator.state.metrics[self.metric])
        best = self.best()
        if best is not None and value <= best["metric"]:
            return
        _save_model(self.save_dir, self.network, value, validator.state.epoch, self.settings)
        logger.info(
            "new best %s %.4f at epoch %d: saved %s",
            self.metric,
            value,
            validator.state.epoch,
            self.save_dir / MODEL_FILE,
        )


class LastModelSaver:
    """Save the network as it is when training ends, for runs without validation slides
    (``train_on_all``): ``model.pt`` and ``best.json`` with ``metric`` null, as
    :class:`BestModelSaver` writes them. Only rank 0 writes.

    Args:
        save_dir: the checkpoint folder.
        network: the network whose ``state_dict`` is saved.
        settings: recorded in ``best.json`` (see :class:`BestModelSaver`).
    """

    def __init__(self, save_dir: str, network: torch.nn.Module, settings: dict | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.network = network
        self.settings = dict(settings or {})

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.COMPLETED, self)  # also fired when the time budget terminates the run

    def __call__(self, trainer: Engine) -> None:
        if is_main_process():
            _save_model(self.save_dir, self.network, None, trainer.state.epoch, self.settings)


def _save_model(save_dir: Path, network: torch.nn.Module, metric: float | None, epoch: int, settings: dict) -> None:
    """Write ``model.pt`` (the weights) and ``best.json`` (``{"metric", "epoch", **settings}``), each atomically."""
    with atomic_path(save_dir / MODEL_FILE) as tmp:
        torch.save(_unwrapped(network).state_dict(), tmp)
    write_text_atomic(save_dir / RECORD_FILE, json.dumps({"metric": metric, "epoch": epoch, **settings}))


class TrainingCheckpoint:
    """Save everything needed to go on (network, optimizer, scheduler, trainer position) after
    every epoch, atomically, and resume from it when a run starts, so a killed run (even by
    SIGKILL) goes on from its last finished epoch.

    Args:
        path: the checkpoint file (``last.pt``).
        objects: ``{name: object with state_dict()}``, e.g. network, optimizer, lr_scheduler; a None
            (an option switched off) is left out, so checkpoints without it still resume.
        resume: load the checkpoint at start when it exists.

    ignite's ``Checkpoint`` (``DiskSaver(atomic=True)``) with ``Checkpoint.load_objects`` saves and
    resumes the same objects, but under numbered file names it rotates, and a checkpoint that does
    not fit the run (other network or ``ema_momentum``) ends in a traceback where this says in one
    line which object does not fit and what to do.
    """

    def __init__(self, path: str, objects: dict, resume: bool = True) -> None:
        self.path = Path(path)
        self.objects = {name: item for name, item in objects.items() if item is not None}
        self.resume = resume

    def attach(self, trainer: Engine) -> None:
        """Resume when the trainer starts, save after every epoch; attach it before MONAI's
        ``StatsHandler``, so a checkpoint it cannot resume from ends the run with one line: it
        raises any exception of the run again at once, so handlers attached after it never see
        one (ignite stops at the first that raises)."""
        trainer.add_event_handler(Events.STARTED, self._load)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        trainer.add_event_handler(Events.EXCEPTION_RAISED, _raise)

    def _save(self, trainer: Engine) -> None:
        if not is_main_process():
            return
        state = {name: _unwrapped(item).state_dict() for name, item in self.objects.items()}
        state["trainer"] = {"epoch": trainer.state.epoch, "iteration": trainer.state.iteration}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def _load(self, trainer: Engine) -> None:
        if not (self.resume and self.path.is_file()):
            return
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        advice = "start afresh with --resume false, or give this run its own --ckpt_dir"
        for name, item in self.objects.items():
            if name not in state:
                raise InputError(
                    f"{self.path} has no {name!r} to resume from: it was saved by a run with other "
                    f"settings (such as ema_momentum); {advice}"
                )
            try:
                _unwrapped(item).load_state_dict(state[name])
            except (KeyError, RuntimeError, ValueError) as error:
                reason = str(error).strip().splitlines()[0]
                raise InputError(
                    f"{self.path}: its {name!r} does not fit this run ({reason}): it was saved by a run "
                    f"with other settings (network, optimizer); {advice}"
                ) from None
        trainer.state.epoch = state["trainer"]["epoch"]
        trainer.state.iteration = state["trainer"]["iteration"]
        logger.info(
            "resumed from %s: epoch %d done, going on to epoch %d",
            self.path,
            trainer.state.epoch,
            trainer.state.max_epochs,
        )


class WeightAverage:
    """The model that is validated and saved: an exponential moving average of the network's
    weights over the training steps (ignite's ``EMAHandler``), or the network itself.

    Small batches make the weights of any one step noisy; their average over the last hundred or
    so steps is a smoother model to validate, keep and ship. The average runs on rank 0 only
    under ``torchrun`` (the ranks' weights are the same).

    Args:
        network: the network being trained (DistributedDataParallel is unwrapped).
        momentum: weight of each new step in the average, e.g. 0.01 (about the last 100 steps);
            None or 0: no average, ``model`` is the network.

    Attributes:
        model: the module to validate and save.
    """

    def __init__(self, network: torch.nn.Module, momentum: float | None = None) -> None:
        self._average = EMAHandler(network, momentum=float(momentum)) if momentum else None
        self.model = self._average.ema_model if self._average is not None else _unwrapped(network)

    def attach(self, trainer: Engine) -> None:
        """Update the average after every training step (nothing to do without one)."""
        if self._average is not None:
            self._average.attach(trainer, warn_if_exists=False)  # a resumed trainer has the momentum already


def _raise(engine: Engine, error: Exception) -> None:
    """Raise what stopped the run again at once: a later handler (MONAI's ``StatsHandler``) would log
    its traceback, which bad input must not show; a bug's traceback still reaches the user from Python."""
    raise error


def _unwrapped(item):
    """The module inside DistributedDataParallel (so checkpoints load with or without it)."""
    return getattr(item, "module", item) if isinstance(item, torch.nn.parallel.DistributedDataParallel) else item
