"""The few facts of ``torch.distributed`` the bundle needs: joining the process group when
started by ``torchrun``, this process's device and share of the slides, whether it is rank 0,
and waiting for the others. Without ``torchrun`` there is one process and it does everything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["any_rank", "barrier", "device", "is_main_process", "rank", "rank_share", "setup", "teardown"]

T = TypeVar("T")


def setup() -> None:
    """Join the process group when ``torchrun`` started this process (NCCL on GPUs, Gloo on CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(device())


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if _active():
        dist.destroy_process_group()


def device() -> torch.device:
    """This process's GPU (``cuda:<LOCAL_RANK>``), or the CPU when there is none."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_share(items: Sequence[T]) -> list[T]:
    """Every ``world_size``-th item starting at this rank (all of them without a process group)."""
    if not _active():
        return list(items)
    return list(items[dist.get_rank() :: dist.get_world_size()])


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if _active() else 0


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (a no-op without a process group)."""
    if _active():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so all ranks take the same decision together)."""
    return bool(max_over_ranks(float(flag)))


def max_over_ranks(value: float) -> float:
    """The largest ``value`` of all ranks (``value`` itself without a process group)."""
    if not _active():
        return value
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.float64, device=on)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())
