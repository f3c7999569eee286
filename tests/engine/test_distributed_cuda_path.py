"""The CUDA branch of the distributed set-up, on a CPU-only machine: CUDA's availability,
``set_device``, the process group and DDP are replaced by recording stand-ins, so the
device, backend and ``device_ids`` each rank would use are checked exactly."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from compactnn.engine import distributed as D


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two ranks under torchrun on a machine that reports CUDA; returns the calls made."""
    calls: dict[str, list] = {"set_device": [], "init_process_group": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(d))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend: calls["init_process_group"].append(backend))
    for key, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(key, value)
    return calls


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_a_cuda_rank_uses_its_local_gpu_and_nccl(fake_cuda, device) -> None:
    info = D.init_distributed(device)
    assert info == D.DistInfo(rank=1, world_size=2, local_rank=1,
                              device=torch.device("cuda", 1))
    assert fake_cuda["set_device"] == [torch.device("cuda", 1)]
    assert fake_cuda["init_process_group"] == ["nccl"]


def test_cpu_ranks_use_gloo_and_an_explicit_backend_wins(fake_cuda) -> None:
    info = D.init_distributed("cpu")
    assert info.device == torch.device("cpu") and fake_cuda["set_device"] == []
    assert D.init_distributed("cuda", backend="mpi").device == torch.device("cuda", 1)
    assert fake_cuda["init_process_group"] == ["gloo", "mpi"]


def test_ddp_gets_the_local_gpu_as_its_device_ids(monkeypatch) -> None:
    seen: list[dict] = []

    class FakeDDP(nn.Module):
        def __init__(self, module, device_ids=None, find_unused_parameters=False):
            super().__init__()
            seen.append({"device_ids": device_ids, "find_unused": find_unused_parameters})

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    model = nn.Linear(2, 2)
    cuda_rank = D.DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1))
    cpu_rank = D.DistInfo(rank=1, world_size=2, local_rank=1)
    assert isinstance(D.wrap_model(model, cuda_rank, find_unused_parameters=True), FakeDDP)
    assert isinstance(D.wrap_model(model, cpu_rank), FakeDDP)
    assert seen == [{"device_ids": [1], "find_unused": True},
                    {"device_ids": None, "find_unused": False}]
    assert D.wrap_model(model, D.DistInfo()) is model
