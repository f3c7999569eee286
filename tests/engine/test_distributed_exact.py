"""The data order and the process defaults exactly."""

from __future__ import annotations

import inspect

import torch

from compactnn.engine.distributed import DistInfo, epoch_indices, init_distributed, shard


def test_epoch_orders_are_pinned() -> None:
    # a checkpoint written by an earlier version resumes with the same batches only if
    # the (seed, epoch) -> permutation map never changes
    assert epoch_indices(10, 3, 1).tolist() == [1, 9, 5, 6, 4, 3, 8, 0, 2, 7]
    assert epoch_indices(10, 0, 0).tolist() == [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]
    g = torch.Generator().manual_seed(3 * 1_000_003 + 1)
    assert torch.equal(epoch_indices(10, 3, 1), torch.randperm(10, generator=g))


def test_shards_are_each_ranks_consecutive_share() -> None:
    batch = torch.arange(12) * 10
    assert torch.equal(shard(batch, DistInfo()), batch)
    parts = [shard(batch, DistInfo(rank=r, world_size=3)).tolist() for r in range(3)]
    assert parts == [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90, 100, 110]]


def test_the_device_defaults_to_auto() -> None:
    assert inspect.signature(init_distributed).parameters["device"].default == "auto"
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.device) == (0, 1, torch.device("cpu"))


def test_the_launch_environment_is_read(monkeypatch) -> None:
    import pytest

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = init_distributed("cpu")
    assert (info.rank, info.local_rank, info.world_size, info.is_main) == (1, 1, 1, False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"^device='cuda' but CUDA is not available$"):
            init_distributed("cuda")


def test_a_multi_process_launch_starts_one_gloo_group_on_cpu(monkeypatch) -> None:
    import torch.distributed as dist

    calls = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    info = init_distributed("cpu")
    assert calls == ["gloo"] and info.world_size == 2 and info.enabled
    init_distributed("cpu", backend="mpi")
    assert calls == ["gloo", "mpi"]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # started by the caller
    init_distributed("cpu")
    assert calls == ["gloo", "mpi"]


def test_wrap_model_hands_ddp_the_model_and_the_unused_parameter_flag(monkeypatch) -> None:
    import torch.nn.parallel

    from compactnn.engine.distributed import wrap_model

    made = []
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        lambda model, **kw: made.append((model, kw)) or "wrapped")
    model = torch.nn.Linear(2, 2)
    assert wrap_model(model, DistInfo()) is model and made == []
    assert wrap_model(model, DistInfo(world_size=2), True) == "wrapped"
    assert made == [(model, {"device_ids": None, "find_unused_parameters": True})]
