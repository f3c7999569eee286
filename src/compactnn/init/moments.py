"""Moment solvers: data-aware factorizations that need only the streamed first
and second moments of the calibration inputs, so their memory does not grow
with the data.

* :func:`least_squares_factors`: the exact minimizer of the identity-activation
  objective ``E |W x + b - (U V x + c)|^2`` (reduced-rank regression).
* :func:`whitened_factors` (``init="whitened"``): SVD-LLM's truncation-aware
  whitening -- Cholesky factor ``L`` of ``E[x x^T]``, truncated SVD of ``W L``,
  factors ``U_r s^{1/2}`` and ``s^{1/2} V_r^T L^{-1}``; the bias is kept.
* :func:`lstsq_factors` (``init="lstsq"``): MosaicML Composer's factorization --
  spectral start, a few alternating least-squares rounds on the linear outputs
  (``U`` by data-weighted least squares, ``V`` by plain least squares against
  ``W``), and the bias refitted to the mean residual.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from compactnn.init.spectral import balanced_factors

__all__ = ["InputMoments", "input_moments", "least_squares_factors", "whitened_factors",
           "lstsq_factors", "linear_error"]


@dataclass
class InputMoments:
    """Streamed moments of calibration rows: ``count``, ``mean`` (n,) and the second
    moment ``E[x x^T]`` (n, n), in float64."""

    count: int
    mean: Tensor
    second: Tensor

    def covariance(self) -> Tensor:
        return self.second - torch.outer(self.mean, self.mean)


def input_moments(rows: Iterable[Tensor]) -> InputMoments:
    """One streamed pass: count, mean and second moment of the rows (memory
    ``O(n^2)``, whatever the amount of data). Raises on empty data."""
    count, total, second = 0, None, None
    for x in rows:
        xd = x.detach().double()
        if total is None:
            total = xd.sum(0)
            second = xd.T @ xd
        else:
            total += xd.sum(0)
            second += xd.T @ xd
        count += xd.shape[0]
    if count == 0 or total is None or second is None:
        raise ValueError("calibration inputs are empty: no rows reached the layer")
    return InputMoments(count, total / count, second / count)


def _sym_roots(mat: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """``(C^{1/2}, C^{+1/2})`` of a symmetric PSD matrix (plus ``damping`` times its
    mean diagonal), the pseudo-inverse root dropping eigenvalues below
    ``1e-12`` of the largest."""
    n = mat.shape[-1]
    mat = 0.5 * (mat + mat.T)
    if damping > 0:
        mat = mat + damping * float(mat.diagonal().mean()) * torch.eye(n, dtype=mat.dtype,
                                                                        device=mat.device)
    lam, q = torch.linalg.eigh(mat)
    lam = lam.clamp_min(0.0)
    keep = lam > 1e-12 * float(lam.max().clamp_min(1e-300))
    root = lam.sqrt()
    inv = torch.where(keep, 1.0 / root.clamp_min(1e-300), torch.zeros_like(root))
    return (q * root) @ q.T, (q * inv) @ q.T


def least_squares_factors(weight: Tensor, rank: int, moments: InputMoments,
                          bias: Tensor | None = None, fit_bias: bool = True,
                          damping: float = 0.0) -> tuple[Tensor, Tensor, Tensor | None]:
    """Exact minimizer of the identity-activation objective
    ``E |W x + b - (U V x + c)|^2`` over rank-r ``U V`` (and ``c``): with
    ``C`` the input covariance (second moment when ``c = b`` is kept),
    ``U V = [W C^{1/2}]_r C^{+1/2}`` (reduced-rank regression; Eckart-Young in the
    ``C``-weighted norm) and ``c = b + (W - U V) E[x]``. Returns float64 factors."""
    w = weight.detach().double()
    cmat = moments.covariance() if fit_bias else moments.second
    root, inv_root = _sym_roots(cmat, damping)
    a, s, bh = torch.linalg.svd(w @ root, full_matrices=False)
    u = a[:, :rank] * s[:rank].sqrt()
    v = s[:rank].sqrt().unsqueeze(-1) * (bh[:rank] @ inv_root)
    c = None
    if bias is not None or fit_bias:
        b = torch.zeros(w.shape[0], dtype=w.dtype) if bias is None else bias.detach().double()
        c = b + (w - u @ v) @ moments.mean if fit_bias else b
    return u, v, c


def whitened_factors(weight: Tensor, rank: int, moments: InputMoments,
                     damping: float = 0.0) -> tuple[Tensor, Tensor]:
    """SVD-LLM's truncation-aware data whitening: ``S = L L^T`` (Cholesky of the
    input second moment, with a growing diagonal jitter if ``S`` is singular),
    truncated SVD ``W L ~= A_r diag(s_r) B_r^T``; ``U = A_r s_r^{1/2}``,
    ``V = s_r^{1/2} B_r^T L^{-1}``. Minimizes ``E |(W - U V) x|^2``."""
    w = weight.detach().double()
    smat = 0.5 * (moments.second + moments.second.T)
    n = smat.shape[0]
    eye = torch.eye(n, dtype=smat.dtype, device=smat.device)
    scale = float(smat.diagonal().mean().clamp_min(1e-300))
    jitter = damping
    while True:
        chol, info = torch.linalg.cholesky_ex(smat + jitter * scale * eye)
        if int(info) == 0:
            break
        jitter = 1e-10 if jitter == 0 else jitter * 10.0
        if jitter > 1.0:
            raise ValueError("the input second moment is not positive definite even with "
                             "jitter; the calibration inputs are degenerate")
    a, s, bh = torch.linalg.svd(w @ chol, full_matrices=False)
    u = a[:, :rank] * s[:rank].sqrt()
    # V = s^{1/2} B^T L^{-1}  <=>  V L = s^{1/2} B^T
    v = torch.linalg.solve_triangular(chol, s[:rank].sqrt().unsqueeze(-1) * bh[:rank],
                                      upper=False, left=False)
    return u, v


def lstsq_factors(weight: Tensor, rank: int, moments: InputMoments, bias: Tensor | None = None,
                  iters: int = 3) -> tuple[Tensor, Tensor, Tensor | None]:
    """MosaicML Composer's factorization in moment form: spectral start, then
    ``iters`` rounds of ``U = W S V^T (V S V^T)^+`` (least squares of the linear
    outputs ``W x`` on ``V x``, ``S = E[x x^T]``) and ``V = (U^T U)^+ U^T W_ls``
    (``W_ls = W`` restricted to the data's span: plain least squares against the
    full-rank solution), then the bias refitted to the mean residual,
    ``c = b + (W - U V) E[x]``."""
    w = weight.detach().double()
    smat = moments.second
    lam, q = torch.linalg.eigh(0.5 * (smat + smat.T))
    keep = lam > 1e-12 * float(lam.max().clamp_min(1e-300))
    w_ls = w @ (q[:, keep] @ q[:, keep].T)
    u, v = balanced_factors(w, rank, "exact")
    for _ in range(iters):
        u = (w @ smat @ v.T) @ torch.linalg.pinv(v @ smat @ v.T, hermitian=True)
        v = torch.linalg.pinv(u.T @ u, hermitian=True) @ (u.T @ w_ls)
    b = torch.zeros(w.shape[0], dtype=w.dtype) if bias is None else bias.detach().double()
    c = b + (w - u @ v) @ moments.mean
    return u, v, c


def linear_error(w: Tensor, b: Tensor | None, u: Tensor, v: Tensor, c: Tensor | None,
                 mom: InputMoments) -> float:
    """``E |(W - U V) x + (b - c)|^2`` from the input moments."""
    d = w.double() - u.double() @ v.double()
    db = torch.zeros(w.shape[0], dtype=torch.float64)
    if b is not None:
        db = db + b.double()
    if c is not None:
        db = db - c.double()
    return float(torch.einsum("ij,jk,ik->", d, mom.second, d) + 2.0 * db @ (d @ mom.mean)
                 + db @ db)
