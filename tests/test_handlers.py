"""The training time budget (scripts/handlers.py) on real ignite engines."""

from __future__ import annotations

import time

from ignite.engine import Engine, Events
from scripts.handlers import TrainingTimeLimit


class Validator(Engine):
    """Stands in for a MONAI evaluator, whose ``run`` takes the trainer's epoch."""

    def run(self, global_epoch: int = 1):
        return super().run([0])


def engines(step_seconds: float):
    trainer = Engine(lambda engine, batch: time.sleep(step_seconds))
    validations = []
    validator = Validator(lambda engine, batch: None)
    validator.add_event_handler(Events.COMPLETED, lambda engine: validations.append(trainer.state.iteration))
    return trainer, validator, validations


def test_budget_stops_training_and_validates_the_last_model():
    trainer, validator, validations = engines(0.05)
    TrainingTimeLimit(max_minutes=0.3 / 60, validator=validator).attach(trainer)
    trainer.run(range(100), max_epochs=50)
    assert trainer.state.epoch == 1 and 3 <= trainer.state.iteration < 100
    assert validations == [trainer.state.iteration]  # one validation, of the model training ended with


def test_no_extra_validation_when_the_last_epoch_was_just_validated():
    trainer, validator, validations = engines(0.0)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: validator.run(engine.state.epoch))
    limit = TrainingTimeLimit(max_minutes=0.2 / 60, validator=validator)
    limit.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: time.sleep(0.25))
    trainer.run(range(3), max_epochs=20)
    assert trainer.state.epoch < 20
    assert validations[-1] == trainer.state.iteration and len(validations) == len(set(validations))


def test_no_budget_means_no_limit():
    trainer, validator, validations = engines(0.0)
    TrainingTimeLimit(max_minutes=None, validator=validator).attach(trainer)
    trainer.run(range(5), max_epochs=3)
    assert trainer.state.epoch == 3 and validations == []
