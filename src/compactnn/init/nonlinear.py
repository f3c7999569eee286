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
   majorize-minimize step ``B <- orth(M)``, ``M = W^T diag(omega) W B`` with
   ``omega_i = g_i'(rho_i) / (|w_i|^2 rho_i)`` (a reweighted subspace iteration;
   ``omega`` is uniform when ``g`` is linear in ``rho^2``, where the spectral
   subspace is already stationary). It never increases ``L``; the solver
   over-relaxes it (``B + eta (I - B B^T) M (B^T M)^{-1}``, ``eta`` up to
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
from torch import Tensor, nn

from compactnn.init.calibration import (
    activation_fn,
    check_activation,
    layer_inputs,
    norm_affine,
)
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
    """Per unit, the best of three starts: the spectral one (``t = |P w|``,
    ``c = b``), the linear regime's best affine predictor (``t = rho Phi(beta)``,
    ``c = E relu(u)``, exact when ``v`` is almost always positive), and the best
    constant (``t -> 0``; the optimum of units that are rarely active). The
    problem can have a local minimum besides the global one."""
    mean = relu_mean(beta, torch.ones_like(beta)) if fit_bias else beta.clone()
    cands = [(rho.clone(), beta.clone()),
             ((rho * normal_cdf(beta)).clamp_min(1e-12), mean),
             (torch.full_like(rho, 1e-6), mean)]
    tau, gam = cands[0]
    best = _unit_terms(beta, rho, tau, gam)[0]
    for t, g in cands[1:]:
        f = _unit_terms(beta, rho, t, g)[0]
        ok = f < best
        tau, gam, best = torch.where(ok, t, tau), torch.where(ok, g, gam), torch.where(ok, f, best)
    return tau, gam


def _fit_units(beta: Tensor, rho: Tensor, tau: Tensor, gam: Tensor, fit_bias: bool,
               iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """Batched saddle-free damped Newton on every unit's ``(tau, gam)`` (``tau``
    alone when the bias is not fitted): the step solves ``(|H| + lam I) d = -g``
    with ``|H|`` the 2x2 Hessian with its eigenvalues made positive (so it
    descends where the problem is not convex), Levenberg-Marquardt ``lam``; a
    step is kept per unit only when it lowers that unit's error."""
    terms = _unit_terms(beta, rho, tau, gam)
    lam = torch.full_like(tau, 1e-4)
    for _ in range(iters):
        f, gt, gc, htt, htc, hcc, _ = terms
        if fit_bias:
            half, disc = 0.5 * (htt + hcc), torch.sqrt((0.5 * (htt - hcc)) ** 2 + htc * htc)
            l1, l2 = half + disc, half - disc
            split = disc > 1e-12 * (l1.abs() + l2.abs() + 1e-300)
            den = torch.where(split, l1 - l2, torch.ones_like(disc))
            p_tt, p_tc = (htt - l2) / den, htc / den          # projector on l1's eigenvector
            p_cc = (hcc - l2) / den
            a1, a2 = l1.abs(), l2.abs()
            damp = lam * (1.0 + torch.maximum(a1, a2))
            m_tt = torch.where(split, a2 + (a1 - a2) * p_tt, a1) + damp
            m_tc = torch.where(split, (a1 - a2) * p_tc, torch.zeros_like(a1))
            m_cc = torch.where(split, a2 + (a1 - a2) * p_cc, a1) + damp
            det = m_tt * m_cc - m_tc * m_tc
            dt = -(m_cc * gt - m_tc * gc) / det
            dc = -(m_tt * gc - m_tc * gt) / det
        else:
            dt = -gt / (htt.abs() + lam * (1.0 + htt.abs()))
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


class _Units:
    """The per-unit data of a batch of Gaussian problems ``(P, m)``: ``beta = b/|w|``,
    the weight ``|w|^2`` of each unit's error, and ``|w|`` (1 for zero rows, which
    ``a_i = 0, c_i = b_i`` match exactly and which carry no weight)."""

    def __init__(self, work: Tensor, b: Tensor | None) -> None:
        s = work.double().square().sum(-1).sqrt()
        self.live = s > 0
        self.s = torch.where(self.live, s, torch.ones_like(s))
        self.b = torch.zeros_like(s) if b is None else b.detach().double()
        self.beta = torch.where(self.live, self.b / self.s, torch.zeros_like(s))
        self.mass = torch.where(self.live, s * s, torch.zeros_like(s))

    def rho(self, proj: Tensor) -> Tensor:
        return (proj.double().square().sum(-1).sqrt() / self.s).clamp(0.0, 1.0)

    def loss(self, rho: Tensor, tau: Tensor, gam: Tensor) -> Tensor:
        """Objective of each problem with per-unit ``(tau, gam)`` held fixed."""
        return (_unit_terms(self.beta, rho, tau, gam)[0] * self.mass).sum(-1)


def _trial(work: Tensor, units: _Units, base: Tensor, tangent: Tensor, eta: Tensor, tau: Tensor,
           gam: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The row space spanned by ``base + eta * tangent`` (``base = B (B^T M)``: the
    same span as ``B + eta * tangent (B^T M)^{-1}``, without the solve), its
    projections, correlations and the objective there with ``(tau, gam)`` fixed."""
    nb = torch.linalg.qr(base + eta.to(work.dtype)[:, None, None] * tangent)[0]
    npj = work @ nb
    nr = units.rho(npj)
    return nb, npj, nr, units.loss(nr, tau, gam)


def _subspace_solve(work: Tensor, units: _Units, basis: Tensor, fit_bias: bool, rounds: int,
                    newton_steps: int, relax: float, tol: float, reference: Tensor
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, list[Tensor], int]:
    """Majorize-minimize over the row space (module docstring), for a batch of
    problems ``work`` (P, m, n) from orthonormal ``basis`` (P, n, r), each problem
    with its own over-relaxation factor and acceptance test. Stops when no problem
    gained more than ``tol`` times its reduction from ``reference`` so far."""
    rank = basis.shape[-1]
    proj = work @ basis
    rho = units.rho(proj)
    tau, gam = _start_units(units.beta, rho, fit_bias)
    tau, gam, f = _fit_units(units.beta, rho, tau, gam, fit_bias, max(newton_steps, 8))
    loss = (f * units.mass).sum(-1)
    history = [loss]
    eta = torch.ones_like(loss)
    wt = work.transpose(-2, -1)
    eye = torch.eye(rank, dtype=work.dtype, device=work.device)
    done = 0
    for _ in range(rounds):
        d_rho = _unit_terms(units.beta, rho, tau, gam)[6]
        omega = torch.where(units.live, -d_rho / rho.clamp_min(1e-12), torch.zeros_like(rho))
        weighted = omega.to(work.dtype).unsqueeze(-1) * proj
        mmat = wt @ weighted                                     # W^T diag(omega) W B
        btm = proj.transpose(-2, -1) @ weighted                  # B^T M, symmetric PSD
        ridge = 1e-9 * btm.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1e-30)
        base = basis @ (btm + ridge[:, None, None] * eye)
        tangent = mmat - basis @ btm
        new_basis, new_proj, new_rho, new_loss = _trial(work, units, base, tangent, eta, tau, gam)
        reject = (new_loss > loss) & (eta > 1.0)
        if bool(reject.any()):  # fall back to the plain MM step (eta = 1), a sure descent
            fb = _trial(work, units, base, tangent, torch.ones_like(eta), tau, gam)
            sel = reject.to(work.dtype)[:, None, None]
            new_basis = sel * fb[0] + (1 - sel) * new_basis
            new_proj = sel * fb[1] + (1 - sel) * new_proj
            new_rho = torch.where(reject[:, None], fb[2], new_rho)
        basis, proj, rho = new_basis, new_proj, new_rho
        tau, gam, f = _fit_units(units.beta, rho, tau, gam, fit_bias, newton_steps)
        new_loss = (f * units.mass).sum(-1)
        gain = loss - new_loss
        loss = new_loss
        history.append(loss)
        done += 1
        eta = torch.where(reject, torch.ones_like(eta), (eta * 2.0).clamp(max=relax))
        if bool((gain <= tol * (reference - loss).clamp_min(0.0) + 1e-12 * loss).all()):
            break
    return basis, proj, tau, gam, loss, history, done


def _extra_starts(work: Tensor, units: _Units, basis: Tensor, count: int) -> Tensor:
    """Further starting row spaces, ``(P, S, n, r)``: the top singular subspace of
    ``W`` with rows weighted by ``Phi(beta_i)`` (each unit's chance of being
    active), and for the ``count - 1`` units with the most active energy
    ``|w_i|^2 Phi(beta_i)``, the span of ``w_i`` and the top ``r - 1`` spectral
    directions (for rank 1, the unit's own direction)."""
    p, m, n = work.shape
    rank = basis.shape[-1]
    act = normal_cdf(units.beta)
    starts = [truncated_svd(work * act.to(work.dtype).unsqueeze(-1), rank, "exact")[2]
              .transpose(-2, -1)]
    k = min(count - 1, m)
    if k > 0:
        top = (units.mass * act).topk(k, dim=-1).indices               # (P, k)
        rows = torch.gather(work, 1, top.unsqueeze(-1).expand(p, k, n))  # (P, k, n)
        for j in range(k):
            cand = torch.cat([rows[:, j].unsqueeze(-1), basis[..., : rank - 1]], dim=-1)
            starts.append(torch.linalg.qr(cand)[0])
    return torch.stack(starts, dim=1)


def solve_gaussian(
    weight: Tensor,
    rank: int,
    bias: Tensor | None = None,
    *,
    fit_bias: bool = True,
    rounds: int = 8,
    newton_steps: int = 3,
    relax: float = 8.0,
    tol: float = 0.003,
    restarts: int | None = None,
    svd_method: str = "auto",
) -> GaussianSolution:
    """Minimize ``E |relu(W x + b) - relu(U V x + c)|^2`` over rank-``rank`` ``U V``
    (and ``c`` when ``fit_bias``; else ``c = b``) for ``x ~ N(0, I)`` [LR-NL].

    The fast solver of the module docstring: spectral start, exact per-unit
    scale and bias, then at most ``rounds`` over-relaxed majorize-minimize
    subspace steps (each followed by ``newton_steps`` per-unit Newton steps),
    stopping early once a round adds less than ``tol`` times the reduction from
    spectral achieved so far. Costs one truncated SVD plus ~``3 * rounds`` thin
    products ``W @ (n x r)``.

    The objective is not convex: ``restarts`` further starting subspaces
    (:func:`_extra_starts`) are solved alongside and the best kept. ``None``
    (auto) uses ``min(m + 1, 4096 // (m * n))``: several starts only on tiny layers,
    where the spectral start can sit in the wrong basin (on wide random layers
    the extra starts found nothing better in our measurements).

    ``weight`` is ``(m, n)`` or grouped ``(G, m, n)``. Never returns a higher
    objective than the spectral solution (then it returns that).
    """
    w, b = _as_groups(weight, bias)
    work = w.detach() if w.dtype == torch.float64 else w.detach().float()
    g, m, n = work.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(m, n):
        raise ValueError(f"rank must be an int in [1, {min(m, n)}], got rank={rank!r}")
    for name, value in (("rounds", rounds), ("newton_steps", newton_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {name}={value!r}")
    if restarts is None:
        restarts = min(m + 1, 4096 // (m * n))
    elif isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise ValueError(f"restarts must be a non-negative int or None, got {restarts!r}")
    fb = bool(fit_bias)
    a, sv, bh = truncated_svd(work, rank, svd_method)
    basis = bh.transpose(-2, -1)                              # (G, n, r), orthonormal
    units = _Units(work, b)
    energy = float(relu_second_moment(units.b, units.s * units.live).sum())
    spec_rho = units.rho(a * sv.unsqueeze(-2))
    spec_loss = units.loss(spec_rho, spec_rho, units.beta)
    spectral_error = float(spec_loss.sum())

    if restarts > 0:
        starts = torch.cat([basis.unsqueeze(1), _extra_starts(work, units, basis, restarts)], 1)
        k = starts.shape[1]
        rep = _Units.__new__(_Units)
        for attr in ("live", "s", "b", "beta", "mass"):
            setattr(rep, attr, getattr(units, attr).repeat_interleave(k, 0))
        out = _subspace_solve(work.repeat_interleave(k, 0), rep, starts.flatten(0, 1), fb,
                              rounds, newton_steps, relax, tol,
                              spec_loss.repeat_interleave(k, 0))
        best = out[4].reshape(g, k).argmin(-1) + k * torch.arange(g)
        basis, proj, tau, gam, loss = (t_[best] for t_ in out[:5])
        history = [h.reshape(g, k).amin(-1) for h in out[5]]
        done = out[6]
    else:
        basis, proj, tau, gam, loss, history, done = _subspace_solve(
            work, units, basis, fb, rounds, newton_steps, relax, tol, spec_loss)
    error = float(loss.sum())
    hist = [spectral_error] + [float(h.sum()) for h in history]
    if not error <= spectral_error:
        u, v = balanced_factors(work, rank, svd_method)
        return GaussianSolution(u, v, None if b is None else units.b.to(work.dtype),
                                spectral_error, spectral_error, energy, hist, done)
    pn = proj.double().square().sum(-1).sqrt()
    ok = units.live & (pn > 0)
    scale = torch.where(ok, tau * units.s / pn.clamp_min(1e-300), torch.zeros_like(pn))
    # U V = (diag(scale) P) B^T with orthonormal B: balance by one thin SVD of the left factor
    x, sig, yh = torch.linalg.svd(proj * scale.to(work.dtype).unsqueeze(-1), full_matrices=False)
    root = sig.sqrt()
    u, v = x * root.unsqueeze(-2), root.unsqueeze(-1) * (yh @ basis.transpose(-2, -1))
    c = None
    if b is not None or fb:
        c = (torch.where(units.live, gam * units.s, units.b) if fb else units.b).to(work.dtype)
    return GaussianSolution(u, v, c, error, spectral_error, energy, hist, done)


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
    post_norm: nn.Module | tuple[Tensor, Tensor] | None = None,
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
        post_norm: a per-output affine map between the layer and the activation,
            ``z -> a * z + d`` (an eval-mode BatchNorm, or a ``(a, d)`` pair): the
            objective becomes ``E |act(a(W x + b) + d) - act(a(U V x + c) + d)|^2``,
            solved as the plain problem for ``(a W, a b + d)`` and mapped back
            (``compress_sequential`` passes the BatchNorm after a conv).

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
    if not _rows_are_units(layer) and (act != "identity" or inputs is not None
                                       or post_norm is not None):
        raise ValueError(f"init='nonlinear' with activation={act!r} needs the rows of the "
                         "matrix view to be output units; LowRankConv2d's "
                         "scheme='spatial' is not supported (use scheme='channel')")
    scale = None
    if post_norm is not None:  # solve for (a W, a b + d), then map U and c back
        a, d = norm_affine(post_norm, g * m)
        a = torch.where(a.abs() > 1e-12 * float(a.abs().max().clamp_min(1e-300)), a,
                        torch.ones_like(a))  # a unit the norm zeroes: match it unscaled
        a, d = a.to(w.dtype), d.to(w.dtype)
        scale, shift = a.reshape(g, m), d.reshape(g, m)
        w = w * scale.unsqueeze(-1)
        b = (shift if b is None else scale * b.reshape(g, m) + shift).reshape(-1)
    b_g = None if b is None else b.reshape(g, m)
    u, v, c = _solve_units(layer, w, b_g, r_g, act, inputs, fit=fit, rounds=rounds,
                           newton_steps=newton_steps, steps=steps, lr=lr,
                           batch_size=batch_size, max_patches=max_patches, samples=samples,
                           damping=damping, seed=seed, svd_method=svd_method)
    if scale is not None:
        u = u.reshape(g, m, r_g) / scale.unsqueeze(-1).to(u.dtype)
        u, v = rebalance(u, v.reshape(g, r_g, n))
        if c is not None:
            c = (c.reshape(g, m) - shift.to(c.dtype)) / scale.to(c.dtype)
    _apply(layer, u, v, c if fit else None)
    return layer


def _solve_units(layer: LowRankLayer, w: Tensor, b_g: Tensor | None, r_g: int, act: str,
                 inputs: Any, *, fit: bool, rounds: int, newton_steps: int, steps: int,
                 lr: float, batch_size: int, max_patches: int, samples: int, damping: float,
                 seed: int, svd_method: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """Factors ``(G, m, r/G)``, ``(G, r/G, n)`` and bias ``(G, m)`` (the given one
    when not ``fit``) for :func:`nonlinear_`'s problem on the matrix view ``w``."""
    g, m, n = w.shape
    if inputs is None and act == "identity":
        u, v = balanced_factors(w, r_g, svd_method)
        return u, v, b_g
    if inputs is None and act == "relu":
        sol = solve_gaussian(w, r_g, b_g, fit_bias=fit, rounds=rounds,
                             newton_steps=newton_steps, svd_method=svd_method)
        return sol.u, sol.v, sol.bias if fit else b_g
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
    return u, v, c if fit else b_g


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
    post_norm: Any = None,
) -> LowRankLayer:
    """SVD-LLM's activation-whitened SVD (:func:`whitened_factors`): the best rank-r
    ``U V`` for ``E |(W - U V) x|^2`` over the calibration ``inputs``; the bias is
    kept. ``activation`` and ``post_norm`` are accepted and ignored (a linear-output
    method, as published)."""
    del activation, post_norm
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
    post_norm: Any = None,
) -> LowRankLayer:
    """MosaicML Composer's least-squares factorization (:func:`lstsq_factors`):
    matches the linear output ``W x + b`` on the calibration ``inputs`` and refits
    the bias. ``activation`` and ``post_norm`` are accepted and ignored (a
    linear-output method, as published)."""
    del activation, post_norm
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
