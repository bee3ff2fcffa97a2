"""The few facts of ``torch.distributed`` the bundle needs: this process's share of the slides,
whether it is rank 0, and waiting for the others. Without a process group (a plain run) there is
one process and it does everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch.distributed as dist

__all__ = ["barrier", "is_main_process", "rank_share"]

T = TypeVar("T")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_share(items: Sequence[T]) -> list[T]:
    """Every ``world_size``-th item starting at this rank (all of them without a process group)."""
    if not _active():
        return list(items)
    return list(items[dist.get_rank() :: dist.get_world_size()])


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only one)."""
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (a no-op without a process group)."""
    if _active():
        dist.barrier()
