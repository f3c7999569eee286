"""The function-approximation gap between spectral and nonlinear initialization
[LR-NL], as the rank falls and the input dimension grows.

A Kaiming-normal ReLU layer (fan_in, ReLU gain; zero bias, as Kaiming init
leaves it) of input dimension ``d`` and width ``m = d^1.5`` (super-linear in
``d``, the regime of [LR-NL]'s gap theorem) is factorized at rank ``r`` by
spectral init [FNL] and by function matching (the Gaussian-mode solver, with
and without bias fitting). Reported: the relative function error
``E|relu(Wx + b) - relu(UVx + c)|^2 / E|relu(Wx + b)|^2`` for ``x ~ N(0, I)``
from the exact closed form, checked by Monte Carlo at the lowest ranks.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.init import solve_gaussian
from compactnn.init.gaussian import relative_relu_error
from compactnn.init.spectral import balanced_factors

METHODS = [("spectral", "spectral"), ("nonlinear", "nonlinear, no bias fit"),
           ("unit-fit", "bias fit, spectral subspace"),
           ("nonlinear+bias", "nonlinear, bias fit")]
PLOTTED = ("spectral", "nonlinear", "nonlinear+bias")


def _layer(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    m = round(d ** 1.5)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, d, generator=g) * math.sqrt(2.0 / d)
    return w, torch.zeros(m)


def _factorize(w: torch.Tensor, b: torch.Tensor, r: int, method: str):
    if method == "spectral":
        u, v = balanced_factors(w, r)
        return u, v, b
    if method == "unit-fit":  # per-unit scale and bias only, on the spectral row space
        sol = solve_gaussian(w, r, b, fit_bias=True, rounds=0, restarts=0)
    else:
        sol = solve_gaussian(w, r, b, fit_bias=method == "nonlinear+bias")
    return sol.u[0], sol.v[0], sol.bias[0]


def _monte_carlo(w, b, u, v, c, samples: int, seed: int) -> tuple[float, float]:
    """Relative error by sampling ``x ~ N(0, I)``: estimate and standard error
    (delta method on the ratio of means)."""
    g = torch.Generator().manual_seed(seed)
    num, den = [], []
    for start in range(0, samples, 4096):
        x = torch.randn(min(4096, samples - start), w.shape[1], generator=g)
        y = torch.relu(x @ w.T + b)
        yh = torch.relu((x @ v.T) @ u.T + c)
        num.append((y - yh).square().sum(-1).double())
        den.append(y.square().sum(-1).double())
    nu, de = torch.cat(num), torch.cat(den)
    ratio = float(nu.mean() / de.mean())
    resid = nu - ratio * de
    return ratio, float(resid.std() / de.mean() / math.sqrt(nu.numel()))


@register("function_gap",
          "Function error of spectral vs nonlinear init vs rank and input dimension [LR-NL]")
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small solves: one thread is fastest and robust to a busy machine
    try:
        return _run(out_dir, quick, seed)
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    dims = [16, 64, 144] if quick else [16, 64, 256]
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    samples = 20_000 if quick else 100_000
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []  # seed, d, m, rank, method, closed-form error, MC error, MC stderr
    for s in seeds:
        for d in dims:
            w, b = _layer(d, s * 1000 + d)
            ranks = [r for r in (1, 2, 4, 8, 16, 32, 64, 128) if r <= d // 2]
            for r in ranks:
                for method, _ in METHODS:
                    u, v, c = _factorize(w, b, r, method)
                    err = relative_relu_error(w, u, v, b, c)
                    mc = (float("nan"), float("nan"))
                    if s == seeds[0] and r in ranks[:2]:
                        mc = _monte_carlo(w, b, u, v, c, samples, s + r)
                    rows.append((s, d, w.shape[0], r, method, err, *mc))
    header = ["seed", "d", "m", "rank", "method", "relative_error", "mc_relative_error",
              "mc_stderr"]
    csv_path = write_csv(out_dir / "function_gap.csv", header, rows)

    def errs(d: int, r: int, method: str) -> list[float]:
        return [row[5] for row in rows if row[1] == d and row[3] == r and row[4] == method]

    table, ratios = [], {}
    for d in dims:
        m = round(d ** 1.5)
        for r in sorted({row[3] for row in rows if row[1] == d}):
            mean = {meth: statistics.fmean(errs(d, r, meth)) for meth, _ in METHODS}
            ratios[(d, r)] = (mean["nonlinear"] / mean["spectral"],
                              mean["nonlinear+bias"] / mean["spectral"],
                              mean["unit-fit"] / mean["spectral"])
            table.append([d, m, r, *(mean_std(errs(d, r, meth), "{:.4f}") for meth, _ in METHODS),
                          f"{ratios[(d, r)][0]:.3f}", f"{ratios[(d, r)][1]:.3f}"])

    checked = [row for row in rows if not math.isnan(row[6])]
    worst = max(checked, key=lambda row: abs(row[6] - row[5]) / row[7])
    mc_line = (f"Monte Carlo check ({samples:,} samples, {len(checked)} configurations at the "
               f"two lowest ranks): the largest deviation from the closed form is "
               f"{abs(worst[6] - worst[5]):.2e} ({abs(worst[6] - worst[5]) / worst[7]:.1f} "
               f"standard errors, d={worst[1]}, r={worst[3]}, {worst[4]}).")

    fig, ax = new_figure(figsize=(7.0, 4.6))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    styles = {"spectral": ":", "nonlinear": "--", "nonlinear+bias": "-"}
    for color, d in zip(colors, dims, strict=False):
        rs = sorted({row[3] for row in rows if row[1] == d})
        for meth, label in [x for x in METHODS if x[0] in PLOTTED]:
            ax.plot(rs, [statistics.fmean(errs(d, r, meth)) for r in rs], ls=styles[meth],
                    marker="o", ms=3, color=color, label=f"{label}, d={d}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel("relative function error")
    ax.set_title("Kaiming ReLU layer d -> d^1.5, x ~ N(0, I)")
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    png = out_dir / "function_gap.png"
    fig.savefig(png, dpi=120)

    md = (
        f"Kaiming-normal ReLU layers with input dimension d and width m = d^1.5, zero bias, "
        f"x ~ N(0, I); relative function error from the exact closed form, mean over seeds "
        f"{seeds}. Ratios are nonlinear / spectral (lower is better).\n\n"
        + markdown_table(["d", "m", "rank", *(label for _, label in METHODS),
                          "ratio (no bias fit)", "ratio (bias fit)"], table)
        + "\n\n" + mc_line + "\n\n" + _findings(ratios, dims)
        + f"\n\n![function_gap]({png.name})\n"
    )
    return ExperimentResult("function_gap", md, [csv_path, png])


def _findings(ratios: dict[tuple[int, int], tuple[float, float, float]],
              dims: list[int]) -> str:
    """Where the gap is large and where it is small, read off the measured ratios."""
    lines = []
    nb = {k: v[0] for k, v in ratios.items()}
    wb = {k: v[1] for k, v in ratios.items()}
    best_nb = min(nb, key=nb.__getitem__)
    small_nb = sorted(k for k, v in nb.items() if v > 0.99)
    close = ""
    if small_nb:
        lowest = min(r / d for d, r in small_nb)
        close = f" (every one at r >= {lowest:g} d)"
    lines.append(
        f"- Without bias fitting the gap is modest: the best ratio is {nb[best_nb]:.3f} "
        f"(d={best_nb[0]}, r={best_nb[1]}), and it fades as the rank grows: within 1% of "
        f"spectral at {len(small_nb)} of {len(nb)} settings{close}.")
    r1 = [(d, nb[(d, 1)]) for d in dims if (d, 1) in nb]
    if len(r1) > 1:
        trend = "grows" if r1[-1][1] < r1[0][1] else "does not grow"
        lines.append(
            f"- At rank 1 the no-bias gap {trend} with the input dimension: ratio "
            + ", ".join(f"{x:.3f} (d={d})" for d, x in r1) + ".")
    lo, hi = min(wb.values()), max(wb.values())
    shares = [(1 - v[2]) / (1 - v[1]) for v in ratios.values() if v[1] < 1]
    small_wb = sorted(k for k, v in wb.items() if v > 0.9)
    lines.append(
        f"- With bias fitting the error is {lo:.2f}-{hi:.2f}x spectral's, lowest at rank 1 and "
        "the largest d; the gap shrinks as r grows toward d"
        + (f" (above 0.9x at {len(small_wb)} settings, e.g. d={small_wb[0][0]}, "
           f"r={small_wb[0][1]})" if small_wb else "")
        + ". Per-unit scale and bias on the spectral row space alone already give "
        f"{min(shares):.0%}-{max(shares):.0%} of that reduction: the gain comes from the bias "
        "(matching each unit's mean output, which the zero-mean low-rank part cannot carry) "
        "and the scale, hardly from moving the subspace.")
    return "\n".join(lines)
