"""DistributedDataParallel set-up that is a no-op in a single process.

Under ``torchrun --nproc_per_node=N`` the environment carries ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_distributed` then starts the
process group (NCCL on GPUs, gloo on CPUs). Every global batch is split into
``WORLD_SIZE`` equal shards (:func:`shard`); as DDP averages gradients over
ranks, a step on N ranks equals a step on the whole global batch in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistInfo", "epoch_indices", "init_distributed", "shard", "wrap_model"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", backend: str | None = None) -> DistInfo:
    """Read the torchrun environment and start the process group when
    ``WORLD_SIZE > 1``. ``device`` is ``"auto"`` (CUDA when available), ``"cpu"``
    or ``"cuda"``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return DistInfo(rank, world, local, dev)


def wrap_model(model: nn.Module, info: DistInfo,
               find_unused_parameters: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)`` when distributed, else ``model``.
    ``find_unused_parameters``: needed when a step may leave some parameters
    without gradients (e.g. experts no example was routed to)."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.local_rank] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids,
                                   find_unused_parameters=find_unused_parameters)


def shard(indices: Tensor, info: DistInfo) -> Tensor:
    """This rank's equal share of a global batch of indices (its length must be
    divisible by the world size)."""
    if not info.enabled:
        return indices
    if len(indices) % info.world_size:
        raise ValueError(f"global batch of {len(indices)} does not split evenly over "
                         f"{info.world_size} processes")
    per = len(indices) // info.world_size
    return indices[info.rank * per:(info.rank + 1) * per]


def epoch_indices(num_examples: int, seed: int, epoch: int) -> Tensor:
    """The order of the training examples in ``epoch``: a permutation that depends
    only on ``(seed, epoch)``, so a resumed run and every process see the same one."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=gen)
