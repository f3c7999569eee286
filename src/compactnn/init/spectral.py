"""Spectral initialization [FNL, Sec. 3.1]: the best rank-r approximation of a
weight in Frobenius norm (Eckart-Young), split into balanced factors."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from compactnn._checks import check_choice, check_int, check_module
from compactnn.lowrank.base import LowRankLayer
from compactnn.lowrank.registry import register_initializer

__all__ = ["SVD_METHODS", "truncated_svd", "balanced_factors", "rebalance", "spectral_",
           "default_"]

SVD_METHODS = ("auto", "exact", "randomized")
# Entries beyond these magnitudes are rescaled (by a power of two, which is exact)
# before an SVD, so squared norms inside it neither overflow nor underflow.
_SAFE_MAX, _SAFE_MIN = 2.0**60, 2.0**-60


def truncated_svd(
    matrix: Tensor,
    rank: int,
    method: str = "auto",
    niter: int = 4,
    oversample: int = 10,
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-``rank`` singular triplets ``(A, s, Bh)`` of a (batch of) matrix, with
    ``matrix ~= A @ diag(s) @ Bh``.

    ``method="exact"`` uses ``torch.linalg.svd``; ``"randomized"`` uses
    ``torch.svd_lowrank`` (Halko et al. 2011, ``rank + oversample`` probe vectors
    and ``niter`` power iterations), far cheaper when the rank is small relative
    to the matrix; ``"auto"`` picks randomized when ``rank <= min(m, n) / 8`` and
    ``min(m, n) >= 256``. Computed in at least float32.
    """
    check_choice("method", method, SVD_METHODS)
    m, n = matrix.shape[-2:]
    small = min(m, n)
    check_int("rank", rank, 1, small)
    work = matrix if matrix.dtype == torch.float64 else matrix.float()
    if method == "auto":
        method = "randomized" if (small >= 256 and rank * 8 <= small) else "exact"
    if method == "randomized":
        q = min(rank + oversample, small)
        a, s, b = torch.svd_lowrank(work, q=q, niter=niter)
        return a[..., :rank], s[..., :rank], b[..., :rank].transpose(-2, -1)
    a, s, bh = torch.linalg.svd(work, full_matrices=False)
    return a[..., :rank], s[..., :rank], bh[..., :rank, :]


def balanced_factors(matrix: Tensor, rank: int, method: str = "auto") -> tuple[Tensor, Tensor]:
    """``U = A_r diag(sqrt(s_r))`` and ``V = diag(sqrt(s_r)) B_r^T``: the
    Eckart-Young optimal rank-r factors with equal singular values on each side
    [FNL, Sec. 3.1]. Matrices with huge or tiny entries are rescaled by a power of
    two first, so each factor (of the order of the root of the entries) stays
    representable whenever the product is."""
    peak = float(matrix.detach().abs().amax()) if matrix.numel() else 0.0
    exp = 0
    if peak > _SAFE_MAX or 0.0 < peak < _SAFE_MIN:
        exp = 2 * (math.frexp(peak)[1] // 2)  # even, so its root is a power of two too
        matrix = torch.ldexp(matrix.double() if matrix.dtype == torch.float64 else
                             matrix.float(), torch.tensor(-exp))
    a, s, bh = truncated_svd(matrix, rank, method)
    root = s.sqrt() * 2.0 ** (exp // 2)
    return a * root.unsqueeze(-2), root.unsqueeze(-1) * bh


def rebalance(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Balanced factors of the same product ``u @ v`` (batched): ``U = Q_u X s^{1/2}``,
    ``V = s^{1/2} Y^T Q_v^T`` from QRs of both factors and an r x r SVD, so that
    ``U^T U = V V^T = diag(s)`` as in spectral initialization [FNL]."""
    qu, ru = torch.linalg.qr(u)
    qv, rv = torch.linalg.qr(v.transpose(-2, -1))
    x, s, yh = torch.linalg.svd(ru @ rv.transpose(-2, -1))
    root = s.sqrt()
    return (qu @ x) * root.unsqueeze(-2), root.unsqueeze(-1) * (yh @ qv.transpose(-2, -1))


@register_initializer("spectral")
@torch.no_grad()
def spectral_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    svd_method: str = "auto",
) -> LowRankLayer:
    """Set ``layer``'s factors to the balanced best rank-r approximation of
    ``weight`` (in the dense module's layout and shape), or of a fresh draw of the
    dense layer's default init when ``weight`` is None [FNL, Sec. 3.1].
    ``svd_method`` is :func:`truncated_svd`'s ``method``.

    ``bias`` is part of the uniform initializer signature and not used: the bias
    is not factorized. Returns ``layer``; on any error it is left unchanged.
    """
    del bias
    check_module("layer", layer, LowRankLayer)
    check_choice("svd_method", svd_method, SVD_METHODS)
    w = layer.dense_init_weight() if weight is None else layer.check_dense_weight(weight)
    g = layer.matrix_shape[0]
    u, v = balanced_factors(layer.weight_to_matrix(w.detach()), layer.rank // g, svd_method)
    u, v = u.to(layer.U.dtype), v.to(layer.V.dtype)
    if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
        raise ValueError(f"weight is too large for the layer's dtype {layer.U.dtype}: "
                         "its factors overflow")
    layer.set_factor_matrices(u, v)
    return layer


@register_initializer("default")
@torch.no_grad()
def default_(layer: LowRankLayer, weight: Tensor | None = None,
             bias: Tensor | None = None) -> LowRankLayer:
    """Independent random factors scaled to the dense init's variance
    (:meth:`LowRankLayer.reset_factors`); ``weight`` and ``bias`` are ignored.
    The baseline without spectral initialization in [FNL]."""
    del weight, bias
    check_module("layer", layer, LowRankLayer)
    layer.reset_factors()
    return layer
