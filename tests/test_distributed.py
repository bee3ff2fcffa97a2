"""The bundle's few facts of torch.distributed (scripts/distributed.py): one process does
everything; under a process group (two CPU processes, Gloo, as torchrun starts them) the ranks
share items, agree on a flag and a maximum, and ignite's helpers follow the group's coming and going."""

from __future__ import annotations

import os
import socket

import ignite.distributed as idist
import torch
import torch.multiprocessing as mp

from scripts import distributed


def test_without_a_process_group_one_process_does_everything():
    assert distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.rank_share(list("abc")) == ["a", "b", "c"]
    assert distributed.any_rank(False) is False and distributed.any_rank(True) is True
    assert distributed.max_over_ranks(2.5) == 2.5
    distributed.barrier()  # returns at once
    expected = torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.device() == expected  # LOCAL_RANK unset: the first GPU, or the CPU


def _rank_main(rank: int, port: int, results) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    distributed.setup()
    results[rank] = (
        distributed.rank(),
        distributed.rank_share(list("abcde")),
        distributed.rank_share(["only"]),
        distributed.any_rank(rank == 1),
        distributed.max_over_ranks(float(rank) + 0.5),
    )
    distributed.barrier()
    distributed.teardown()
    results[f"{rank} after"] = (idist.get_world_size(), distributed.rank())


def test_two_ranks_share_items_and_agree_then_go_back_to_one_process():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(port, results), nprocs=2, join=True)
        results = dict(results)
    assert results[0] == (0, ["a", "c", "e"], ["only"], True, 1.5)
    assert results[1] == (1, ["b", "d"], [], True, 1.5)
    assert results["0 after"] == results["1 after"] == (1, 0)
