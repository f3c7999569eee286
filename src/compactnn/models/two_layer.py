"""Independent two-layer networks in the mean-field parametrization, held side by side
so that many seeds train in one batched computation:

    f_s(x) = (1/m) sum_j a_sj relu(w_sj . x)        (member s, width m)

with ``w_sj ~ N(0, I_d / d)`` (so ``w . x`` has unit variance for ``x ~ N(0, I_d)``) and
``a_sj ~ N(0, init_scale^2)``. The ``1/m`` makes the function and its gradient flow
width-independent when each parameter's step is scaled by ``m`` (the mean-field limit);
``init_scale`` sets the complexity at initialization.

Complexity measure (:meth:`TwoLayerNets.complexity`): the path norm
``(1/m) sum_j |a_j| |w_j|``, the variation norm that bounds the function's Lipschitz
constant. Alignment with a direction ``u`` (:meth:`TwoLayerNets.alignment`): the same
weights on ``|cos(w_j, u)|``, i.e. ``sum |a_j| |w_j . u| / (|u| sum |a_j| |w_j|)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from compactnn._checks import check_float, check_int, check_tensor

__all__ = ["TwoLayerNets"]


class TwoLayerNets(nn.Module):
    """``members`` independent width-``width`` ReLU nets on ``in_features`` inputs; input
    ``(n, d)`` (shared by all members) or ``(members, n, d)``; output ``(members, n)``."""

    def __init__(self, in_features: int, width: int, members: int = 1,
                 init_scale: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.width = check_int("width", width, 1)
        self.members = check_int("members", members, 1)
        check_float("init_scale", init_scale, 0.0)
        w = torch.randn(members, width, in_features, generator=generator) / math.sqrt(
            in_features)
        self.w = nn.Parameter(w)
        self.a = nn.Parameter(init_scale * torch.randn(members, width, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        check_tensor("x", x, ndim=(2, 3), floating=True, finite=False)
        if x.shape[-1] != self.in_features or (x.ndim == 3 and x.shape[0] != self.members):
            raise ValueError(f"x must have shape (n, {self.in_features}) or ({self.members}, "
                             f"n, {self.in_features}), got {tuple(x.shape)}")
        h = torch.relu(x @ self.w.transpose(1, 2)) if x.ndim == 3 else torch.relu(
            torch.einsum("nd,smd->snm", x, self.w))
        return (h @ self.a.unsqueeze(-1)).squeeze(-1) / self.width

    @torch.no_grad()
    def complexity(self) -> Tensor:
        """Path norm ``(1/m) sum_j |a_j| |w_j|`` of each member, shape ``(members,)``."""
        return (self.a.abs() * self.w.norm(dim=-1)).mean(-1)

    @torch.no_grad()
    def alignment(self, direction: Tensor) -> Tensor:
        """Path-norm-weighted ``|cos(w_j, u)|`` of each member with ``u`` of shape ``(d,)``
        or ``(members, d)``; in ``[0, 1]``, 1 when every active unit points along ``u``."""
        check_tensor("direction", direction, ndim=(1, 2), floating=True)
        u = direction.expand(self.members, self.in_features)
        norm = u.norm(dim=-1, keepdim=True)
        if bool((norm == 0).any()):
            raise ValueError("direction must be nonzero")
        proj = torch.einsum("smd,sd->sm", self.w, u / norm).abs()
        weight = (self.a.abs() * self.w.norm(dim=-1)).sum(-1)
        return (self.a.abs() * proj).sum(-1) / weight.clamp_min(1e-300)
