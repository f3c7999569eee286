"""The dense softmax gate of [MMoE].

[MMoE] Ma et al. Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts. KDD 2018.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Gate, check_input_dim, check_num_experts, zero_like

__all__ = ["SoftmaxGate"]


class SoftmaxGate(Gate):
    """The dense softmax gate of [MMoE] (eq. 6): ``softmax(W_g x)``.

    Static (``input_dim=None``): one logit vector ``logits``, initialized to zero (uniform
    weights). Per-example: ``proj = nn.Linear(input_dim, n)`` with PyTorch's default
    initialization. It has no regularizer: ``aux_loss`` is always 0.
    """

    def __init__(self, num_experts: int, *, input_dim: int | None = None) -> None:
        super().__init__()
        self.num_experts = check_num_experts(num_experts)
        self.max_nonzeros = self.num_experts
        self.input_dim = check_input_dim(input_dim)
        if self.input_dim is None:
            self.logits = nn.Parameter(torch.zeros(self.num_experts))
            self.proj = None
        else:
            self.register_parameter("logits", None)
            self.proj = nn.Linear(self.input_dim, self.num_experts)
        self.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"num_experts": self.num_experts, "input_dim": self.input_dim}

    def reset_parameters(self) -> None:
        if self.proj is None:
            with torch.no_grad():
                self.logits.zero_()
        else:
            self.proj.reset_parameters()

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._routing_input(x)
        logits = self.logits if x is None else self.proj(x)
        weights = torch.softmax(logits, dim=-1)
        return weights, zero_like(weights)
