"""The multi-task model of ``compactnn mtl``: an [MMoE]-style network with no shared
bottom.

    inputs -> [categorical embeddings, concatenated with the numeric / pixel features]
           -> MultiGateMoE: shared experts, one gate per task (DSelect-k, Top-k or softmax)
           -> one tower per task (:class:`TaskTowers`) -> task output (logits or a regression value)

Experts are MLPs on the flattened features, or (images) small CNNs
(:class:`ConvExpert`). A *static* gate (``gate.per_example=false``) has one weight vector
per task; a *per-example* gate routes on the flattened features (embeddings included).
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
)
from compactnn.tasks.mtl.config import ExpertConfig, GateConfig, TowerConfig

__all__ = ["ConvExpert", "MTLModel", "TaskTowers", "build_gate"]


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


def build_gate(cfg: GateConfig, num_experts: int, input_dim: int | None) -> Gate:
    """The gate template of ``cfg`` (static when ``input_dim`` is None)."""
    if cfg.name == "dselect_k":
        return DSelectKGate(num_experts, k=cfg.k, gamma=cfg.gamma, input_dim=input_dim,
                            entropy_reg=cfg.entropy_reg, reduction=cfg.reduction)
    if cfg.name == "topk":
        return NoisyTopKGate(num_experts, k=cfg.k, input_dim=input_dim, noisy=cfg.noisy,
                             w_importance=cfg.w_importance, w_load=cfg.w_load)
    return SoftmaxGate(num_experts, input_dim=input_dim)


class TaskTowers(nn.Module):
    """One MLP tower per task, ``in -> hidden... -> out_t`` with ReLU, evaluated for all
    tasks at once with batched matrix products (each layer holds a ``(T, a, b)`` weight;
    tasks with fewer outputs than the widest use the first columns of the last layer).
    Each task's layers are initialized as ``nn.Linear`` would initialize them."""

    def __init__(self, num_tasks: int, in_features: int, hidden: Sequence[int],
                 out_features: Sequence[int]) -> None:
        super().__init__()
        if len(out_features) != num_tasks:
            raise ValueError(f"got {len(out_features)} output widths for {num_tasks} tasks")
        self.out_features = tuple(int(o) for o in out_features)
        widths = [in_features, *hidden, max(self.out_features)]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_tasks, a, b))
                                        for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_tasks, 1, b))
                                       for b in widths[1:])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for w, b in zip(self.weights, self.biases, strict=True):
            bound = 1.0 / math.sqrt(w.shape[1])  # nn.Linear's default, fan_in = a
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, h: Tensor) -> list[Tensor]:
        """``h``: ``(T, batch, in)``; returns one ``(batch, out_t)`` tensor per task."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return [h[t, :, :o] for t, o in enumerate(self.out_features)]


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
        self.conv = experts.arch == "conv"
        if self.conv:
            if len(self.input_shape) != 3 or cat_cardinalities:
                raise ValueError("experts.arch=conv needs image inputs (N, C, H, W) without "
                                  f"categorical columns; this data has input shape "
                                  f"{self.input_shape}")
            expert_list = nn.ModuleList(
                ConvExpert(self.input_shape[0], experts.channels, experts.out)
                for _ in range(experts.num))
        else:
            expert_list = mlp_experts(experts.num, self.feature_dim, list(experts.hidden),
                                      experts.out, dropout=experts.dropout)
        template = build_gate(gate, experts.num,
                              self.feature_dim if gate.per_example else None)
        self.moe = MultiGateMoE(expert_list, len(self.tasks), gate=template, towers=None,
                                execution=execution)
        self.towers = TaskTowers(len(self.tasks), experts.out, list(towers.hidden),
                                 [t.output_dim for t in self.tasks])
        # static gates with dense execution: mix all tasks with one product
        self._batched = execution == "dense" and not gate.per_example

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
        if self._batched:
            weights, aux = self.moe.gate_weights(expert_in)
            outs = torch.stack([e(expert_in) for e in self.moe.experts], 1)  # (B, n, o)
            mixed = torch.einsum("tn,bno->tbo", torch.stack(weights), outs)
        else:
            mixed_list, aux = self.moe(expert_in, routing_input=feats)
            mixed = torch.stack(mixed_list)
        return self.towers(mixed), aux
