"""Shared models and helpers of the sparse-baseline tests."""

from __future__ import annotations

import torch
from torch import nn

from compactnn.models.mlp import MLP, MLPConfig
from compactnn.sparse import prunable_weights


def mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(MLPConfig(in_features=12, hidden=(16, 16), num_classes=3))


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def alive(model: nn.Module, **sel) -> int:
    return sum(int((w != 0).sum()) for w in prunable_weights(model, **sel).values())


def sgd_steps(model, opt, steps, hook=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if hook is not None:
            hook(model)

