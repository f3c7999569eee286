"""The interface every gate shares, and the argument checks the gates have in common.

``gate(x=None) -> (weights, aux_loss)``. A *static* gate (``input_dim=None``) has one
weight vector and needs no routing input; its weights have shape ``(num_experts,)``. A
*per-example* gate maps a routing input of shape ``(batch, input_dim)`` to weights of
shape ``(batch, num_experts)``. ``aux_loss`` is a scalar: the gate's training regularizer,
which the caller adds to its loss (gates never call ``backward``). It is zero in eval mode,
as in the official DSelect-k code, which adds its regularizers only when training.

Naming: every gate takes ``num_experts`` first and all other arguments by keyword; every
regularizer weight is called ``<what>_reg`` (``entropy_reg``, ``importance_reg``,
``load_reg``); a per-example gate's learned maps from the routing input are ``nn.Linear``
modules called ``*_proj``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from compactnn._checks import check_float, check_int

__all__ = [
    "MAX_REG",
    "Gate",
    "Reduction",
    "check_input_dim",
    "check_k",
    "check_num_experts",
    "check_reg",
    "check_routing_input",
    "reduce_batch",
    "zero_like",
]

Reduction = Literal["sum", "mean"]

#: Largest regularizer weight accepted: beyond it the auxiliary loss overflows float32
#: (and no sensible training run weights a regularizer a million times the task loss).
MAX_REG = 1e6


def check_num_experts(value: Any) -> int:
    return check_int("num_experts", value, minimum=2)


def check_k(value: Any, num_experts: int) -> int:
    k = check_int("k", value, minimum=1)
    if k > num_experts:
        raise ValueError(f"k must be <= num_experts={num_experts}, got k={k}")
    return k


def check_input_dim(value: Any) -> int | None:
    return None if value is None else check_int("input_dim", value, minimum=1)


def check_reg(name: str, value: Any) -> float:
    """A regularizer weight: finite, in ``[0, MAX_REG]``."""
    return check_float(name, value, minimum=0.0, maximum=MAX_REG)


def check_routing_input(x: Any, input_dim: int | None, owner: str) -> Tensor | None:
    """Static owners ignore ``x``; per-example ones need a ``(batch, input_dim)`` tensor."""
    if input_dim is None:
        return None
    if x is None:
        raise ValueError(f"{owner} is per-example (input_dim={input_dim}) and needs a "
                         "routing input x of shape (batch, input_dim)")
    if not isinstance(x, Tensor):
        raise TypeError(f"routing input must be a Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[-1] != input_dim:
        raise ValueError(f"routing input must have shape (batch, {input_dim}), "
                         f"got {tuple(x.shape)}")
    return x


def reduce_batch(value: Tensor, reduction: Reduction) -> Tensor:
    """Sum (official) or mean over the first axis, the batch axis of a per-example term
    (the mean of no rows is 0, like their sum, not 0/0)."""
    if reduction == "sum" or value.shape[0] == 0:
        return value.sum(dim=0)
    return value.sum(dim=0) / value.shape[0]


class Gate(nn.Module):
    """Common interface of all gates.

    Attributes:
        num_experts: the number of experts ``n``.
        input_dim: width of the routing input, or ``None`` for a static gate.
        max_nonzeros: an upper bound on the nonzeros per weight vector once the gate is
            sparse (``k`` for DSelect-k and Top-k, ``n`` for softmax).
    """

    num_experts: int
    input_dim: int | None
    max_nonzeros: int

    @property
    def is_static(self) -> bool:
        """True when the gate has one weight vector and needs no routing input."""
        return self.input_dim is None

    def config(self) -> dict[str, Any]:  # pragma: no cover
        """The constructor's keyword arguments (``type(g)(**g.config())`` rebuilds ``g``)."""
        raise NotImplementedError

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Return ``(weights, aux_loss)``."""
        raise NotImplementedError

    def reset_parameters(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _routing_input(self, x: Tensor | None) -> Tensor | None:
        return check_routing_input(x, self.input_dim, type(self).__name__)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def zero_like(like: Tensor) -> Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)
