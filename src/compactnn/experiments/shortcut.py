"""Shortcut connections [Liu et al., NeurIPS 2019]: gradient descent on the population
loss of a one-hidden-layer non-overlapping convolutional network against a teacher of
the same form, with and without the identity shortcut
(:mod:`compactnn.models.shortcut`), from many random initializations.

Arms (each ``inits`` initializations, ``a`` uniform in the ball of radius ``|a*|``):
plain (``w`` uniform on the unit sphere: the setting where a spurious local minimum
attracts gradient descent with constant probability), shortcut with ``w = 0`` (the
paper's initialization) and shortcut with the plain arm's ``w`` (separates the shortcut
from the initialization). The step size of ``w`` has two phases: small for the first
``phase1`` steps, then larger; ``a`` keeps one step size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, new_figure, write_csv
from compactnn.experiments.stats import wilson_interval
from compactnn.models.shortcut import population_grad, population_loss

ARMS = ("plain", "shortcut, w0 = 0", "shortcut, w0 random")
OUTCOMES = ("global", "spurious", "collapsing", "not converged")


@dataclass(frozen=True)
class Setting:
    patch_dim: int
    patches: int
    teachers: tuple[str, ...]  # "ones", "alternating", "gaussian"
    inits: int
    phase1: int
    phase2: int
    eta_w: tuple[float, float]  # phase I, phase II (divided by the arm's curvature scale)
    eta_a: float
    tol: float = 1e-4  # distance to the teacher that counts as the global minimum
    plateau: float = 1e-3  # relative loss decrease over the second half: stuck below it
    tracked: int = 12  # trajectories drawn per arm


QUICK = Setting(8, 8, ("gaussian",), 200, 300, 4000, (0.01, 0.05), 0.05)
FULL = Setting(8, 8, ("ones", "alternating", "gaussian"), 200, 2000, 40000, (0.01, 0.05),
               0.05)


def _teacher(kind: str, k: int, p: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    w_star = torch.zeros(p, dtype=torch.float64)
    w_star[0] = 1.0
    if kind == "ones":
        a_star = torch.ones(k, dtype=torch.float64)
    elif kind == "alternating":
        a_star = torch.tensor([1.0, -1.0] * (k // 2) + [1.0] * (k % 2), dtype=torch.float64)
        a_star = a_star + 0.3
    else:
        a_star = torch.randn(k, generator=g, dtype=torch.float64)
    return w_star, a_star


def _ball(n: int, d: int, radius: float, g: torch.Generator) -> Tensor:
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    return x * radius * torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1.0 / d)


def _distance(w: Tensor, a: Tensor, w_star: Tensor, a_star: Tensor, shortcut: bool) -> Tensor:
    """Parameter distance to the teacher; without the shortcut ``(c w, a / c)`` is the
    same function for every ``c > 0``, so there the distance is of ``(w/|w|, a|w|)``."""
    if not shortcut:
        nw = w.norm(dim=1, keepdim=True)
        w, a = w / nw.clamp_min(1e-300), a * nw
    return torch.cat([w - w_star, a - a_star], 1).norm(dim=1)


def run_arm(s: Setting, arm: str, w_star: Tensor, a_star: Tensor, w0: Tensor, a0: Tensor):
    """Gradient descent from every initialization; returns per-init outcomes, final
    distances and the tracked trajectories ``(steps, w.w*, a.a*/|a*|^2)``."""
    shortcut = arm != "plain"
    curvature = 1.0 + s.patches if shortcut else 1.0  # the linear path adds k to w's curvature
    w = torch.zeros_like(w0) if arm == "shortcut, w0 = 0" else w0.clone()
    a = a0.clone()
    total = s.phase1 + s.phase2
    marks = sorted({0, *(int(round(x)) for x in torch.logspace(0, math.log10(total), 60).tolist())})
    steps, ww, aa = [], [], []
    half = None
    for t in range(total + 1):
        if t == total // 2:
            half = population_loss(w, a, w_star, a_star, shortcut)
        if t in marks:
            steps.append(t)
            ww.append((w[: s.tracked] @ w_star).tolist())
            aa.append(((a[: s.tracked] @ a_star) / a_star.dot(a_star)).tolist())
        if t == total:
            break
        gw, ga = population_grad(w, a, w_star, a_star, shortcut)
        eta = s.eta_w[0] if t < s.phase1 else s.eta_w[1]
        w = w - eta / curvature * gw
        a = a - s.eta_a * ga
    loss = population_loss(w, a, w_star, a_star, shortcut)
    stalled = (half - loss <= s.plateau * half).tolist()
    dist = _distance(w, a, w_star, a_star, shortcut)
    outcome = []
    for d, st, nw in zip(dist.tolist(), stalled, w.norm(dim=1).tolist(), strict=True):
        if math.isfinite(d) and d < s.tol:
            outcome.append("global")
        elif st:  # the plain net's w = 0 is a fixed point too (ReLU derivative 0 there)
            outcome.append("collapsing" if nw < 1e-2 else "spurious")
        else:
            outcome.append("not converged")
    return outcome, dist.tolist(), loss.tolist(), (steps, ww, aa)


@register("shortcut", "Shortcut connections: GD on a one-hidden-layer conv net with and "
          "without the identity shortcut (teacher-student, Gaussian inputs)")
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    torch.set_num_threads(1)
    s = QUICK if quick else FULL
    rows, counts, trajectories = [], {}, {}
    for teacher in s.teachers:
        g = torch.Generator().manual_seed(seed)
        w_star, a_star = _teacher(teacher, s.patches, s.patch_dim, g)
        a0 = _ball(s.inits, s.patches, float(a_star.norm()), g)
        w0 = torch.randn(s.inits, s.patch_dim, generator=g, dtype=torch.float64)
        w0 = w0 / w0.norm(dim=1, keepdim=True)
        for arm in ARMS:
            outcome, dist, loss, traj = run_arm(s, arm, w_star, a_star, w0, a0)
            counts[(teacher, arm)] = {o: outcome.count(o) for o in OUTCOMES}
            trajectories[(teacher, arm)] = traj
            rows += [[teacher, arm, i, o, d, lo] for i, (o, d, lo)
                     in enumerate(zip(outcome, dist, loss, strict=True))]
    return summarize(out_dir, s, rows, counts, trajectories)


def _frac(x: int, n: int) -> str:
    lo, hi = wilson_interval(x, n)
    return f"{x / n:.3f} [{lo:.3f}, {hi:.3f}]"


def summarize(out_dir: Path, s: Setting, rows, counts, trajectories) -> ExperimentResult:
    csv_path = write_csv(out_dir / "shortcut.csv",
                         ["teacher", "arm", "init", "outcome", "distance", "loss"], rows)
    table = [[t, arm, s.inits, *(_frac(c[o], s.inits) for o in OUTCOMES)]
             for (t, arm), c in counts.items()]
    held = []
    for t in s.teachers:
        plain, res = counts[(t, "plain")], counts[(t, "shortcut, w0 = 0")]
        res_lo = wilson_interval(res["global"], s.inits)[0]
        plain_hi = wilson_interval(plain["global"], s.inits)[1]
        stuck_lo = wilson_interval(plain["spurious"] + plain["collapsing"], s.inits)[0]
        held.append(res_lo > plain_hi and stuck_lo > 0)
    verdict = ("held on every teacher" if all(held) else
               f"held on {sum(held)} of {len(held)} teachers")

    teacher = s.teachers[-1]
    fig, axes = new_figure(ncols=2, figsize=(11, 3.8), squeeze=False)
    for ax, arm in zip(axes[0], ("shortcut, w0 = 0", "plain"), strict=True):
        steps, ww, aa = trajectories[(teacher, arm)]
        x = [max(t, 0.5) for t in steps]
        for i in range(len(ww[0])):
            ax.plot(x, [r[i] for r in ww], color="C0", lw=0.8, alpha=0.7,
                    label="w . w*" if i == 0 else None)
            ax.plot(x, [r[i] for r in aa], color="C1", lw=0.8, alpha=0.7,
                    label="a . a* / |a*|^2" if i == 0 else None)
        ax.axvline(s.phase1, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("gradient step (dotted: end of phase I)")
        ax.set_title(f"{arm} ({teacher} teacher, {len(ww[0])} inits)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "shortcut_phases.png"
    fig.savefig(png, dpi=120)

    md = (
        f"Population gradient descent (closed-form loss, Gaussian patches), p = {s.patch_dim}, "
        f"k = {s.patches} patches, |w*| = 1; {s.inits} initializations per arm and teacher, "
        f"a uniform in the ball of radius |a*|. Steps: w {s.eta_w[0]} for {s.phase1} steps, "
        f"then {s.eta_w[1]} for {s.phase2} (divided by 1 + k with the shortcut), a "
        f"{s.eta_a}. Global: parameter distance to the teacher < {s.tol} (without the "
        "shortcut, of (w/|w|, a|w|)); otherwise stuck when the loss fell by less than "
        f"{s.plateau:g} of itself over the second half of the run: spurious (|w| >= 0.01) or "
        "collapsing (w -> 0, a fixed point of the plain net); else not converged. Fractions "
        "with 95% Wilson intervals.\n\n"
        + markdown_table(["teacher", "arm", "inits", *OUTCOMES], table)
        + f"\n\nClaim (shortcut from w = 0 reaches the global minimum, plain gets stuck with "
        f"constant probability): {verdict}.\n\n![shortcut_phases]({png.name})\n"
    )
    return ExperimentResult("shortcut", md, [csv_path, png])
