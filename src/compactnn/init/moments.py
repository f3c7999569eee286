"""Moment solvers: data-aware factorizations that need only the streamed first
and second moments of the calibration inputs, so their memory does not grow
with the data.

* :func:`least_squares_factors`: the exact minimizer of the identity-activation
  objective ``E |W x + b - (U V x + c)|^2`` (reduced-rank regression).
* :func:`whitened_factors` (``init="whitened"``): SVD-LLM's truncation-aware
  whitening -- Cholesky factor ``L`` of ``E[x x^T]`` (:func:`shifted_cholesky`),
  truncated SVD of ``W L``, factors ``U_r s^{1/2}`` and ``s^{1/2} V_r^T L^{-1}``;
  the bias is kept; optionally ``U`` refitted by least squares (:func:`refit_u`).
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

from compactnn._checks import check_tensor
from compactnn.init.spectral import balanced_factors

__all__ = ["InputMoments", "check_moments", "input_moments", "least_squares_factors",
           "whitened_factors", "shifted_cholesky", "refit_u", "cross_moment", "WHITENED_REFITS",
           "lstsq_factors", "linear_error"]


@dataclass
class InputMoments:
    """Streamed moments of calibration rows: ``count``, ``mean`` (n,) and the second
    moment ``E[x x^T]`` (n, n), in float64; with them the per-feature ``abs_mean``
    ``E|x_j|`` and ``abs_max`` ``max |x_j|`` (n,) that activation-scaled SVD uses
    (None when the moments were built without them). Memory: ``n^2 + 3 n`` float64
    numbers, whatever the amount of data."""

    count: int
    mean: Tensor
    second: Tensor
    abs_mean: Tensor | None = None
    abs_max: Tensor | None = None

    def covariance(self) -> Tensor:
        return self.second - torch.outer(self.mean, self.mean)


def check_moments(moments: object, features: int, name: str = "moments") -> InputMoments:
    """``moments`` must be an :class:`InputMoments` of ``features`` input features
    with a positive count and finite statistics (they may come from elsewhere:
    nothing in them is trusted before this check)."""
    if not isinstance(moments, InputMoments):
        raise TypeError(f"{name} must be an InputMoments, got {type(moments).__name__}")
    if isinstance(moments.count, bool) or not isinstance(moments.count, int) \
            or moments.count < 1:
        raise ValueError(f"{name}.count must be a positive int, got {moments.count!r}")
    check_tensor(f"{name}.mean", moments.mean, shape=(features,), floating=True)
    check_tensor(f"{name}.second", moments.second, shape=(features, features), floating=True)
    for field in ("abs_mean", "abs_max"):
        value = getattr(moments, field)
        if value is not None:
            check_tensor(f"{name}.{field}", value, shape=(features,), floating=True)
            if bool((value < 0).any()):
                raise ValueError(f"{name}.{field} has negative entries")
    return moments


def input_moments(rows: Iterable[Tensor]) -> InputMoments:
    """One streamed pass: count, mean, second moment and per-feature absolute mean
    and maximum of the rows (memory ``O(n^2)``, whatever the amount of data).
    Raises on empty data."""
    count, total, second, abs_total, abs_max = 0, None, None, None, None
    for x in rows:
        xd = x.detach().double()
        ad = xd.abs()
        if total is None:
            total = xd.sum(0)
            second = xd.T @ xd
            abs_total = ad.sum(0)
            abs_max = ad.amax(0) if xd.shape[0] else torch.zeros_like(abs_total)
        else:
            total += xd.sum(0)
            second += xd.T @ xd
            abs_total += ad.sum(0)
            if xd.shape[0]:
                abs_max = torch.maximum(abs_max, ad.amax(0))
        count += xd.shape[0]
    if count == 0 or total is None or second is None:
        raise ValueError("calibration inputs are empty: no rows reached the layer")
    return InputMoments(count, total / count, second / count, abs_total / count, abs_max)


def cross_moment(target_rows: Iterable[Tensor], rows: Iterable[Tensor]) -> Tensor:
    """``C = E[x' x^T]`` (n, n), float64, over paired rows: ``x'`` the inputs the
    dense layer is matched on (e.g. from the dense model) and ``x`` the inputs the
    factorized layer sees (from the already-compressed prefix), the i-th row of
    each batch of one paired with the i-th row of the other. The ``cross`` of
    :func:`refit_u`. Raises on mismatched batches or empty data."""
    count, total = 0, None
    for i, (xt, x) in enumerate(zip(target_rows, rows, strict=True)):
        if xt.dim() != 2 or xt.shape != x.shape:
            raise ValueError(f"batch {i}: paired rows must have the same (rows, features) "
                             f"shape, got {tuple(xt.shape)} and {tuple(x.shape)}")
        part = xt.detach().double().T @ x.detach().double().to(xt.device)
        total = part if total is None else total + part
        count += x.shape[0]
    if count == 0 or total is None:
        raise ValueError("calibration inputs are empty: no rows reached the layer")
    return total / count


def least_squares_factors(weight: Tensor, rank: int, moments: InputMoments,
                          bias: Tensor | None = None, fit_bias: bool = True,
                          damping: float = 0.0) -> tuple[Tensor, Tensor, Tensor | None]:
    """Exact minimizer of the identity-activation objective
    ``E |W x + b - (U V x + c)|^2`` over rank-r ``U V`` (and ``c``): with
    ``C`` the input covariance (second moment when ``c = b`` is kept) and any
    factor ``C = L L^T``, the objective is ``|(W - U V) L|_F^2`` (+ the bias
    term), so ``U V = [W L]_r L^{-1}`` (reduced-rank regression; Eckart-Young in
    the ``C``-weighted norm) and ``c = b + (W - U V) E[x]``. ``L`` is the
    Cholesky factor of :func:`shifted_cholesky` (a singular ``C`` is shifted,
    ``damping`` is the first shift tried): a third of the work of one
    eigendecomposition of ``C``, the cost that dominates wide layers. Returns
    float64 factors."""
    w = weight.detach().double()
    cmat = moments.covariance() if fit_bias else moments.second
    chol, _ = shifted_cholesky(cmat, damping)
    a, s, bh = torch.linalg.svd(w @ chol, full_matrices=False)
    u = a[:, :rank] * s[:rank].sqrt()
    # V = s^{1/2} B^T L^{-1}  <=>  V L = s^{1/2} B^T
    v = torch.linalg.solve_triangular(chol, s[:rank].sqrt().unsqueeze(-1) * bh[:rank],
                                      upper=False, left=False)
    c = None
    if bias is not None or fit_bias:
        b = torch.zeros(w.shape[0], dtype=w.dtype) if bias is None else bias.detach().double()
        c = b + (w - u @ v) @ moments.mean if fit_bias else b
    return u, v, c


WHITENED_REFITS = (None, "u", "optimal")


def shifted_cholesky(gram: Tensor, damping: float = 0.0) -> tuple[Tensor, float]:
    """Lower Cholesky factor ``L`` of a symmetric PSD ``gram`` shifted along its
    diagonal, ``gram + t * mean(diag(gram)) * I = L L^T``, and the relative shift
    ``t`` used.

    The shift rule: ``t = damping`` first; while the factorization fails (the
    matrix is not numerically positive definite: a feature that is always zero,
    or features that repeat or are linear combinations of others), ``t`` becomes
    ``1e-10`` (or ``10 t`` once positive) and it is tried again, up to ``t = 1``,
    beyond which the inputs are called degenerate (``ValueError``). The shift is
    relative to the mean diagonal, so it does not depend on the inputs' scale.
    """
    g = 0.5 * (gram + gram.T)
    n = g.shape[0]
    eye = torch.eye(n, dtype=g.dtype, device=g.device)
    scale = float(g.diagonal().mean().clamp_min(1e-300))
    shift = float(damping)
    while True:
        chol, info = torch.linalg.cholesky_ex(g + shift * scale * eye)
        if int(info) == 0:
            return chol, shift
        shift = 1e-10 if shift == 0 else shift * 10.0
        if shift > 1.0:
            raise ValueError("the input second moment is not positive definite even with "
                             "a diagonal shift; the calibration inputs are degenerate")


def refit_u(weight: Tensor, v: Tensor, moments: InputMoments,
            cross: Tensor | None = None) -> Tensor:
    """The least-squares left factor for a fixed right factor ``V``:
    ``U = argmin E |W x' - U V x|^2 = W C V^T (V S V^T)^+``, with ``S = E[x x^T]``
    the (uncentred) second moment of the layer's inputs ``x`` and
    ``C = E[x' x^T]`` the cross moment with the inputs ``x'`` the dense layer is
    matched on (``cross``; by default ``x' = x``, ``C = S``). Setting the gradient
    ``-2 (W C - U V S) V^T`` to zero gives the normal equations
    ``U (V S V^T) = W C V^T``; the pseudo-inverse picks the minimum-norm ``U``
    when ``V S V^T`` is singular (as a least-squares solver on the data would).
    A bias kept equal to the dense one cancels from the residual, which is why the
    moments are uncentred. Returns float64."""
    w = weight.detach().double()
    vv = v.detach().double()
    smat = moments.second
    cmat = smat if cross is None else cross.detach().double()
    gram = vv @ smat @ vv.T
    return (w @ cmat @ vv.T) @ torch.linalg.pinv(0.5 * (gram + gram.T), hermitian=True)


def whitened_factors(weight: Tensor, rank: int, moments: InputMoments,
                     damping: float = 0.0, *, refit: str | None = None,
                     cross: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """SVD-LLM's truncation-aware data whitening: ``S = E[x x^T] = L L^T``
    (:func:`shifted_cholesky`: the Cholesky factor of the uncentred Gram matrix
    ``G = sum x x^T``, scaled by ``1/N``, which changes neither factor), truncated
    SVD ``W L ~= A_r diag(s_r) B_r^T``; ``U = A_r s_r^{1/2}``,
    ``V = s_r^{1/2} B_r^T L^{-1}`` (a triangular solve, never an inverse). The
    product is SVD-LLM's ``(A_r s_r)(B_r^T L^{-1})``, split evenly. It minimizes
    ``E |(W - U V) x|^2``: with ``M = U V``, that is ``|(W - M) L|_F^2``, and
    ``M L`` ranges over all rank-r matrices, so Eckart-Young on ``W L`` is exact.

    ``refit="u"`` then replaces ``U`` by :func:`refit_u` on ``moments`` (and
    ``cross``, the cross moment with the dense layer's own inputs in sequential
    calibration). On the same moments and without a shift this returns the same
    ``U`` (the truncation is already optimal); it gains when the whitening needed
    a shift or when ``cross`` differs from the second moment.

    ``refit="optimal"`` returns the exact minimizer of ``E |W x' - U V x|^2`` for
    inputs that moved: with ``W_e = W C S^{-1}`` (the regression of ``W x'`` on
    ``x``), the residual ``W x' - W_e x`` is uncorrelated with ``x``, so the
    objective is ``E |W x' - W_e x|^2 + E |(W_e - U V) x|^2`` and the whitened
    truncation of ``W_e`` is optimal; ``W_e L = W C L^{-T}`` (a triangular solve)
    is what gets truncated. Without ``cross`` it is the plain whitening."""
    if refit not in WHITENED_REFITS:
        raise ValueError(f"refit must be one of {WHITENED_REFITS}, got refit={refit!r}")
    w = weight.detach().double()
    if cross is not None:
        check_tensor("cross", cross, shape=(w.shape[1], w.shape[1]), floating=True)
    chol, _ = shifted_cholesky(moments.second, damping)
    if refit == "optimal" and cross is not None:
        # W C L^{-T}: solve Z L^T = W C
        target = torch.linalg.solve_triangular(chol.T, w @ cross.detach().double(),
                                               upper=True, left=False)
    else:
        target = w @ chol
    a, s, bh = torch.linalg.svd(target, full_matrices=False)
    u = a[:, :rank] * s[:rank].sqrt()
    # V = s^{1/2} B^T L^{-1}  <=>  V L = s^{1/2} B^T
    v = torch.linalg.solve_triangular(chol, s[:rank].sqrt().unsqueeze(-1) * bh[:rank],
                                      upper=False, left=False)
    if refit == "u":
        u = refit_u(w, v, moments, cross)
    return u, v


_SPAN_SHIFT = 1e-10  # lstsq_factors: relative variance below which a direction is off the data


def lstsq_factors(weight: Tensor, rank: int, moments: InputMoments, bias: Tensor | None = None,
                  iters: int = 3) -> tuple[Tensor, Tensor, Tensor | None]:
    """MosaicML Composer's factorization in moment form: spectral start, then
    ``iters`` rounds of ``U = W S V^T (V S V^T)^+`` (least squares of the linear
    outputs ``W x`` on ``V x``, ``S = E[x x^T]``) and ``V = (U^T U)^+ U^T W_ls``
    (``W_ls = W`` restricted to the data's span: plain least squares against the
    full-rank solution), then the bias refitted to the mean residual,
    ``c = b + (W - U V) E[x]``."""
    w = weight.detach().double()
    smat = 0.5 * (moments.second + moments.second.T)
    ws = w @ smat  # shared by the restriction and every U step
    # W_ls = W P, P the projector on the data's span, as W S (S + t I)^{-1}: a Cholesky
    # solve (t relative to the mean diagonal, from 1e-10 up while S + t I does not
    # factor) instead of an eigendecomposition; a direction of variance well above t
    # is kept whole, one far below it dropped
    chol, _ = shifted_cholesky(smat, _SPAN_SHIFT)
    w_ls = torch.cholesky_solve(ws.T, chol).T
    u, v = balanced_factors(w, rank, "exact")
    for _ in range(iters):
        u = (ws @ v.T) @ torch.linalg.pinv(v @ smat @ v.T, hermitian=True)
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
