"""Glomerulus copy-paste: training batches in which glomeruli from other patches are pasted in.

With few labelled slides the network meets each glomerulus in a handful of surroundings. Simple
Copy-Paste (Ghiasi et al., CVPR 2021) multiplies them: the pixels inside one sample's labelled
objects are copied, moved, into another sample of the batch, and the label follows. Here a patch
drawn for pasting receives the glomeruli of another patch of the same batch (one that holds any),
shifted by a random offset with wrap-around, so the pasted glomerulus lands on other tissue, beside
or over the patch's own, or cut by the patch's edge as glomeruli are at a tile's edge. Each patch
has already been augmented on its own (stain, flips, affine), so what is pasted carries its own
stain and orientation.

MONAI's ``CutMix`` swaps rectangles between the samples of a batch; here the pasted region is the
glomerulus's own outline from the label, so the network never sees a rectangle's straight seams.
It runs as the trainer's ``prepare_batch`` (MONAI's ``PrepareBatchDefault`` hook), on the batch where
it already is (the GPU when there is one), after the patches' own transforms.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatchDefault

from .errors import InputError, user_errors

__all__ = ["GlomerulusCopyPaste"]


class GlomerulusCopyPaste(PrepareBatchDefault):
    """``prepare_batch`` for MONAI's ``SupervisedTrainer`` that pastes glomeruli between a batch's patches.

    Args:
        prob: chance that a patch receives another patch's glomeruli (0: the batch as loaded).
        seed: seeds this object's own random generator, so runs repeat without global state.
        threshold: label values above it are glomerulus (labels may be interpolated by augmentation).

    Raises:
        SystemExit: ``prob`` is not a number from 0 to 1, with one line naming the setting.
    """

    @user_errors
    def __init__(self, prob: float = 0.0, seed: int = 0, threshold: float = 0.5) -> None:
        try:
            self.prob = float(prob)
        except (TypeError, ValueError):
            self.prob = float("nan")
        if not 0.0 <= self.prob <= 1.0:  # also refuses nan
            raise InputError(f"--copy_paste_prob must be a number from 0 to 1, got {prob!r}")
        self.threshold = threshold
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, label = super().__call__(batchdata, device, non_blocking, **kwargs)
        if self.prob == 0.0 or label is None:
            return image, label
        return self.paste(image, label)

    def paste(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste glomeruli into the patches drawn for it.

        Args:
            image: ``(batch, channels, height, width)``.
            label: ``(batch, 1, height, width)``, glomerulus above ``threshold``.

        Returns:
            New image and label tensors; the sources are the patches as they came in, so a glomerulus
            pasted into one patch is never passed on from it.
        """
        masks = label > self.threshold
        donors = masks.flatten(1).any(1).nonzero().flatten().cpu()
        count = image.shape[0]
        if len(donors) == 0:
            return image, label
        receives = (torch.rand(count, generator=self.generator) < self.prob).nonzero().flatten()
        pasted_image, pasted_label = image.clone(), label.clone()
        for target in receives.tolist():
            donor = self.choose_donor(donors, target)
            if donor < 0:
                continue
            shift = [int(torch.randint(side, (1,), generator=self.generator)) for side in image.shape[-2:]]
            mask = torch.roll(masks[donor], shift, dims=(-2, -1))
            pasted_image[target] = torch.where(mask, torch.roll(image[donor], shift, dims=(-2, -1)), image[target])
            pasted_label[target] = torch.where(mask, torch.ones_like(label[target]), label[target])
        return pasted_image, pasted_label

    def choose_donor(self, donors: torch.Tensor, target: int) -> int:
        """A patch holding glomeruli, other than ``target`` (-1 when ``target`` is the only one)."""
        others = donors[donors != target]
        if len(others) == 0:
            return -1
        return int(others[torch.randint(len(others), (1,), generator=self.generator)])
