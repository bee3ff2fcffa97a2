"""Inferers MONAI lacks: flip test-time augmentation, as the strongest HuBMAP solutions used."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer

__all__ = ["FlipInferer"]


class FlipInferer(Inferer):
    """Mean of the network's outputs over flipped copies of the input, each flipped back.

    Args:
        flips: spatial dimensions to flip for each copy; the default is none, vertical,
            horizontal and both (four forward passes).
    """

    def __init__(self, flips: Sequence[Sequence[int]] = ((), (2,), (3,), (2, 3))) -> None:
        super().__init__()
        self.flips = [tuple(dims) for dims in flips]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        total = None
        for dims in self.flips:
            output = network(torch.flip(inputs, dims) if dims else inputs, *args, **kwargs)
            output = torch.flip(output, dims) if dims else output
            total = output if total is None else total + output
        return total / len(self.flips)
