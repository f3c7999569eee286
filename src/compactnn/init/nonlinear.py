"""Nonlinear, function-matching initialization of low-rank layers [LR-NL], and the
data-aware linear baselines it is compared with.

The rank-r layer is chosen to compute nearly the same *function* as the dense
layer, minimizing (METHODS.md, Sec. 4)

    L(U, V, c) = E_x |act(W x + b) - act(U V x + c)|^2 ,

with ``x ~ N(0, I)`` at initialization ("Gaussian mode", closed form in
:mod:`compactnn.init.gaussian`) or ``x`` the calibration activations that reach
the layer in a trained network ("data mode").

Gaussian mode, ReLU: the structure of the problem gives a solver about as
cheap as spectral initialization [LR-NL, "no more expensive than spectral"]:

1. Each output unit sees ``x`` only through ``u_i = w_i.x + b_i`` and
   ``v_i = a_i.x + c_i``; the cross moment grows with their correlation
   ``rho_i`` (Price's theorem), so for a fixed row space ``S`` of ``V`` the best
   ``a_i`` is a positive multiple of the projection ``P_S w_i``, and
   ``rho_i = |P_S w_i| / |w_i|``. Each unit is then a two-variable problem in
   its scale ``t_i = |a_i|`` and bias ``c_i``, solved by a batched damped Newton
   method with analytic derivatives.
2. The subspace: with ``g_i(rho) = -min_{t, c} L_i``, convex and increasing in
   ``rho`` (it is a maximum of functions convex in ``rho``), and
   ``rho_i >= e_i . B^T w_i / |w_i|`` for unit ``e_i``, the linear minorant gives a
   majorize-minimize step ``B <- orth(W^T diag(omega) W B)`` with
   ``omega_i = g_i'(rho_i) / rho_i / |w_i|^2 ... `` (a reweighted subspace
   iteration; ``omega`` is uniform when ``g`` is linear in ``rho^2``, where the
   spectral subspace is already stationary). It never increases ``L``; the
   solver over-relaxes it (``B + eta (I - B B^T) M (B^T M)^{-1}``, ``eta`` up to
   ``relax``) and keeps an over-relaxed step only when it lowers ``L``.

It starts from the spectral solution (one truncated SVD), whose error it
evaluates exactly, and never returns anything worse.

Data mode: activation-aware least squares is solved exactly for the identity
activation (from the streamed input moments); for ReLU, GELU, SiLU, tanh and
sigmoid the objective is minimized by Adam on mini-batches, streamed over the
calibration batches, from the better of the spectral and least-squares
starts, keeping the start if the result is not better on the data.

Baselines registered beside it (data-aware, same API):

* ``"whitened"``: SVD-LLM's truncation-aware whitening — Cholesky factor ``L``
  of the input second moment ``E[x x^T]``, truncated SVD of ``W L``, factors
  ``U_r s^{1/2}`` and ``s^{1/2} V_r^T L^{-1}``; the bias is kept.
* ``"lstsq"``: MosaicML Composer's factorization — spectral start, then a few
  alternating least-squares rounds on the linear outputs (``U`` by
  data-weighted least squares, ``V`` by plain least squares against ``W``),
  and the bias refitted to the mean residual.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from compactnn.init.calibration import activation_fn, check_activation, layer_inputs
from compactnn.init.gaussian import (
    _plackett_terms,
    _safe_scale,
    normal_cdf,
    normal_pdf,
    relu_function_error,
    relu_mean,
    relu_output_energy,
    relu_second_moment,
)
from compactnn.init.spectral import balanced_factors, truncated_svd
from compactnn.lowrank.base import LowRankLayer, check_finite, register_initializer
from compactnn.lowrank.conv import LowRankConv2d

__all__ = [
    "GaussianSolution",
    "DataSolution",
    "solve_gaussian",
    "refine_gaussian",
    "fit_data",
    "input_moments",
    "least_squares_factors",
    "whitened_factors",
    "lstsq_factors",
    "rebalance",
    "nonlinear_",
    "whitened_",
    "lstsq_",
]

_NODES = 32


# -- shared small pieces -----------------------------------------------------------------
def rebalance(u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Balanced factors of the same product ``u @ v`` (batched): ``U = Q_u X s^{1/2}``,
    ``V = s^{1/2} Y^T Q_v^T`` from QRs of both factors and an r x r SVD, so that
    ``U^T U = V V^T = diag(s)`` as in spectral initialization [FNL]."""
    qu, ru = torch.linalg.qr(u)
    qv, rv = torch.linalg.qr(v.transpose(-2, -1))
    x, s, yh = torch.linalg.svd(ru @ rv.transpose(-2, -1))
    root = s.sqrt()
    return (qu @ x) * root.unsqueeze(-2), root.unsqueeze(-1) * (yh @ qv.transpose(-2, -1))


def _relative_lrs(params: list[Tensor], scales: list[float], lr: float) -> list[dict]:
    return [{"params": [p], "lr": lr * max(sc, 1e-12)} for p, sc in zip(params, scales,
                                                                         strict=True)]


def _rms(t: Tensor) -> float:
    return float(t.detach().double().square().mean().sqrt())


# -- Gaussian mode, ReLU: the per-unit problem ----------------------------------------------
def _unit_terms(beta: Tensor, rho: Tensor, tau: Tensor, gam: Tensor) -> tuple[Tensor, ...]:
    """One output unit with ``|w| = 1``: ``u ~ N(beta, 1)``, ``v ~ N(gam, tau^2)``,
    correlation ``rho``. Returns ``F = E(relu u - relu v)^2``, its gradient in
    ``(tau, gam)``, its Hessian ``(H_tt, H_tg, H_gg)`` and ``dF/drho``.

    With ``k = gam/tau``, ``q = sqrt(1 - rho^2)``, ``Phi2 = P(u > 0, v > 0)`` and
    ``G = phi(k) E[relu u | v = 0] / tau``: ``dC/dgam = beta Phi2 + E[X 1]``,
    ``dC/dtau = rho Phi2 + phi(k) E[relu u | v = 0]``, the Hessian of ``C`` is
    ``G [[k^2, -k], [-k, 1]]`` (Stein's lemma), and ``dC/drho = tau Phi2``."""
    tau = _safe_scale(tau)
    k = gam / tau
    q = _safe_scale(torch.sqrt((1.0 - rho * rho).clamp_min(0.0)))
    one = torch.ones_like(beta)
    phi2, kint = _plackett_terms(beta, k, rho, _NODES)
    pb, cb = normal_pdf(beta), normal_cdf(beta)
    pk, ck = normal_pdf(k), normal_cdf(k)
    mv = relu_mean(gam, tau)
    cross = relu_mean(beta, one) * mv + tau * (rho * cb * ck + kint)
    f = relu_second_moment(beta, one) + relu_second_moment(gam, tau) - 2.0 * cross
    cond = relu_mean(beta - rho * k, q)                        # E[relu u | v = 0]
    ex = pb * normal_cdf((k - rho * beta) / q) + rho * pk * normal_cdf((beta - rho * k) / q)
    g_gam = 2.0 * mv - 2.0 * (beta * phi2 + ex)
    g_tau = 2.0 * tau * ck - 2.0 * (rho * phi2 + pk * cond)
    gg = pk * cond / tau
    h_gg = 2.0 * ck - 2.0 * gg
    h_tg = 2.0 * pk + 2.0 * k * gg
    h_tt = 2.0 * ck - 2.0 * k * pk - 2.0 * k * k * gg
    return f, g_tau, g_gam, h_tt, h_tg, h_gg, -2.0 * tau * phi2


def _start_units(beta: Tensor, rho: Tensor, fit_bias: bool) -> tuple[Tensor, Tensor]:
    """Per unit, the better of two starts: the spectral one (``t = |P w|``,
    ``c = b``) and the linear regime's best affine predictor (``t = rho Phi(beta)``,
    ``c = E relu(u)``, exact when ``v`` is almost always positive)."""
    cands = [(rho.clone(), beta.clone()),
             ((rho * normal_cdf(beta)).clamp_min(1e-12),
              relu_mean(beta, torch.ones_like(beta)) if fit_bias else beta.clone())]
    tau, gam = cands[0]
    best = _unit_terms(beta, rho, tau, gam)[0]
    for t, g in cands[1:]:
        f = _unit_terms(beta, rho, t, g)[0]
        ok = f < best
        tau, gam, best = torch.where(ok, t, tau), torch.where(ok, g, gam), torch.where(ok, f, best)
    return tau, gam


def _fit_units(beta: Tensor, rho: Tensor, tau: Tensor, gam: Tensor, fit_bias: bool,
               iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """Batched damped Newton (Levenberg-Marquardt) on every unit's ``(tau, gam)``
    (``tau`` alone when the bias is not fitted); a step is kept per unit only
    when it lowers that unit's error, so the result is never worse."""
    terms = _unit_terms(beta, rho, tau, gam)
    lam = torch.full_like(tau, 1e-4)
    for _ in range(iters):
        f, gt, gc, htt, htc, hcc, _ = terms
        a = htt + lam * (1.0 + htt.abs())
        if fit_bias:
            d = hcc + lam * (1.0 + hcc.abs())
            det = a * d - htc * htc
            ok = (det > 0) & (a > 0)
            det = torch.where(ok, det, torch.ones_like(det))
            dt = torch.where(ok, -(d * gt - htc * gc) / det, -gt / (1.0 + lam))
            dc = torch.where(ok, -(a * gc - htc * gt) / det, -gc / (1.0 + lam))
        else:
            ok = a > 0
            dt = torch.where(ok, -gt / torch.where(ok, a, torch.ones_like(a)), -gt / (1.0 + lam))
            dc = torch.zeros_like(gc)
        new_tau, new_gam = (tau + dt).clamp_min(1e-12), gam + dc
        new = _unit_terms(beta, rho, new_tau, new_gam)
        better = new[0] <= f
        tau, gam = torch.where(better, new_tau, tau), torch.where(better, new_gam, gam)
        terms = tuple(torch.where(better, x, y) for x, y in zip(new, terms, strict=True))
        lam = torch.where(better, lam / 4.0, lam * 8.0)
    return tau, gam, terms[0]


@dataclass
class GaussianSolution:
    """Factors ``u`` (G, m, r), ``v`` (G, r, n) and bias ``(G, m)`` (None if the layer
    has none) with the exact objective at the solution and at the spectral start,
    and ``energy = E|relu(W x + b)|^2`` (all Gaussian-mode, summed over groups)."""

    u: Tensor
    v: Tensor
    bias: Tensor | None
    error: float
    spectral_error: float
    energy: float
    history: list[float] = field(default_factory=list)
    rounds: int = 0

    @property
    def relative_error(self) -> float:
        return self.error / self.energy

    @property
    def relative_spectral_error(self) -> float:
        return self.spectral_error / self.energy


def _as_groups(weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    w = weight if weight.dim() == 3 else weight.unsqueeze(0)
    if w.dim() != 3:
        raise ValueError(f"weight must be (m, n) or (G, m, n), got shape {tuple(weight.shape)}")
    b = None if bias is None else bias.reshape(w.shape[:2])
    return w, b


def solve_gaussian(
    weight: Tensor,
    rank: int,
    bias: Tensor | None = None,
    *,
    fit_bias: bool = True,
    rounds: int = 8,
    newton_steps: int = 3,
    relax: float = 8.0,
    tol: float = 1e-6,
    svd_method: str = "auto",
) -> GaussianSolution:
    """Minimize ``E |relu(W x + b) - relu(U V x + c)|^2`` over rank-``rank`` ``U V``
    (and ``c`` when ``fit_bias``; else ``c = b``) for ``x ~ N(0, I)`` [LR-NL].

    The fast solver of the module docstring: spectral start, exact per-unit
    scale and bias, then at most ``rounds`` over-relaxed majorize-minimize
    subspace steps (each followed by ``newton_steps`` per-unit Newton steps),
    stopping early when a round gains less than ``tol`` relative. Costs one
    truncated SVD plus ~``3 * rounds`` thin products ``W @ (n x r)``. ``weight``
    is ``(m, n)`` or grouped ``(G, m, n)``. Never returns a higher objective than
    the spectral solution (then it returns that).
    """
    w, b = _as_groups(weight, bias)
    work = w.detach() if w.dtype == torch.float64 else w.detach().float()
    g, m, n = work.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must be an int in [1, {min(m, n)}], got rank={rank!r}")
    for name, value in (("rounds", rounds), ("newton_steps", newton_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {name}={value!r}")
    a, sv, bh = truncated_svd(work, rank, svd_method)
    basis = bh.transpose(-2, -1)                          # (G, n, r), orthonormal
    proj = a * sv.unsqueeze(-2)                           # W @ basis, (G, m, r)

    s = work.double().square().sum(-1).sqrt()            # |w_i|
    live = s > 0
    s1 = torch.where(live, s, torch.ones_like(s))
    bb = torch.zeros_like(s) if b is None else b.detach().double()
    beta = torch.where(live, bb / s1, torch.zeros_like(s))
    mass = torch.where(live, s * s, torch.zeros_like(s))  # each unit's error scales as |w_i|^2
    energy = float(relu_second_moment(bb, s).sum())

    def rho_of(p: Tensor) -> Tensor:
        return (p.double().square().sum(-1).sqrt() / s1).clamp(0.0, 1.0)

    rho = rho_of(proj)
    spec_units = _unit_terms(beta, rho, rho, beta)[0]
    spectral_error = float((spec_units * mass).sum())
    fb = bool(fit_bias)
    tau, gam = _start_units(beta, rho, fb)
    tau, gam, f = _fit_units(beta, rho, tau, gam, fb, max(newton_steps, 8))
    loss = float((f * mass).sum())
    history = [spectral_error, loss]
    eta, done = 1.0, 0
    wt = work.transpose(-2, -1)
    for _ in range(rounds):
        d_rho = _unit_terms(beta, rho, tau, gam)[6]
        omega = torch.where(live, -d_rho / rho.clamp_min(1e-12), torch.zeros_like(rho))
        mmat = wt @ (omega.to(work.dtype).unsqueeze(-1) * proj)        # (G, n, r)
        btm = proj.transpose(-2, -1) @ (omega.to(work.dtype).unsqueeze(-1) * proj)
        tangent = mmat - basis @ btm
        ridge = 1e-9 * btm.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-30)
        eye = torch.eye(rank, dtype=work.dtype, device=work.device)
        step = torch.linalg.solve(btm + ridge[..., None, None] * eye, tangent.transpose(-2, -1))
        step = step.transpose(-2, -1)                   # tangent (B^T M)^{-1}
        while True:
            new_basis = torch.linalg.qr(basis + eta * step)[0]
            new_proj = work @ new_basis
            new_rho = rho_of(new_proj)
            trial = float((_unit_terms(beta, new_rho, tau, gam)[0] * mass).sum())
            if trial <= loss or eta <= 1.0:
                break
            eta = max(1.0, eta / 4.0)
        basis, proj, rho = new_basis, new_proj, new_rho
        tau, gam, f = _fit_units(beta, rho, tau, gam, fb, newton_steps)
        new_loss = float((f * mass).sum())
        done += 1
        gain = loss - new_loss
        loss = new_loss
        history.append(loss)
        eta = min(relax, eta * 2.0)
        if gain <= tol * max(loss, 1e-300):
            break
    error = loss
    if not error <= spectral_error:
        u, v = balanced_factors(work, rank, svd_method)
        return GaussianSolution(u, v, None if b is None else bb.to(work.dtype),
                                spectral_error, spectral_error, energy, history, done)
    pn = proj.double().square().sum(-1).sqrt()
    scale = torch.where(live & (pn > 0), tau * s / pn.clamp_min(1e-300), torch.zeros_like(pn))
    u, v = rebalance(proj * scale.to(work.dtype).unsqueeze(-1), basis.transpose(-2, -1))
    c = None
    if b is not None or fb:
        c = torch.where(live, gam * s, bb) if fb else bb
        c = c.to(work.dtype)
    return GaussianSolution(u, v, c, error, spectral_error, energy, history, done)


def refine_gaussian(
    weight: Tensor,
    u: Tensor,
    v: Tensor,
    bias: Tensor | None = None,
    new_bias: Tensor | None = None,
    *,
    steps: int = 1000,
    lr: float = 0.05,
    fit_bias: bool = True,
) -> GaussianSolution:
    """First-order solve of the same Gaussian objective: Adam on ``U``, ``V`` (and
    ``c``) for ``steps`` steps with a cosine-decayed, parameter-relative learning
    rate, keeping the best iterate. Slow but generic: the benchmark's "long
    solve" reference. Shapes as :func:`solve_gaussian` returns them."""
    w, b = _as_groups(weight, bias)
    work = w.detach() if w.dtype == torch.float64 else w.detach().float()
    uu = u.detach().clone().to(work.dtype).reshape(work.shape[0], work.shape[1], -1)
    vv = v.detach().clone().to(work.dtype).reshape(work.shape[0], -1, work.shape[2])
    c0 = new_bias if new_bias is not None else b
    fit = bool(fit_bias)
    c = (torch.zeros(work.shape[:2], dtype=work.dtype) if c0 is None
         else c0.detach().clone().to(work.dtype).reshape(work.shape[:2]))
    params = [uu.requires_grad_(), vv.requires_grad_()]
    row_rms = float(work.double().square().sum(-1).mean().sqrt())
    scales = [_rms(uu), _rms(vv)]
    if fit:
        params.append(c.requires_grad_())
        scales.append(row_rms)
    opt = torch.optim.Adam(_relative_lrs(params, scales, lr))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    energy = float(relu_output_energy(work, b))

    def objective() -> Tensor:
        return relu_function_error(work, uu, vv, b, c if (fit or c0 is not None) else None)

    with torch.no_grad():
        start = float(objective())
    best = (start, uu.detach().clone(), vv.detach().clone(), c.detach().clone())
    history = [start]
    for _ in range(steps):
        loss = objective()
        value = float(loss.detach())
        if value < best[0]:
            best = (value, uu.detach().clone(), vv.detach().clone(), c.detach().clone())
        history.append(value)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        value = float(objective())
    if value < best[0]:
        best = (value, uu.detach().clone(), vv.detach().clone(), c.detach().clone())
    err, bu, bv, bc = best
    bu, bv = rebalance(bu, bv)
    return GaussianSolution(bu, bv, bc if (fit or c0 is not None) else None, err, start, energy,
                            history, steps)


# -- data mode -------------------------------------------------------------------------------
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


@dataclass
class DataSolution:
    """Data-mode result: factors ``u`` (m, r), ``v`` (r, n), bias ``(m,)`` or None,
    the objective on the calibration data, and each start's objective."""

    u: Tensor
    v: Tensor
    bias: Tensor | None
    error: float
    starts: dict[str, float] = field(default_factory=dict)
    start: str = ""


def _data_error(rows: Iterable[Tensor], w: Tensor, b: Tensor | None,
                cands: list[tuple[Tensor, Tensor, Tensor | None]], act: Any) -> list[float]:
    """Mean over rows of ``|act(W x + b) - act(U V x + c)|^2`` for each candidate,
    in one streamed pass."""
    sums = [0.0] * len(cands)
    count = 0
    with torch.no_grad():
        for x in rows:
            x = x.to(w.dtype)
            target = act(torch.nn.functional.linear(x, w, b))
            for i, (u, v, c) in enumerate(cands):
                out = act(torch.nn.functional.linear(x @ v.T, u, c))
                sums[i] += float((out - target).double().square().sum())
            count += x.shape[0]
    if count == 0:
        raise ValueError("calibration inputs are empty: no rows reached the layer")
    return [s_ / count for s_ in sums]


def fit_data(
    weight: Tensor,
    rank: int,
    rows: Iterable[Tensor],
    activation: str = "relu",
    bias: Tensor | None = None,
    *,
    fit_bias: bool = True,
    steps: int = 300,
    lr: float = 0.02,
    batch_size: int = 1024,
    damping: float = 0.0,
    svd_method: str = "auto",
    seed: int = 0,
    moments: InputMoments | None = None,
) -> DataSolution:
    """Minimize ``mean_x |act(W x + b) - act(U V x + c)|^2`` over the calibration
    rows (a re-iterable of ``(k, n)`` tensors, streamed; memory does not grow
    with the data). The identity activation is solved exactly
    (:func:`least_squares_factors`). Otherwise: the better on the data of the
    spectral and least-squares starts, then ``steps`` Adam steps on mini-batches
    of at most ``batch_size`` rows (cosine-decayed, parameter-relative learning
    rate ``lr``), kept only if it lowers the objective on all the data."""
    act_name = check_activation(activation)
    act = activation_fn(act_name)
    w = weight.detach() if weight.dtype == torch.float64 else weight.detach().float()
    b = None if bias is None else bias.detach().to(w.dtype)
    fit = fit_bias
    mom = input_moments(rows) if moments is None else moments
    if mom.mean.shape[0] != w.shape[1]:
        raise ValueError(f"inputs have {mom.mean.shape[0]} features, the layer expects "
                         f"{w.shape[1]}")
    lu, lv, lc = least_squares_factors(w, rank, mom, b, fit, damping)
    ls = (lu.to(w.dtype), lv.to(w.dtype), None if lc is None else lc.to(w.dtype))
    if act_name == "identity":
        cu, cv = rebalance(ls[0].unsqueeze(0), ls[1].unsqueeze(0))
        err = _linear_error(w, b, cu[0], cv[0], ls[2], mom)
        return DataSolution(cu[0], cv[0], ls[2], err, {"lstsq": err}, "lstsq")
    su, sv_ = balanced_factors(w, rank, svd_method)
    spec = (su.to(w.dtype), sv_.to(w.dtype), b)
    errs = _data_error(rows, w, b, [spec, ls], act)
    starts = {"spectral": errs[0], "lstsq": errs[1]}
    name = min(starts, key=starts.__getitem__)
    u0, v0, c0 = spec if name == "spectral" else ls
    best = DataSolution(u0, v0, c0, starts[name], starts, name)
    if steps <= 0:
        return best

    gen = torch.Generator().manual_seed(seed)
    uu, vv = u0.clone().requires_grad_(), v0.clone().requires_grad_()
    params, scales = [uu, vv], [_rms(u0), _rms(v0)]
    cc = None
    if fit:
        cc = (torch.zeros(w.shape[0], dtype=w.dtype) if c0 is None else c0.clone())
        cc.requires_grad_()
        out_scale = math.sqrt(max(float(torch.einsum("ij,jk,ik->", w.double(), mom.second,
                                                     w.double())) / w.shape[0], 1e-30))
        params.append(cc)
        scales.append(out_scale)
    elif c0 is not None:
        cc = c0
    opt = torch.optim.Adam(_relative_lrs(params, scales, lr))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    taken = 0
    while taken < steps:
        seen = 0
        for x in rows:
            x = x.to(w.dtype)
            perm = torch.randperm(x.shape[0], generator=gen)
            for idx in perm.split(batch_size):
                xb = x[idx.to(x.device)]
                with torch.no_grad():
                    target = act(torch.nn.functional.linear(xb, w, b))
                out = act(torch.nn.functional.linear(xb @ vv.T, uu, cc))
                loss = (out - target).square().sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                taken += 1
                seen += 1
                if taken >= steps:
                    break
            if taken >= steps:
                break
        if seen == 0:
            raise ValueError("calibration inputs are empty: no rows reached the layer")
    final = (uu.detach(), vv.detach(), None if cc is None else cc.detach())
    err = _data_error(rows, w, b, [final], act)[0]
    if err < best.error:
        fu, fv = rebalance(final[0].unsqueeze(0), final[1].unsqueeze(0))
        return DataSolution(fu[0], fv[0], final[2], err, starts, name + "+adam")
    return best


def _linear_error(w: Tensor, b: Tensor | None, u: Tensor, v: Tensor, c: Tensor | None,
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


# -- the initializers --------------------------------------------------------------------------
def _dense_target(layer: LowRankLayer, weight: Tensor | None,
                  bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The dense weight as the layer's matrix view ``(G, m, n)`` and the dense bias
    as ``(G, m)`` (or None), checked. Without ``weight``, a fresh draw of the dense
    layer's default init with the layer's current bias (initialization from scratch)."""
    if weight is None:
        weight = layer.dense_init_weight()
        if bias is None and getattr(layer, "bias", None) is not None:
            bias = layer.bias.detach().clone()
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a tensor, got {type(weight).__name__}")
    check_finite("weight", weight)
    g, m, n = layer.matrix_shape
    if weight.numel() != g * m * n:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not match the layer "
                         f"({g * m * n} entries expected)")
    w = layer.weight_to_matrix(weight.detach())
    b = None
    if bias is not None:
        if getattr(layer, "bias", None) is None:
            raise ValueError("a dense bias was given but the low-rank layer has bias=False")
        check_finite("bias", bias)
        if bias.numel() != layer.bias.numel():
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match the layer's "
                             f"{tuple(layer.bias.shape)}")
        b = bias.detach().reshape(-1)
    return w, b


def _rows_are_units(layer: LowRankLayer) -> bool:
    return not (isinstance(layer, LowRankConv2d) and layer.scheme != "channel")


@torch.no_grad()
def _apply(layer: LowRankLayer, u: Tensor, v: Tensor, c: Tensor | None) -> None:
    g, m, _ = layer.matrix_shape
    r_g = layer.rank // g
    u = u.reshape(g, m, r_g).to(layer.U.dtype)
    v = v.reshape(g, r_g, -1).to(layer.V.dtype)
    if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
        raise FloatingPointError("initialization produced non-finite factors")
    layer.set_factor_matrices(u, v)
    if c is not None and getattr(layer, "bias", None) is not None:
        layer.bias.copy_(c.reshape(layer.bias.shape).to(layer.bias.dtype))


def _check_options(**opts: Any) -> None:
    for name, value in opts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {name}={value!r}")


@register_initializer("nonlinear")
def nonlinear_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inputs: Tensor | Iterable[Any] | None = None,
    activation: str | None = "relu",
    *,
    fit_bias: bool = True,
    rounds: int = 8,
    newton_steps: int = 3,
    steps: int = 300,
    lr: float = 0.02,
    batch_size: int = 1024,
    max_patches: int = 4096,
    samples: int = 8192,
    damping: float = 0.0,
    seed: int = 0,
    svd_method: str = "auto",
) -> LowRankLayer:
    """Function-matching initialization [LR-NL]: set ``layer``'s factors (and bias,
    when ``fit_bias`` and the layer has one) to minimize
    ``E |act(W x + b) - act(U V x + c)|^2`` (METHODS.md, Sec. 4).

    Args:
        layer: the low-rank layer, modified in place (only once everything succeeded).
        weight, bias: the dense layer's parameters (its module layout); without
            ``weight``, a fresh draw of the dense default init (from scratch).
        inputs: calibration activations reaching the layer (a tensor, or an
            iterable of batches, streamed). Without them, ``x ~ N(0, I)``.
        activation: ``"relu"`` (default), ``"identity"`` (or None), ``"gelu"``,
            ``"silu"``, ``"tanh"``, ``"sigmoid"``.
        fit_bias: also fit the bias ``c`` (else ``c = b``).
        rounds, newton_steps, svd_method: the Gaussian ReLU solver
            (:func:`solve_gaussian`).
        steps, lr, batch_size, damping, seed: the data-mode solver (:func:`fit_data`).
        max_patches: patch rows sampled per batch for convolutions in data mode.
        samples: Gaussian inputs drawn for activations other than relu/identity
            when no ``inputs`` are given (the objective is then estimated by sampling).

    Gaussian mode: relu by the closed-form solver (never worse than spectral on
    the exact objective); identity is exactly spectral (``E|(W - A) x|^2 =
    |W - A|_F^2``). Data mode: identity solved exactly, the others by Adam from
    the better of the spectral and least-squares starts. Returns ``layer``.
    """
    act = check_activation(activation)
    _check_options(rounds=rounds, newton_steps=newton_steps, steps=steps, samples=samples)
    w, b = _dense_target(layer, weight, bias)
    has_bias = getattr(layer, "bias", None) is not None
    fit = bool(fit_bias) and has_bias
    g, m, n = layer.matrix_shape
    r_g = layer.rank // g
    if inputs is None and act == "identity":
        u, v = balanced_factors(w, r_g, svd_method)
        _apply(layer, u, v, None)
        return layer
    if not _rows_are_units(layer):
        raise ValueError(f"init='nonlinear' with activation={act!r} needs the rows of the "
                         "matrix view to be output units; LowRankConv2d's "
                         "scheme='spatial' is not supported (use scheme='channel')")
    b_g = None if b is None else b.reshape(g, m)
    if inputs is None and act == "relu":
        sol = solve_gaussian(w, r_g, b_g, fit_bias=fit, rounds=rounds,
                             newton_steps=newton_steps, svd_method=svd_method)
        _apply(layer, sol.u, sol.v, sol.bias if fit else None)
        return layer
    if inputs is None:  # other activations: sample x ~ N(0, I)
        gen = torch.Generator().manual_seed(seed)
        results = []
        for gi in range(g):
            xs = torch.randn(samples, n, generator=gen, dtype=w.dtype)
            rows = list(xs.split(batch_size))
            results.append(fit_data(w[gi], r_g, rows, act, None if b_g is None else b_g[gi],
                                    fit_bias=fit, steps=steps, lr=lr, batch_size=batch_size,
                                    damping=damping, svd_method=svd_method, seed=seed))
    else:
        rows = layer_inputs(layer, inputs, batch_size=batch_size, max_patches=max_patches,
                            seed=seed)
        results = [fit_data(w[0], r_g, rows, act, None if b_g is None else b_g[0],
                            fit_bias=fit, steps=steps, lr=lr, batch_size=batch_size,
                            damping=damping, svd_method=svd_method, seed=seed)]
    u = torch.stack([r.u for r in results])
    v = torch.stack([r.v for r in results])
    c = None
    if fit:
        c = torch.stack([r.bias if r.bias is not None else torch.zeros(m, dtype=u.dtype)
                         for r in results])
    _apply(layer, u, v, c)
    return layer


def _need_inputs(name: str, inputs: Any) -> None:
    if inputs is None:
        raise ValueError(f"init={name!r} is data-aware and needs calibration inputs=... "
                         "(a tensor or an iterable of batches of the layer's inputs)")


@register_initializer("whitened")
def whitened_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inputs: Tensor | Iterable[Any] | None = None,
    activation: str | None = None,
    *,
    damping: float = 0.0,
    batch_size: int = 4096,
    max_patches: int = 4096,
    seed: int = 0,
) -> LowRankLayer:
    """SVD-LLM's activation-whitened SVD (:func:`whitened_factors`): the best rank-r
    ``U V`` for ``E |(W - U V) x|^2`` over the calibration ``inputs``; the bias is
    kept. ``activation`` is accepted and ignored (a linear-output method)."""
    del activation
    _need_inputs("whitened", inputs)
    w, _ = _dense_target(layer, weight, bias)
    rows = layer_inputs(layer, inputs, batch_size=batch_size, max_patches=max_patches,
                        seed=seed)
    mom = input_moments(rows)
    u, v = whitened_factors(w[0], layer.rank, mom, damping)
    u, v = rebalance(u.unsqueeze(0), v.unsqueeze(0))
    _apply(layer, u, v, None)
    return layer


@register_initializer("lstsq")
def lstsq_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inputs: Tensor | Iterable[Any] | None = None,
    activation: str | None = None,
    *,
    iters: int = 3,
    batch_size: int = 4096,
    max_patches: int = 4096,
    seed: int = 0,
) -> LowRankLayer:
    """MosaicML Composer's least-squares factorization (:func:`lstsq_factors`):
    matches the linear output ``W x + b`` on the calibration ``inputs`` and refits
    the bias. ``activation`` is accepted and ignored (a linear-output method)."""
    del activation
    _need_inputs("lstsq", inputs)
    _check_options(iters=iters)
    w, b = _dense_target(layer, weight, bias)
    rows = layer_inputs(layer, inputs, batch_size=batch_size, max_patches=max_patches,
                        seed=seed)
    mom = input_moments(rows)
    u, v, c = lstsq_factors(w[0], layer.rank, mom, b, iters)
    u, v = rebalance(u.unsqueeze(0), v.unsqueeze(0))
    _apply(layer, u, v, c if getattr(layer, "bias", None) is not None else None)
    return layer
