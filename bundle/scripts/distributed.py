"""The few facts of ``torch.distributed`` the bundle needs: joining the process group when
started by ``torchrun``, this process's device and share of the slides, whether it is rank 0,
and waiting for the others. Without ``torchrun`` there is one process and it does everything.

Rank, barrier and reductions are ignite's (``ignite.distributed``), told when the process group
comes and goes; the group itself is joined here, before any engine exists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import ignite.distributed as idist
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
        idist.sync()


def teardown() -> None:
    """Leave the process group, if this process joined one."""
    if _active():
        dist.destroy_process_group()
        idist.sync()  # ignite's helpers back to a single process


def device() -> torch.device:
    """This process's GPU (``cuda:<LOCAL_RANK>``), or the CPU when there is none."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_share(items: Sequence[T]) -> list[T]:
    """Every ``world_size``-th item starting at this rank (all of them without a process group).

    ``monai.data.partition_dataset`` deals the same way but refuses fewer items than ranks, where
    here a rank may get none (one slide on four GPUs).
    """
    return list(items[rank() :: idist.get_world_size()])


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return idist.get_rank()


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (a no-op without a process group)."""
    idist.barrier()


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so all ranks take the same decision together)."""
    return bool(max_over_ranks(float(flag)))


def max_over_ranks(value: float) -> float:
    """The largest ``value`` of all ranks (``value`` itself without a process group)."""
    return float(idist.all_reduce(float(value), op="MAX"))
