"""The Top-k router of Switch / Mixtral-style sparse transformers, with its load-balancing loss.

``p = softmax(x W_r)`` over all experts; the ``k`` largest logits are kept and their
softmax (the top-k probabilities renormalized to sum to 1) is the expert weight, every
other weight is exactly 0. The balancing loss is ``balance_reg * n * sum_e f_e P_e`` with
``f_e`` the fraction of the routed (token, slot) assignments that go to expert ``e`` (so
``sum_e f_e = 1``) and ``P_e`` the mean over the tokens of ``p_e``. ``f`` is a count and
carries no gradient; the gradient reaches the router through ``P``. Under uniform routing
the loss is ``balance_reg`` (``n * sum_e 1/n * 1/n = 1``), its minimum over ``P`` for a
fixed balanced ``f``; routing every token to the same ``k`` experts raises it toward
``n / k``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import Gate, check_input_dim, check_k, check_num_experts, check_reg, zero_like
from .topk import topk_route

__all__ = ["BalancedTopKGate", "balance_loss"]


def balance_loss(weights: Tensor, probs: Tensor) -> Tensor:
    """``n * sum_e f_e P_e`` for routed weights and router probabilities, both
    ``(tokens, n)`` (a static gate's ``(n,)`` is one token); 0 for no tokens."""
    if weights.dim() == 1:
        weights, probs = weights.unsqueeze(0), probs.unsqueeze(0)
    if weights.shape[0] == 0:
        return zero_like(probs)
    routed = (weights != 0).to(probs.dtype)
    f = routed.sum(dim=0) / routed.sum()
    return probs.shape[-1] * (f * probs.mean(dim=0)).sum()


class BalancedTopKGate(Gate):
    """Deterministic Top-k routing with the Switch / Mixtral load-balancing loss.

    Args:
        num_experts: ``n >= 2``.
        k: experts kept per token, ``1 <= k <= n``.
        input_dim: width of the routing input (the router ``router_proj``, a bias-free
            ``nn.Linear(input_dim, n)``), or ``None`` for a static gate (free logits
            ``logits``, initialized to zero).
        balance_reg: weight ``>= 0`` of the balancing loss (training mode only; 0.01 in
            Switch Transformer and Mixtral).
    """

    def __init__(self, num_experts: int, *, k: int = 2, input_dim: int | None = None,
                 balance_reg: float = 0.01) -> None:
        super().__init__()
        self.num_experts = check_num_experts(num_experts)
        self.k = check_k(k, self.num_experts)
        self.max_nonzeros = self.k
        self.input_dim = check_input_dim(input_dim)
        self.balance_reg = check_reg("balance_reg", balance_reg)
        if self.input_dim is None:
            self.logits = nn.Parameter(torch.zeros(self.num_experts))
            self.router_proj = None
        else:
            self.register_parameter("logits", None)
            self.router_proj = nn.Linear(self.input_dim, self.num_experts, bias=False)
        self.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"num_experts": self.num_experts, "k": self.k, "input_dim": self.input_dim,
                "balance_reg": self.balance_reg}

    def reset_parameters(self) -> None:
        if self.router_proj is None:
            with torch.no_grad():
                self.logits.zero_()
        else:
            self.router_proj.reset_parameters()

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._routing_input(x)
        logits = self.logits if x is None else self.router_proj(x)
        weights = topk_route(logits, None, None, self.k)[0]
        if not self.training or self.balance_reg == 0:
            return weights, zero_like(weights)
        return weights, self.balance_reg * balance_loss(weights, torch.softmax(logits, dim=-1))
