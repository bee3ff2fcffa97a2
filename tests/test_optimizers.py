"""Lookahead and Ranger (scripts/optimizers.py): the Lookahead update, schedulers, AMP, MONAI's
trainer, checkpoints that resume bit-identically, and the ``ranger.yaml`` recipe."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

import scripts.optimizers
from conftest import BUNDLE
from scripts.optimizers import BudgetCosineLR, Lookahead, ranger

CONFIGS = BUNDLE / "configs"


def regression(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A small noiseless linear regression problem: inputs ``(64, 4)`` and targets ``(64,)``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(64, 4, generator=generator)
    return inputs, inputs @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.7


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int, scheduler=None) -> float:
    """``steps`` full-batch steps on :func:`regression`; returns the last loss."""
    inputs, targets = regression()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs).squeeze(1), targets)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return float(loss.detach())


def scalar_problem(k: int = 3, alpha: float = 0.5, lr: float = 0.1) -> tuple[torch.nn.Parameter, Lookahead]:
    """One parameter w = 1 and Lookahead over SGD: the loss w^2 / 2 makes each SGD step w *= 1 - lr."""
    weight = torch.nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    return weight, Lookahead(torch.optim.SGD([weight], lr=lr), k=k, alpha=alpha)


def sgd_step(weight: torch.nn.Parameter, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    (0.5 * weight**2).sum().backward()
    optimizer.step()


def test_slow_and_fast_weights_after_k_steps_match_a_hand_computation():
    weight, optimizer = scalar_problem(k=3, alpha=0.5, lr=0.1)
    expected_fast = []
    for _ in range(2):
        sgd_step(weight, optimizer)
        expected_fast.append(float(weight.detach()))
    assert expected_fast == pytest.approx([0.9, 0.81])  # plain SGD until the k-th step
    sgd_step(weight, optimizer)
    slow = 1.0 + 0.5 * (0.9**3 - 1.0)  # slow weights start at w0 = 1 and move alpha towards 0.729
    assert float(weight.detach()) == pytest.approx(slow, abs=1e-12)  # the fast weights are reset to the slow ones
    assert float(optimizer.state[weight]["slow"]) == pytest.approx(slow, abs=1e-12)
    for _ in range(3):
        sgd_step(weight, optimizer)
    slow = slow + 0.5 * (slow * 0.9**3 - slow)
    assert float(weight.detach()) == pytest.approx(slow, abs=1e-12)
    assert optimizer.lookahead_step == 6


def test_slow_weights_start_from_weights_loaded_after_the_optimizer_is_built():
    weight, optimizer = scalar_problem(k=2, alpha=0.5, lr=0.1)
    with torch.no_grad():
        weight.fill_(2.0)  # as MONAI's CheckpointLoader does when the trainer starts
    sgd_step(weight, optimizer)
    sgd_step(weight, optimizer)
    assert float(weight.detach()) == pytest.approx(2.0 + 0.5 * (2.0 * 0.81 - 2.0), abs=1e-12)


def test_ranger_is_lookahead_over_radam_with_decoupled_weight_decay():
    model = torch.nn.Linear(4, 1)
    optimizer = ranger(model.parameters(), lr=0.01, weight_decay=0.001, k=5, alpha=0.6)
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.optimizer, torch.optim.RAdam)
    assert (optimizer.k, optimizer.alpha) == (5, 0.6)
    assert optimizer.param_groups is optimizer.optimizer.param_groups
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.01, (0.95, 0.999), 0.001)
    assert group["decoupled_weight_decay"] is True


def test_ranger_minimises_a_regression_problem():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = ranger(model.parameters(), lr=0.1)
    first = train(model, optimizer, 1)
    last = train(model, optimizer, 400)
    assert last < 1e-3 * first
    assert torch.allclose(model.weight.detach(), torch.tensor([[1.0, -2.0, 0.5, 3.0]]), atol=0.02)
    assert torch.allclose(model.bias.detach(), torch.tensor([0.7]), atol=0.02)


def test_a_scheduler_on_the_lookahead_sets_the_lr_the_base_optimizer_uses():
    weight = torch.nn.Parameter(torch.tensor([0.0]))
    base = torch.optim.SGD([weight], lr=1.0)
    optimizer = Lookahead(base, k=100)  # no synchronisation in this test
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer=optimizer, T_max=10)

    def step() -> float:
        before = float(weight.detach())
        optimizer.zero_grad()
        weight.sum().backward()  # gradient 1: SGD moves w by -lr
        optimizer.step()
        scheduler.step()
        return before - float(weight.detach())

    assert step() == pytest.approx(1.0)
    expected = (1 + math.cos(math.pi / 10)) / 2
    assert base.param_groups[0]["lr"] == pytest.approx(expected)
    assert step() == pytest.approx(expected)
    assert scheduler.get_last_lr() == [base.param_groups[0]["lr"]]


def test_a_checkpoint_loaded_with_weights_only_resumes_bit_identically(tmp_path):
    def setup(seed: int = 0):
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 1)
        optimizer = ranger(model.parameters(), lr=0.05, weight_decay=0.01, k=3)
        return model, optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=12)

    model, optimizer, scheduler = setup()
    train(model, optimizer, 12, scheduler)

    model_a, optimizer_a, scheduler_a = setup()
    train(model_a, optimizer_a, 5, scheduler_a)  # mid Lookahead cycle (5 % 3), before RAdam rectifies
    path = tmp_path / "last.pt"
    torch.save(
        {
            "model": model_a.state_dict(),
            "optimizer": optimizer_a.state_dict(),
            "lr_scheduler": scheduler_a.state_dict(),
        },
        path,
    )

    model_b, optimizer_b, scheduler_b = setup(seed=1)  # another initialisation, overwritten by the checkpoint
    state = torch.load(path, map_location="cpu", weights_only=True)
    model_b.load_state_dict(state["model"])
    optimizer_b.load_state_dict(state["optimizer"])
    scheduler_b.load_state_dict(state["lr_scheduler"])
    assert optimizer_b.lookahead_step == 5
    train(model_b, optimizer_b, 7, scheduler_b)

    for resumed, uninterrupted in zip(model_b.parameters(), model.parameters(), strict=True):
        assert torch.equal(resumed, uninterrupted)
    assert optimizer_b.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert optimizer_b.param_groups is optimizer_b.optimizer.param_groups


def test_loading_another_optimizers_state_dict_fails_loudly():
    model = torch.nn.Linear(4, 1)
    adamw = torch.optim.AdamW(model.parameters())
    train(model, adamw, 1)
    with pytest.raises(ValueError, match="not a Lookahead state_dict"):
        ranger(model.parameters()).load_state_dict(adamw.state_dict())
    with pytest.raises(ValueError, match="match no parameter"):
        optimizer = ranger(torch.nn.Linear(4, 1).parameters(), k=1)
        train(torch.nn.Linear(4, 1), optimizer, 1)
        ranger(torch.nn.Linear(3, 2).parameters()).load_state_dict(optimizer.state_dict())


def test_grad_scaler_steps_it_and_skips_non_finite_steps():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    reference = copy.deepcopy(model)
    optimizer = ranger(model.parameters(), lr=0.05, k=2)
    reference_optimizer = ranger(reference.parameters(), lr=0.05, k=2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert scaler.is_enabled()
    inputs, targets = regression()
    for _ in range(4):
        optimizer.zero_grad()
        scaler.scale(torch.nn.functional.mse_loss(model(inputs).squeeze(1), targets)).backward()
        scaler.step(optimizer)
        scaler.update()
    train(reference, reference_optimizer, 4)
    for scaled, plain in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(scaled, plain, rtol=1e-6, atol=1e-7)
    assert optimizer.lookahead_step == 4

    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    scaler.scale(torch.nn.functional.mse_loss(model(inputs).squeeze(1), targets)).backward()
    model.bias.grad.fill_(float("inf"))
    scaler.step(optimizer)  # skipped: neither the base optimizer nor Lookahead steps
    scaler.update()
    assert optimizer.lookahead_step == 4
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_monai_supervised_trainer_drives_it_as_a_plain_loop_does():
    inputs, targets = regression()
    batches = [{"image": inputs[i : i + 16], "label": targets[i : i + 16, None]} for i in range(0, 64, 16)]

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        return model, ranger(model.parameters(), lr=0.1, k=2)

    model, optimizer = setup()
    start = torch.nn.functional.mse_loss(model(inputs).squeeze(1), targets).item()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=10,
        train_data_loader=batches,
        network=model,
        optimizer=optimizer,
        loss_function=torch.nn.MSELoss(),
    )
    trainer.run()
    assert optimizer.lookahead_step == 10 * 4

    reference, reference_optimizer = setup()
    for _ in range(10):
        for batch in batches:
            reference_optimizer.zero_grad()
            torch.nn.functional.mse_loss(reference(batch["image"]), batch["label"]).backward()
            reference_optimizer.step()
    for trained, plain in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(trained, plain, rtol=1e-6, atol=1e-7)
    assert torch.nn.functional.mse_loss(model(inputs).squeeze(1), targets).item() < 0.5 * start


def test_ranger_recipe_merged_over_train_yaml_builds_lookahead_over_radam():
    parser = ConfigParser(ConfigParser.load_config_files([str(CONFIGS / "train.yaml"), str(CONFIGS / "ranger.yaml")]))
    optimizer = parser.get_parsed_content("optimizer")
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.optimizer, torch.optim.RAdam)
    group = optimizer.param_groups[0]
    assert group["lr"] == parser.get_parsed_content("learning_rate")
    assert (group["weight_decay"], group["decoupled_weight_decay"]) == (0.0001, True)
    network = parser.get_parsed_content("network")
    assert [id(p) for p in optimizer._params()] == [id(p) for p in network.parameters()]
    assert parser.get_parsed_content("ckpt_dir").endswith("/checkpoints/ranger")
    assert "$import scripts" in parser["imports"]  # train.yaml's imports survive the merge


def _sgd(lr: float = 1.0) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_budget_cosine_without_a_budget_is_cosine_annealing():
    ours, reference = _sgd(), _sgd()
    schedule = BudgetCosineLR(ours, max_epochs=7)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(reference, T_max=7)
    for _ in range(8):
        assert ours.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"])
        ours.step(), reference.step(), schedule.step(), cosine.step()
    ours.step(), schedule.step()
    assert ours.param_groups[0]["lr"] == 0.0  # stays at the end instead of rising again


def test_budget_cosine_follows_the_clock_when_the_time_budget_ends_first(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(scripts.optimizers.time, "monotonic", lambda: now[0])
    optimizer = _sgd(lr=2.0)
    schedule = BudgetCosineLR(optimizer, max_epochs=100, max_minutes=10, eta_min=0.1)
    now[0] += 5 * 60  # half the budget after one epoch
    optimizer.step(), schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 + 1.9 * 0.5)
    now[0] += 6 * 60  # past the budget
    optimizer.step(), schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_budget_cosine_state_resumes_without_the_old_clock(tmp_path):
    optimizer = _sgd()
    schedule = BudgetCosineLR(optimizer, max_epochs=10, max_minutes=60)
    for _ in range(4):
        optimizer.step(), schedule.step()
    torch.save(schedule.state_dict(), tmp_path / "schedule.pt")
    state = torch.load(tmp_path / "schedule.pt", weights_only=True)
    assert "_clock_start" not in state
    resumed_optimizer = _sgd()
    resumed = BudgetCosineLR(resumed_optimizer, max_epochs=10, max_minutes=60)
    resumed.load_state_dict(state)
    resumed_optimizer.step(), resumed.step()
    optimizer.step(), schedule.step()
    assert resumed.last_epoch == 5 and resumed.get_last_lr() == pytest.approx(schedule.get_last_lr(), rel=1e-3)
