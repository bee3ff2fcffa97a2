"""Ignite handlers MONAI lacks: a wall-clock budget for training that still ends with the best
model saved.
"""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

__all__ = ["TrainingTimeLimit"]

logger = logging.getLogger(__name__)


class TrainingTimeLimit:
    """Stop training once ``max_minutes`` of wall-clock time are spent, validating one last time.

    The check runs after every iteration. It stops early enough to fit one more validation (as
    long as the last one took), and on stopping runs the validator if the model changed since its
    last run, so the checkpoint handlers on the validator save the best model seen.

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
        if elapsed + self._validation_seconds >= self.budget:
            logger.info("time budget of %.1f min reached after %d epochs; stopping", self.budget / 60, engine.state.epoch)
            engine.terminate()

    def _validate_last(self, engine: Engine) -> None:
        if self.validator is not None and self._validated_at != engine.state.iteration:
            self.validator.run(engine.state.epoch)
