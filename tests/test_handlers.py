"""Training handlers (scripts/handlers.py) on real ignite engines: the time budget, the best
model saved atomically, resuming a run that was cut short, and the moving average of the weights."""

from __future__ import annotations

import json
import logging
import time

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import StatsHandler

from scripts.errors import InputError
from scripts.handlers import (
    BestModelSaver,
    LastModelSaver,
    TrainingCheckpoint,
    TrainingTimeLimit,
    WeightAverage,
)


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


def test_best_model_is_saved_only_when_the_metric_improves_and_survives_a_new_run(tmp_path):
    network = torch.nn.Linear(2, 1)
    validator = Engine(lambda engine, batch: None)
    scores = iter([0.5, 0.4, 0.7])

    @validator.on(Events.EPOCH_COMPLETED)
    def score(engine):
        engine.state.metrics["dice"] = next(scores)

    BestModelSaver(str(tmp_path), network, "dice").attach(validator)
    saved = []
    for _ in range(3):
        with torch.no_grad():
            network.weight.add_(1.0)
        validator.run([0])
        saved.append(torch.load(tmp_path / "model.pt", weights_only=True)["weight"].clone())
    assert torch.equal(saved[0], saved[1]) and not torch.equal(saved[1], saved[2])  # 0.4 did not replace 0.5
    assert json.loads((tmp_path / "best.json").read_text())["metric"] == 0.7
    again = BestModelSaver(str(tmp_path), network, "dice")  # a resumed run knows the best so far
    assert again.best()["metric"] == 0.7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_last_model_is_saved_when_training_ends_even_on_the_time_budget(tmp_path):
    network = torch.nn.Linear(2, 1)

    def step(engine, batch):
        with torch.no_grad():
            network.weight.add_(1.0)
        time.sleep(0.05)

    trainer = Engine(step)
    LastModelSaver(str(tmp_path), network).attach(trainer)
    TrainingTimeLimit(max_minutes=0.3 / 60).attach(trainer)
    trainer.run(range(100), max_epochs=50)
    assert trainer.state.iteration < 100  # stopped by the budget, and saved all the same:
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], network.weight)
    assert json.loads((tmp_path / "best.json").read_text()) == {"metric": None, "epoch": 1}
    LastModelSaver(str(tmp_path / "recorded"), network, {"downscale": 4})(trainer)  # what a user of it must match
    assert json.loads((tmp_path / "recorded" / "best.json").read_text()) == {"metric": None, "epoch": 1, "downscale": 4}
    assert BestModelSaver(str(tmp_path), network, "dice").best() is None  # a later validated run saves its first best


def test_training_checkpoint_resumes_model_optimizer_scheduler_and_epoch(tmp_path):
    def make():
        torch.manual_seed(0)
        network = torch.nn.Linear(3, 1)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

        def step(engine, batch):
            optimizer.zero_grad()
            network(torch.ones(1, 3)).sum().backward()
            optimizer.step()

        trainer = Engine(step)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())
        objects = {"model": network, "optimizer": optimizer, "lr_scheduler": scheduler, "switched_off": None}
        TrainingCheckpoint(str(tmp_path / "last.pt"), objects).attach(trainer)
        return trainer, network, optimizer

    uninterrupted, reference, reference_optimizer = make()
    (tmp_path / "last.pt").unlink(missing_ok=True)
    uninterrupted.run(range(4), max_epochs=5)
    (tmp_path / "last.pt").unlink()

    first, _, _ = make()
    first.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())  # "killed" after epoch 2
    first.run(range(4), max_epochs=5)
    second, network, optimizer = make()
    epochs = []
    second.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    second.run(range(4), max_epochs=5)
    assert epochs == [3, 4, 5]
    assert torch.allclose(network.weight, reference.weight)  # same as never interrupted
    assert optimizer.param_groups[0]["lr"] == reference_optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("change", ["an average is asked for", "another network"])
def test_a_checkpoint_saved_with_other_settings_stops_the_run_with_one_clear_line(tmp_path, caplog, capfd, change):
    def trainer_with(objects):
        trainer = Engine(lambda engine, batch: None)
        TrainingCheckpoint(str(tmp_path / "last.pt"), objects).attach(trainer)
        StatsHandler(iteration_log=False, name="train").attach(trainer)  # as train.yaml: after the checkpoint
        return trainer

    trainer_with({"model": torch.nn.Linear(3, 1), "averaged_model": None}).run(range(2), max_epochs=1)
    objects = (
        {"model": torch.nn.Linear(3, 1), "averaged_model": torch.nn.Linear(3, 1)}
        if change.startswith("an")
        else {"model": torch.nn.Linear(4, 1)}
    )
    with caplog.at_level(logging.INFO), pytest.raises(InputError) as raised:
        trainer_with(objects).run(range(2), max_epochs=2)
    message = str(raised.value)
    assert str(tmp_path / "last.pt") in message and "--resume false" in message and "\n" not in message
    assert ("'averaged_model'" if change.startswith("an") else "'model' does not fit") in message
    printed = capfd.readouterr()
    assert "Traceback" not in printed.out + printed.err  # no traceback logged on the way
    assert not [record for record in caplog.records if record.exc_info]


def test_weight_average_follows_the_training_steps_and_leaves_the_network_alone():
    network = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(network.weight)
    averaged = WeightAverage(network, momentum=0.5)
    trainer = Engine(lambda engine, batch: network.weight.data.fill_(batch))  # step k sets the weight to k
    averaged.attach(trainer)
    trainer.run([4.0, 8.0], max_epochs=1)
    assert averaged.model is not network and network.weight.item() == 8.0
    assert averaged.model.weight.item() == 0.5 * (0.5 * 0 + 0.5 * 4.0) + 0.5 * 8.0  # 5.0
    plain = WeightAverage(network, momentum=None)
    plain.attach(trainer)
    assert plain.model is network
