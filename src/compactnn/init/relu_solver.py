"""The Gaussian-mode ReLU solver of function-matching initialization [LR-NL]:
minimize ``E |relu(W x + b) - relu(U V x + c)|^2`` over rank-r ``U V`` (and
``c``) for ``x ~ N(0, I)``, with the closed forms of :mod:`compactnn.init.gaussian`.

The structure of the problem gives a solver about as cheap as spectral
initialization [LR-NL, "no more expensive than spectral"]:

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from compactnn._checks import check_int
from compactnn.init.adam import relative_adam, rms
from compactnn.init.gaussian import (
    normal_cdf,
    normal_pdf,
    plackett_terms,
    relu_function_error,
    relu_mean,
    relu_output_energy,
    relu_second_moment,
    safe_scale,
)
from compactnn.init.spectral import balanced_factors, rebalance, truncated_svd

__all__ = ["GaussianSolution", "solve_gaussian", "refine_gaussian"]

_NODES = 32

# -- Gaussian mode, ReLU: the per-unit problem ----------------------------------------------
def _unit_terms(beta: Tensor, rho: Tensor, tau: Tensor, gam: Tensor) -> tuple[Tensor, ...]:
    """One output unit with ``|w| = 1``: ``u ~ N(beta, 1)``, ``v ~ N(gam, tau^2)``,
    correlation ``rho``. Returns ``F = E(relu u - relu v)^2``, its gradient in
    ``(tau, gam)``, its Hessian ``(H_tt, H_tg, H_gg)`` and ``dF/drho``.

    With ``k = gam/tau``, ``q = sqrt(1 - rho^2)``, ``Phi2 = P(u > 0, v > 0)`` and
    ``G = phi(k) E[relu u | v = 0] / tau``: ``dC/dgam = beta Phi2 + E[X 1]``,
    ``dC/dtau = rho Phi2 + phi(k) E[relu u | v = 0]``, the Hessian of ``C`` is
    ``G [[k^2, -k], [-k, 1]]`` (Stein's lemma), and ``dC/drho = tau Phi2``."""
    tau = safe_scale(tau)
    k = gam / tau
    q = safe_scale(torch.sqrt((1.0 - rho * rho).clamp_min(0.0)))
    one = torch.ones_like(beta)
    phi2, kint = plackett_terms(beta, k, rho, _NODES)
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


@dataclass
class _Units:
    """The per-unit data of a batch of Gaussian problems ``(P, m)``: ``beta = b/|w|``,
    the weight ``mass = |w|^2`` of each unit's error, and ``s = |w|`` (1 for zero
    rows, which ``a_i = 0, c_i = b_i`` match exactly and which carry no weight)."""

    live: Tensor
    s: Tensor
    b: Tensor
    beta: Tensor
    mass: Tensor

    @classmethod
    def of(cls, work: Tensor, b: Tensor | None) -> _Units:
        s = work.double().square().sum(-1).sqrt()
        live = s > 0
        norm = torch.where(live, s, torch.ones_like(s))
        bias = torch.zeros_like(s) if b is None else b.detach().double()
        return cls(live, norm, bias, torch.where(live, bias / norm, torch.zeros_like(s)),
                   torch.where(live, s * s, torch.zeros_like(s)))

    def repeat(self, k: int) -> _Units:
        """Each problem repeated ``k`` times in a row (for ``k`` starts per problem)."""
        return _Units(*(t.repeat_interleave(k, 0)
                        for t in (self.live, self.s, self.b, self.beta, self.mass)))

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


@dataclass
class _Subspace:
    """Result of :func:`_subspace_solve` for a batch of ``P`` problems: the row space
    ``basis`` (P, n, r), the projections ``proj = W basis`` (P, m, r), the per-unit
    scale ``tau`` and bias ``gam`` (P, m), the objective ``loss`` (P,), its value
    after each round, and the rounds run."""

    basis: Tensor
    proj: Tensor
    tau: Tensor
    gam: Tensor
    loss: Tensor
    history: list[Tensor]
    rounds: int

    def select(self, index: Tensor) -> _Subspace:
        """The problems at ``index`` (the history keeps every problem)."""
        return _Subspace(self.basis[index], self.proj[index], self.tau[index],
                         self.gam[index], self.loss[index], self.history, self.rounds)


def _subspace_solve(work: Tensor, units: _Units, basis: Tensor, fit_bias: bool, rounds: int,
                    newton_steps: int, relax: float, tol: float, reference: Tensor
                    ) -> _Subspace:
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
    return _Subspace(basis, proj, tau, gam, loss, history, done)


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
    where the spectral start can sit in the wrong basin; on wide layers many
    units pin the subspace and extra starts cost more than they can gain.

    ``weight`` is ``(m, n)`` or grouped ``(G, m, n)``. Never returns a higher
    objective than the spectral solution (then it returns that).
    """
    w, b = _as_groups(weight, bias)
    work = w.detach() if w.dtype == torch.float64 else w.detach().float()
    g, m, n = work.shape
    check_int("rank", rank, 1, min(m, n))
    check_int("rounds", rounds, 0)
    check_int("newton_steps", newton_steps, 0)
    restarts = (min(m + 1, 4096 // (m * n)) if restarts is None
                else check_int("restarts", restarts, 0))
    fb = bool(fit_bias)
    a, sv, bh = truncated_svd(work, rank, svd_method)
    basis = bh.transpose(-2, -1)                              # (G, n, r), orthonormal
    units = _Units.of(work, b)
    energy = float(relu_second_moment(units.b, units.s * units.live).sum())
    spec_rho = units.rho(a * sv.unsqueeze(-2))
    spec_loss = units.loss(spec_rho, spec_rho, units.beta)
    spectral_error = float(spec_loss.sum())

    if restarts > 0:
        starts = torch.cat([basis.unsqueeze(1), _extra_starts(work, units, basis, restarts)], 1)
        k = starts.shape[1]
        out = _subspace_solve(work.repeat_interleave(k, 0), units.repeat(k),
                              starts.flatten(0, 1), fb, rounds, newton_steps, relax, tol,
                              spec_loss.repeat_interleave(k, 0))
        history = [h.reshape(g, k).amin(-1) for h in out.history]
        sol = out.select(out.loss.reshape(g, k).argmin(-1) + k * torch.arange(g))
    else:
        sol = _subspace_solve(work, units, basis, fb, rounds, newton_steps, relax, tol,
                              spec_loss)
        history = sol.history
    proj, tau, gam, loss = sol.proj, sol.tau, sol.gam, sol.loss
    basis, done = sol.basis, sol.rounds
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
    scales = [rms(uu), rms(vv)]
    if fit:
        params.append(c.requires_grad_())
        scales.append(row_rms)
    opt, sched = relative_adam(params, scales, lr, steps)
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
