"""Activation-aware SVD (ASVD): a truncated SVD of the weight with its input
channels first scaled by how strongly the calibration activations drive them.

With ``S = diag(s)`` and ``s_j = stat_j^alpha`` (``stat_j`` the mean of ``|x_j|``
over the calibration rows, or their maximum), ``W = (W S) S^{-1}``; the SVD of
``W S`` is truncated at rank ``r``, ``W S ~= A_r diag(sigma_r) B_r^T``, and the
scaling is undone on the right factor: ``U = A_r sigma_r^{1/2}``,
``V = sigma_r^{1/2} B_r^T S^{-1}``. Columns the data drives hard weigh more in
the truncation, so their directions are kept; ``alpha = 0`` is plain SVD.

Guard: a channel whose ``s_j`` is below ``1e-6`` of the largest is raised to that
floor (a channel the data never drives would otherwise be divided by zero; at
the floor its weight column is nearly free in the truncation and its factor
entries stay of the size of the weight's). When every ``s_j`` is zero (no input
ever reached the layer) all are set to 1: on such data every factorization has
zero output error, and plain SVD is the one that is also best on the weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from compactnn._checks import check_choice, check_float, check_int, check_tensor
from compactnn.init.data_fit import FitOptions
from compactnn.init.layer_factors import apply_factors, dense_target, layer_moments
from compactnn.init.moments import InputMoments
from compactnn.init.spectral import balanced_factors, rebalance
from compactnn.lowrank.base import LowRankLayer
from compactnn.lowrank.registry import register_initializer

__all__ = ["ASVD_STATS", "ASVD_FLOOR", "asvd_scales", "asvd_factors", "asvd_"]

#: Per-channel statistics of the calibration rows ASVD can scale by.
ASVD_STATS = ("abs_mean", "abs_max")
#: Scales below this fraction of the largest are raised to it.
ASVD_FLOOR = 1e-6


def asvd_scales(statistic: Tensor, alpha: float = 0.5) -> Tensor:
    """``s = statistic ** alpha`` with the guard of the module docstring, float64.
    ``statistic`` is a per-input-channel, non-negative, finite ``(n,)`` tensor."""
    check_float("alpha", alpha, 0.0)
    stat = check_tensor("statistic", statistic, ndim=1, floating=True).detach().double()
    if bool((stat < 0).any()):
        raise ValueError("statistic must be non-negative (a mean or maximum of |x_j|)")
    return _guard(stat.pow(alpha))


def _guard(s: Tensor) -> Tensor:
    top = float(s.max()) if s.numel() else 0.0
    if top == 0.0:
        return torch.ones_like(s)
    return s.clamp_min(ASVD_FLOOR * top)


def asvd_factors(weight: Tensor, rank: int, scales: Tensor) -> tuple[Tensor, Tensor]:
    """ASVD's factors of ``weight`` ``(m, n)`` at ``rank`` for the channel scales
    ``scales`` ``(n,)`` (the diagonal of ``S``, already raised to ``alpha``;
    non-negative, guarded as the module docstring says): ``U = A_r sigma_r^{1/2}``
    and ``V = sigma_r^{1/2} B_r^T S^{-1}`` from the exact SVD of ``W S``. With all
    scales equal to one this is exactly the balanced plain SVD. Returns float64
    ``(m, rank)`` and ``(rank, n)`` on the weight's device."""
    w = check_tensor("weight", weight, ndim=2, floating=True).detach().double()
    m, n = w.shape
    check_int("rank", rank, 1, min(m, n))
    s = check_tensor("scales", scales, shape=(n,), floating=True).detach().double()
    if bool((s < 0).any()):
        raise ValueError("scales must be non-negative")
    s = _guard(s).to(w.device)
    u, v = balanced_factors(w * s, rank, "exact")
    return u, v / s


@register_initializer("asvd", data_aware=True)
def asvd_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inputs: Tensor | Iterable[Any] | None = None,
    *,
    alpha: float = 0.5,
    stat: str = "abs_mean",
    batch_size: int = 4096,
    max_patches: int = 4096,
    seed: int = 0,
    scales: Tensor | None = None,
    moments: InputMoments | None = None,
) -> LowRankLayer:
    """Activation-aware SVD (module docstring): set ``layer``'s factors from the
    SVD of the dense weight with its input channels scaled by
    ``stat_j ** alpha``; the bias is kept.

    The per-channel statistic (``stat``: ``"abs_mean"``, the mean of ``|x_j|``,
    as published, or ``"abs_max"``) comes from exactly one of: calibration
    ``inputs`` (a tensor or batches of the layer's inputs, streamed),
    precomputed ``moments`` (an :class:`InputMoments` carrying ``abs_mean`` and
    ``abs_max``), or ``scales``, the statistic itself ``(n,)`` for the layer's
    matrix-view columns (``alpha`` is still applied). The factors are balanced
    (equal singular values on both sides) before they are written. Returns
    ``layer``; on any error it is left unchanged."""
    check_float("alpha", alpha, 0.0)
    check_choice("stat", stat, ASVD_STATS)
    FitOptions(batch_size=batch_size, max_patches=max_patches, seed=seed)
    w, _ = dense_target(layer, weight, bias)
    if w.shape[0] != 1:
        raise ValueError(f"init='asvd' supports layers whose matrix view is one matrix, "
                         f"not {layer.extra_repr()}")
    n = w.shape[2]
    if scales is not None:
        if inputs is not None or moments is not None:
            raise ValueError("init='asvd': give one of inputs=, moments= or scales=")
        layer.check_input_rows()
        statistic = check_tensor("scales", scales, shape=(n,), floating=True)
    else:
        mom = layer_moments("asvd", layer, inputs, moments, batch_size=batch_size,
                            max_patches=max_patches, seed=seed)
        statistic = getattr(mom, stat)
        if statistic is None:
            raise ValueError(f"init='asvd' with stat={stat!r} needs moments with {stat} "
                             "(as input_moments computes them)")
    s = asvd_scales(statistic, alpha)
    u, v = asvd_factors(w[0], layer.rank, s)
    u, v = rebalance(u.unsqueeze(0), v.unsqueeze(0))
    apply_factors(layer, u, v, None)
    return layer
