"""Spectral initialization [FNL, Sec. 3.1]: the best rank-r approximation of a
weight in Frobenius norm (Eckart-Young), split into balanced factors."""

from __future__ import annotations

import torch
from torch import Tensor

from compactnn.lowrank.base import LowRankLayer, check_finite, register_initializer

__all__ = ["truncated_svd", "balanced_factors", "spectral_", "default_"]

_SVD_METHODS = ("auto", "exact", "randomized")


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
    if method not in _SVD_METHODS:
        raise ValueError(f"method must be one of {_SVD_METHODS}, got method={method!r}")
    m, n = matrix.shape[-2:]
    small = min(m, n)
    if not 1 <= rank <= small:
        raise ValueError(f"rank={rank} must lie in [1, {small}] for a {m}x{n} matrix")
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
    [FNL, Sec. 3.1]."""
    a, s, bh = truncated_svd(matrix, rank, method)
    root = s.sqrt()
    return a * root.unsqueeze(-2), root.unsqueeze(-1) * bh


@register_initializer("spectral")
@torch.no_grad()
def spectral_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    method: str = "auto",
) -> LowRankLayer:
    """Set ``layer``'s factors to the balanced best rank-r approximation of
    ``weight`` (in the dense module's layout), or of a fresh draw of the dense
    layer's default init when ``weight`` is None [FNL, Sec. 3.1].

    ``bias`` is accepted for a uniform initializer signature and not used: the
    bias is not factorized. Returns ``layer``.
    """
    del bias
    w = layer.dense_init_weight() if weight is None else weight
    check_finite("weight", w)
    matrix = layer.weight_to_matrix(w)
    g = layer.matrix_shape[0]
    u, v = balanced_factors(matrix, layer.rank // g, method)
    layer.set_factor_matrices(u.to(layer.U.dtype), v.to(layer.V.dtype))
    return layer


@register_initializer("default")
@torch.no_grad()
def default_(layer: LowRankLayer, weight: Tensor | None = None,
             bias: Tensor | None = None) -> LowRankLayer:
    """Independent random factors scaled to the dense init's variance
    (:meth:`LowRankLayer.reset_factors`); ``weight`` and ``bias`` are ignored.
    The baseline without spectral initialization in [FNL]."""
    del weight, bias
    layer.reset_factors()
    return layer
