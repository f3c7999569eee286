"""The multi-task model of ``compactnn mtl``: an [MMoE]-style network with no shared
bottom.

    inputs -> [categorical embeddings, concatenated with the numeric / pixel features]
           -> MultiGateMoE: shared experts, one gate per task (DSelect-k, Top-k or softmax)
           -> one tower per task -> task output (logits or a regression value)

Everything runs batched over tasks and experts: the gates are one gate bank (all tasks'
weights in one pass), MLP experts one :class:`~compactnn.moe.MLPBank` (stacked weights),
and the towers another (:func:`~compactnn.moe.mlp_towers`, one MLP per task, evaluated
with batched matrix products; tasks with fewer outputs than the widest use the first
columns of the last layer). The model calls the layer's public batched path
(:meth:`~compactnn.moe.MultiGateMoE.mix`) and then its tower bank.

Experts are MLPs on the flattened features, or (images) small CNNs run one by one:
:class:`ConvExpert` (stride-2 3x3 convolutions) or :class:`LeNetExpert` (the DSelect-k
paper family's conv 5x5x10, conv 5x5x20, dense 50, dense 50). A *static* gate
(``gate.per_example=false``) has one weight vector per task; a *per-example* gate routes
on the flattened features (embeddings included). State dicts saved with per-module gates
or experts load into the banks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactnn.data.multitask import TaskSpec
from compactnn.moe import (
    DSelectKGate,
    Gate,
    MultiGateMoE,
    NoisyTopKGate,
    SoftmaxGate,
    mlp_experts,
    mlp_towers,
)
from compactnn.tasks.mtl.config import ExpertConfig, GateConfig, TowerConfig

__all__ = ["ConvExpert", "LeNetExpert", "MTLModel", "build_gate"]


class ConvExpert(nn.Module):
    """A small CNN expert: stride-2 3x3 convolutions with ReLU, a 3x3 adaptive average
    pool and a linear map to ``out_features``."""

    def __init__(self, in_channels: int, channels: Sequence[int], out_features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.head = nn.Linear(c_in * 9, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class LeNetExpert(nn.Module):
    """The small CNN expert of the DSelect-k paper family's Multi-MNIST / Multi-Fashion
    models: ``conv 5x5 -> max-pool 2 -> ReLU`` per entry of ``channels`` (valid padding),
    then a dense ReLU layer per entry of ``hidden`` and a dense layer to ``out_features``
    (the default config ``channels=[10, 20], hidden=[50], out=50`` is conv 5x5x10,
    conv 5x5x20, dense 50, dense 50). The flattened width follows from ``image_size``."""

    def __init__(self, in_channels: int, image_size: Sequence[int], channels: Sequence[int],
                 hidden: Sequence[int], out_features: int) -> None:
        super().__init__()
        h, w = (int(s) for s in image_size)
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            h, w = (h - 4) // 2, (w - 4) // 2
            if h < 1 or w < 1:
                raise ValueError(f"experts.arch=lenet: {len(channels)} conv 5x5 + pool 2 "
                                 f"stages do not fit images of size {tuple(image_size)}")
            layers += [nn.Conv2d(c_in, c, 5), nn.MaxPool2d(2), nn.ReLU()]
            c_in = c
        layers.append(nn.Flatten())
        width = c_in * h * w
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_gate(cfg: GateConfig, num_experts: int, input_dim: int | None) -> Gate:
    """The gate template of ``cfg`` (static when ``input_dim`` is None)."""
    if cfg.name == "dselect_k":
        return DSelectKGate(num_experts, k=cfg.k, gamma=cfg.gamma, input_dim=input_dim,
                            entropy_reg=cfg.entropy_reg, reduction=cfg.reduction,
                            entropy_reg_start=cfg.entropy_reg_start,
                            gamma_start=cfg.gamma_start, schedule_steps=cfg.schedule_steps,
                            warmup_steps=cfg.warmup_steps, warmup_margin=cfg.warmup_margin)
    if cfg.name == "topk":
        return NoisyTopKGate(num_experts, k=cfg.k, input_dim=input_dim, noisy=cfg.noisy,
                             importance_reg=cfg.importance_reg, load_reg=cfg.load_reg)
    return SoftmaxGate(num_experts, input_dim=input_dim)


class MTLModel(nn.Module):
    """Experts shared by all tasks, one gate and one tower per task (see the module doc).

    ``forward(x, x_cat=None) -> (outputs, aux_loss)``: one output ``(batch, d_t)`` per task
    (``d_t`` = number of classes for multiclass tasks, else 1) and the gates' auxiliary loss.
    """

    def __init__(self, input_shape: Sequence[int], tasks: Sequence[TaskSpec],
                 cat_cardinalities: Sequence[int] = (), experts: ExpertConfig | None = None,
                 gate: GateConfig | None = None, towers: TowerConfig | None = None,
                 execution: str = "dense") -> None:
        super().__init__()
        experts = experts or ExpertConfig()
        gate = gate or GateConfig()
        towers = towers or TowerConfig()
        self.tasks = tuple(tasks)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.embeddings = nn.ModuleList(nn.Embedding(c, experts.embedding_dim)
                                        for c in cat_cardinalities)
        self.feature_dim = (math.prod(self.input_shape)
                            + len(cat_cardinalities) * experts.embedding_dim)
        self.conv = experts.arch in ("conv", "lenet")
        if self.conv:
            if len(self.input_shape) != 3 or cat_cardinalities:
                raise ValueError(f"experts.arch={experts.arch} needs image inputs (N, C, H, W) "
                                 "without categorical columns; this data has input shape "
                                 f"{self.input_shape}")
            c, *size = self.input_shape
            expert_list = nn.ModuleList(
                ConvExpert(c, experts.channels, experts.out) if experts.arch == "conv"
                else LeNetExpert(c, size, experts.channels, experts.hidden, experts.out)
                for _ in range(experts.num))
        else:
            expert_list = mlp_experts(experts.num, self.feature_dim, list(experts.hidden),
                                      experts.out, dropout=experts.dropout)
        template = build_gate(gate, experts.num,
                              self.feature_dim if gate.per_example else None)
        self.moe = MultiGateMoE(expert_list, len(self.tasks), gate=template, towers=None,
                                execution=execution)
        self.towers = mlp_towers(len(self.tasks), experts.out, list(towers.hidden),
                                 [t.output_dim for t in self.tasks])

    def features(self, x: Tensor, x_cat: Tensor | None = None) -> Tensor:
        """Flattened inputs with the categorical embeddings appended: the MLP experts'
        input and the per-example gates' routing input."""
        flat = x.flatten(1)
        if len(self.embeddings):
            if x_cat is None:
                raise ValueError("this model embeds categorical columns: pass x_cat")
            embs = [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
            flat = torch.cat([flat, *embs], dim=1)
        return flat

    def forward(self, x: Tensor, x_cat: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        feats = self.features(x, x_cat)
        expert_in = x if self.conv else feats
        mixed, aux = self.moe.mix(expert_in, routing_input=feats)  # (T, batch, out)
        return self.towers.split(self.towers(mixed)), aux
