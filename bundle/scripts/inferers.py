"""The inferer for batches of windows: the network run the fast way, with optional flip TTA.

MONAI's ``SimpleInferer`` runs the network as it is. Here inputs are plain tensors (no MetaTensor
bookkeeping per operation) in channels-last layout, under mixed precision: float16 on CUDA,
bfloat16 on CPUs that compute it natively (AVX-512 BF16 / AMX), which on a 2-core CPU makes the
UNet about 3x faster. Windows read as ``uint8`` pixels are scaled to 0-1 here, on the device,
so they cross the DataLoader and the bus at a quarter of float32's size. Flip test-time
augmentation (none, vertical, horizontal, both), as the strongest HuBMAP solutions used, averages
the flipped-back outputs. An ensemble (a :class:`torch.nn.ModuleList` of members, as
:func:`scripts.checkpoints.ensemble` builds it) runs every member, with its flips, on the same
batch: a window is read and decoded once. On a GPU the first batch also pays for loading the kernels (about a
second on an H100): :meth:`WindowInferer.warm_up` runs a blank batch in a thread while the slides
are prepared, and a run's short last batch is padded to that batch's size, since a new shape
would make the GPU choose and load kernels again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch
from monai.inferers import Inferer
from monai.utils import convert_to_tensor

__all__ = ["WindowInferer", "mixed_precision"]

logger = logging.getLogger(__name__)

FLIPS = ((), (2,), (3,), (2, 3))
ENSEMBLE_EPS = 1e-6  # the members' mean probability is clamped this far from 0 and 1 before its logit
WARM_UP_DEVICES = ("cuda",)  # where a network's first batch loads kernels worth overlapping


def mixed_precision(device: torch.device | str, enabled: bool = True) -> torch.autocast:
    """Autocast for a device: float16 on CUDA, bfloat16 on a CPU that has it natively, else off."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16, enabled=enabled)
    native_bf16 = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and native_bf16)


class WindowInferer(Inferer):
    """Run a batch of windows through the network.

    Inputs are 0-1 floats, or ``uint8`` 0-255 pixels, which are scaled to 0-1 first. The output
    is logits, as the network's: for an ensemble, the logit of the members' mean probability (the
    average the HuBMAP solutions took), so that what follows takes one sigmoid whatever the count.

    Args:
        amp: mixed precision (see :func:`mixed_precision`).
        tta: average over the four flips of each window (four forward passes).
        channels_last: run convolutions in channels-last layout (faster on CPU and GPU alike).
    """

    def __init__(self, amp: bool = True, tta: bool = False, channels_last: bool = True) -> None:
        super().__init__()
        self.amp = amp
        self.flips = FLIPS if tta else ((),)
        self.channels_last = channels_last
        self._warming: threading.Thread | None = None
        self._warm_batch: int | None = None  # the batch size the warm-up ran: shorter batches are padded to it

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        if self._warming is not None:  # one batch on the device at a time
            self._warming.join()
            self._warming = None
        return self._run(inputs, network, *args, **kwargs)

    def warm_up(self, network: torch.nn.Module, batch_size: int, roi: int, device: torch.device | str) -> None:
        """On a GPU, start one batch of blank windows through the network in a background thread,
        so that loading its kernels overlaps with what comes next (preparing the slides); the next
        call waits for it. Nothing on a CPU, where there is no such cost and the cores are busy.

        Args:
            network: the network the calls will run.
            batch_size: windows per batch.
            roi: window side.
            device: the network's device.
        """
        if torch.device(device).type not in WARM_UP_DEVICES:
            return
        # the layout change replaces the weight tensors (their values kept), so it happens here, not in the thread
        self._set_layout(network)
        self._warm_batch = batch_size
        blank = torch.zeros(batch_size, 3, roi, roi, dtype=torch.uint8, device=device)
        self._warming = threading.Thread(target=self._run_blank, args=(blank, network), name="warm-up", daemon=True)
        self._warming.start()

    def _run_blank(self, blank: torch.Tensor, network: torch.nn.Module) -> None:
        try:
            with torch.no_grad():
                self._forward(self._prepared(blank), network)  # the layout is set: weights are not touched here
            torch.cuda.synchronize(blank.device)
        except Exception as error:  # noqa: BLE001 - only a warm-up: the real first batch reports whatever is wrong
            logger.debug("warm-up batch failed (%s); the first batch will say why", error)

    def _set_layout(self, network: Callable[..., torch.Tensor]) -> None:
        if self.channels_last and isinstance(network, torch.nn.Module):
            network.to(memory_format=torch.channels_last)

    def _run(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        inputs = convert_to_tensor(inputs, track_meta=False)  # plain: no metadata bookkeeping per operation
        count = len(inputs)
        if self._warm_batch is not None and count < self._warm_batch:
            inputs = torch.cat([inputs, inputs.new_zeros((self._warm_batch - count, *inputs.shape[1:]))])
        inputs = self._prepared(inputs)
        if self.channels_last and inputs.ndim == 4:
            self._set_layout(network)
        return self._forward(inputs, network, *args, **kwargs)[:count]

    def _prepared(self, inputs: torch.Tensor) -> torch.Tensor:
        """A plain tensor as 0-1 floats, in the layout the network runs in."""
        if self.channels_last and inputs.ndim == 4:  # before the scaling: uint8 moves a quarter of float's bytes
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        if inputs.dtype == torch.uint8:  # 0-255 pixels, passed on as they were read: scaled to 0-1 here
            inputs = inputs.float().div_(255)  # float() keeps the layout
        return inputs

    def _forward(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        if not isinstance(network, torch.nn.ModuleList):
            return self._member_forward(inputs, network, *args, **kwargs)
        probability = None
        for member in network:
            member_probability = torch.sigmoid(self._member_forward(inputs, member, *args, **kwargs))
            probability = member_probability if probability is None else probability + member_probability
        return torch.logit(probability / len(network), eps=ENSEMBLE_EPS)

    def _member_forward(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs
    ) -> torch.Tensor:
        """One network's logits, averaged over the flips."""
        total = None
        with mixed_precision(inputs.device, self.amp):
            for dims in self.flips:
                output = network(torch.flip(inputs, dims) if dims else inputs, *args, **kwargs).float()
                output = torch.flip(output, dims) if dims else output
                total = output if total is None else total + output
        return total / len(self.flips)
