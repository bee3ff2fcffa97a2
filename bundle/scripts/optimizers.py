"""Optimizers and schedules torch lacks: Lookahead, Ranger (Lookahead around RAdam), which helped
the HuBMAP kidney competition's winners, and a cosine schedule that also fits a wall-clock budget.

``train.yaml`` uses AdamW; ``ranger.yaml`` swaps in :func:`ranger`. A :class:`Lookahead` shares its
``param_groups`` with the optimizer it wraps, so learning-rate schedulers, ``GradScaler`` and MONAI's
``SupervisedTrainer`` drive it like any torch optimizer, and its ``state_dict`` holds only tensors and
plain Python values, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .distributed import max_over_ranks

__all__ = ["BudgetCosineLR", "Lookahead", "ranger"]


class Lookahead(torch.optim.Optimizer):
    """Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back").

    The wrapped ``optimizer`` moves the (fast) weights as usual. Every ``k`` steps, slow weights move
    ``alpha`` of the way towards the fast weights, and the fast weights are reset to the slow ones:
    ``slow += alpha * (fast - slow); fast = slow``. A parameter's slow weights start as its value at
    its first step (not at construction), so weights loaded into the network after the optimizer is
    built (a pretrained checkpoint, a resumed run) are where Lookahead starts from.

    ``param_groups`` is the wrapped optimizer's own list, so changing ``lr`` through the Lookahead
    (e.g. ``CosineAnnealingLR(optimizer=lookahead, ...)``) changes the learning rate it uses. Replace
    its param groups only through this object (``load_state_dict``, ``add_param_group``).

    ``state_dict()`` is the wrapped optimizer's ``state_dict()`` plus a ``"lookahead"`` entry with the
    step counter and the slow weights (by parameter index, like the optimizer's own ``"state"``), so
    a run resumed from it continues exactly as an uninterrupted one. ``k`` and ``alpha`` are not
    restored from it: they are whatever this object was built with.

    Args:
        optimizer: the base ("fast") optimizer, e.g. ``torch.optim.RAdam``.
        k: base optimizer steps between synchronisations (at least 1).
        alpha: slow weights step size towards the fast weights, in ``(0, 1]``.

    Raises:
        TypeError: when ``optimizer`` is not a ``torch.optim.Optimizer``.
        ValueError: when ``k`` < 1 or ``alpha`` is outside ``(0, 1]``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha!r}.")
        self.optimizer = optimizer
        self.k = int(k)
        self.alpha = float(alpha)
        self.lookahead_step = 0
        self._wrapping = True  # while True, add_param_group is torch's own (it builds this object)
        # torch's setup (hooks, profiling, checks); the groups are the base optimizer's dicts
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self._wrapping = False
        self.param_groups = optimizer.param_groups  # the very same list, not a copy
        self.defaults = optimizer.defaults

    def __repr__(self) -> str:
        return f"{type(self).__name__}(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(
            optimizer=self.optimizer, k=self.k, alpha=self.alpha, lookahead_step=self.lookahead_step, _wrapping=False
        )
        return state

    def _params(self) -> list[torch.Tensor]:
        """All parameters in ``param_groups`` order: the indices ``state_dict`` uses."""
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the base optimizer (with its defaults), which this object shares.

        Args:
            param_group: the parameters and their optimization options, as for any torch optimizer.
        """
        if self._wrapping:
            super().add_param_group(param_group)
        else:
            self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters (the base optimizer's ``zero_grad``).

        Args:
            set_to_none: set gradients to None instead of zero.
        """
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """One base optimizer step; every ``k`` of them, a Lookahead synchronisation.

        Args:
            closure: re-evaluates the model and returns the loss (optional, passed to the base optimizer).

        Returns:
            what the base optimizer's ``step`` returns (the closure's loss, or None).
        """
        with torch.no_grad():
            for p in self._params():
                if "slow" not in self.state[p]:
                    self.state[p]["slow"] = p.detach().clone()
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self.lookahead_step += 1
        if self.lookahead_step % self.k == 0:
            with torch.no_grad():
                for p in self._params():
                    slow = self.state[p]["slow"]
                    slow.lerp_(p.detach(), self.alpha)  # slow + alpha * (fast - slow)
                    p.copy_(slow)
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's ``state_dict`` plus ``"lookahead"``: ``{"step": int, "slow": {index: tensor}}``.

        Returns:
            a dict of tensors and plain Python values (loadable with ``torch.load(weights_only=True)``).
        """
        state = self.optimizer.state_dict()
        slow = {i: self.state[p]["slow"] for i, p in enumerate(self._params()) if "slow" in self.state.get(p, {})}
        state["lookahead"] = {"step": self.lookahead_step, "slow": slow}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the base optimizer, the step counter and the slow weights from ``state_dict``.

        Args:
            state_dict: what :meth:`state_dict` returned (possibly through ``torch.save``/``torch.load``).

        Raises:
            ValueError: when ``state_dict`` has no ``"lookahead"`` entry (it is another optimizer's, such
                as a plain AdamW checkpoint, whose hyperparameters would silently replace this one's),
                or a slow weight's index or shape does not match this optimizer's parameters.
        """
        if "lookahead" not in state_dict:
            raise ValueError(
                "not a Lookahead state_dict (no 'lookahead' entry): it was saved by another "
                "optimizer; start afresh (e.g. another checkpoint folder, or resume: false)."
            )
        lookahead = state_dict["lookahead"]
        self.optimizer.load_state_dict({key: value for key, value in state_dict.items() if key != "lookahead"})
        self.param_groups = self.optimizer.param_groups  # torch's load_state_dict makes new group dicts
        params = self._params()
        slow_state: defaultdict[torch.Tensor, dict[str, Any]] = defaultdict(dict)
        for key, slow in lookahead["slow"].items():
            index = int(key)
            if not 0 <= index < len(params) or slow.shape != params[index].shape:
                raise ValueError(
                    f"slow weights {index} (shape {tuple(slow.shape)}) match no parameter of this "
                    "optimizer: was the state_dict saved for another network?"
                )
            param = params[index]
            slow_state[param]["slow"] = slow.detach().to(device=param.device, dtype=param.dtype, copy=True)
        self.state = slow_state
        self.lookahead_step = int(lookahead["step"])


def ranger(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.95, 0.999),
    weight_decay: float = 0.0,
    k: int = 6,
    alpha: float = 0.5,
) -> Lookahead:
    """Ranger: :class:`Lookahead` around RAdam with decoupled (AdamW-style) weight decay.

    Args:
        params: the parameters to optimize (or param group dicts).
        lr: RAdam's learning rate.
        betas: RAdam's moment decay rates (Ranger's default first one is 0.95, not Adam's 0.9).
        weight_decay: decoupled weight decay, as AdamW applies it.
        k: RAdam steps between Lookahead synchronisations.
        alpha: Lookahead's slow weights step size.

    Returns:
        the Lookahead optimizer (its ``optimizer`` attribute is the RAdam).
    """
    base = torch.optim.RAdam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, decoupled_weight_decay=True)
    return Lookahead(base, k=k, alpha=alpha)


class BudgetCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Cosine decay to ``eta_min`` over whichever budget ends first: ``max_epochs`` epochs, or
    ``max_minutes`` of wall-clock time from construction (the training time budget).

    Stepped once per epoch. Progress is ``max(epochs done / max_epochs, minutes spent / max_minutes)``,
    so a run stopped by its time budget still ends at a low learning rate instead of in the middle of
    an epoch-based schedule. Without ``max_minutes`` it is ``CosineAnnealingLR(T_max=max_epochs)``.
    Under ``torchrun`` the ranks agree on the time (the largest), so they keep the same rate. The
    clock is not part of the saved state: a resumed run's budget starts again, as its time limit does.

    Args:
        optimizer: the optimizer.
        max_epochs: epochs of the schedule.
        max_minutes: the wall-clock budget, or None / 0 for none.
        eta_min: the final learning rate.
        last_epoch: the epoch to start from (-1: a new schedule).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_epochs: int,
        max_minutes: float | None = None,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        self.max_epochs = max_epochs
        self.budget = float(max_minutes) * 60 if max_minutes else None
        self.eta_min = eta_min
        self._clock_start = time.monotonic()
        super().__init__(optimizer, last_epoch)

    def progress(self) -> float:
        """The share of the schedule done, in ``[0, 1]``."""
        done = self.last_epoch / max(self.max_epochs, 1)
        if self.budget is not None and self.last_epoch > 0:
            done = max(done, max_over_ranks(time.monotonic() - self._clock_start) / self.budget)
        return min(done, 1.0)

    def get_lr(self) -> list[float]:
        """The learning rate of every param group at the current progress."""
        cosine = (1 + math.cos(math.pi * self.progress())) / 2
        return [self.eta_min + (base - self.eta_min) * cosine for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state, without the clock (a resumed run times its own budget)."""
        return {key: value for key, value in super().state_dict().items() if key != "_clock_start"}
