"""A transformer feed-forward block made of experts (Mixtral-style): ``(out, aux_loss)``.

Each token is routed on its own hidden state; the experts are one :class:`MLPBank`
(stacked weights, ``dim -> hidden -> dim``), so dense execution is one batched product
and sparse execution runs each expert on its tokens only. The block also records, for the
last training or evaluation forward, how the tokens were routed (``last_load``,
``last_sparse``), which is what an experiment reports about expert balance and the
sparsity of a DSelect-k gate, without a second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float, check_int

from .dispatch import Execution
from .experts import mlp_experts
from .gates import BalancedTopKGate, DSelectKGate, Gate, NoisyTopKGate, SoftmaxGate
from .layers import MixtureOfExperts

__all__ = ["GATES", "MoEFeedForward", "make_token_gate"]

#: Gate names :class:`MoEFeedForward` builds (a ready :class:`Gate` is accepted too).
GATES = ("softmax", "topk", "noisy_topk", "dselect_k")


def make_token_gate(name: str, num_experts: int, dim: int, *, k: int = 2,
                    **options: Any) -> Gate:
    """A per-token gate over ``num_experts`` experts routing on ``dim`` features.

    ``"softmax"``: dense softmax; ``"topk"``: :class:`BalancedTopKGate` (options
    ``balance_reg``); ``"noisy_topk"``: :class:`NoisyTopKGate`; ``"dselect_k"``:
    :class:`DSelectKGate` with ``reduction="mean"`` unless given (a sum over the tokens of a
    batch would scale the regularizer with the batch and context length)."""
    name = check_choice("gate", name, GATES)
    if name == "softmax":
        return SoftmaxGate(num_experts, input_dim=dim, **options)
    if name == "topk":
        return BalancedTopKGate(num_experts, k=k, input_dim=dim, **options)
    if name == "noisy_topk":
        return NoisyTopKGate(num_experts, k=k, input_dim=dim, **options)
    options.setdefault("reduction", "mean")
    return DSelectKGate(num_experts, k=k, input_dim=dim, **options)


class MoEFeedForward(nn.Module):
    """``x (..., dim) -> (y (..., dim), aux_loss)``: a mixture of ``num_experts`` MLPs
    ``dim -> hidden -> dim`` routed per token.

    Args:
        dim: model width.
        hidden: each expert's hidden width.
        num_experts: ``n >= 2``.
        gate: a name in :data:`GATES` or a per-example :class:`Gate` over ``n`` experts
            with ``input_dim == dim``.
        k: experts per token for the Top-k and DSelect-k gates.
        gate_options: keyword options of the named gate (``balance_reg``,
            ``entropy_reg``, ``gamma``...).
        activation: the experts' hidden activation (a factory, default GELU).
        dropout: dropout on the experts' hidden layer.
        execution: as in :class:`MixtureOfExperts`; ``"capacity"`` has static shapes
            (for ``torch.compile``), with ``capacity_factor`` slots per balanced share.
        capacity_factor: ``> 0``.

    Attributes after a forward: ``last_load`` ``(n,)``, the mean weight each expert got
    per token; ``last_sparse``, the fraction of tokens with at most ``gate.max_nonzeros``
    nonzero weights (1 for Top-k by construction; for DSelect-k, the tokens whose
    selectors have saturated); ``moe.dropped`` in capacity mode.
    """

    def __init__(self, dim: int, hidden: int, num_experts: int, *, gate: str | Gate = "topk",
                 k: int = 2, gate_options: dict[str, Any] | None = None,
                 activation: Callable[[], nn.Module] = nn.GELU, dropout: float = 0.0,
                 execution: Execution = "auto", capacity_factor: float = 1.25) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        self.hidden = check_int("hidden", hidden, minimum=1)
        num_experts = check_int("num_experts", num_experts, minimum=2)
        check_float("capacity_factor", capacity_factor, minimum=0.0, min_inclusive=False)
        if gate_options is not None and not isinstance(gate_options, dict):
            raise TypeError(f"gate_options must be a dict, got {type(gate_options).__name__}")
        if isinstance(gate, str):
            gate = make_token_gate(gate, num_experts, dim, k=k, **(gate_options or {}))
        elif isinstance(gate, Gate):
            if gate_options:
                raise ValueError("gate_options apply to a gate given by name, not to a "
                                 f"ready {type(gate).__name__}")
            if gate.input_dim != dim:
                raise ValueError(f"the gate must route per token on dim={dim} features, "
                                 f"it has input_dim={gate.input_dim}")
        else:
            raise TypeError(f"gate must be a name in {GATES} or a Gate, "
                            f"got {type(gate).__name__}")
        experts = mlp_experts(num_experts, dim, hidden, dim, activation=activation,
                              dropout=dropout)
        self.moe = MixtureOfExperts(experts, gate, execution=execution,
                                    capacity_factor=capacity_factor)
        self.register_buffer("last_load", torch.zeros(num_experts), persistent=False)
        self.register_buffer("last_sparse", torch.zeros(()), persistent=False)

    @property
    def gate(self) -> Gate:
        return self.moe.gate

    @property
    def num_experts(self) -> int:
        return self.moe.num_experts

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}"

    def route(self, x: Tensor) -> Tensor:
        """The gate's weights per token, ``(..., n)`` (no experts run)."""
        weights, _ = self.gate(x.reshape(-1, self.dim))
        return weights.reshape(*x.shape[:-1], self.num_experts)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., tokens, {self.dim}), "
                             f"got {tuple(x.shape)}")
        out, aux, weights = self.moe.routed(x)
        with torch.no_grad():
            if weights.shape[0]:
                w = weights.detach()
                self.last_load.copy_(w.mean(dim=0))
                nonzeros = (w != 0).sum(dim=-1)
                self.last_sparse.copy_((nonzeros <= self.gate.max_nonzeros).float().mean())
        return out, aux
