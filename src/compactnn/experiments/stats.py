"""Paired comparisons across seeds, with effect sizes, confidence intervals and Holm's
correction for the several comparisons of one table.

Two methods run with the same seeds give paired scores ``a_i, b_i``; everything here is
about the differences ``d_i = a_i - b_i``:

- **tests**: the paired t-test (``d`` has mean 0) and the Wilcoxon signed-rank test (``d``
  is symmetric about 0; exact for small samples without ties, zero differences dropped),
  both two-sided;
- **effect sizes**: the mean difference ``mean(d)`` and Cohen's ``d_z = mean(d) / sd(d)``
  (``sd`` with ``n - 1``), the standardized effect of a paired design;
- **95% intervals**: for ``mean(d)`` the t interval ``mean(d) +- t_{n-1} sd / sqrt(n)``;
  for ``d_z`` the exact interval from the noncentral t distribution (``sqrt(n) d_z``
  follows a noncentral t with ``n - 1`` degrees of freedom and noncentrality
  ``sqrt(n) delta``; the bounds are the noncentralities at which the observed value is
  the upper / lower 2.5% quantile); and for both a percentile bootstrap over the pairs;
- **Holm's step-down correction** (:func:`holm`): with ``m`` p-values sorted increasing,
  the ``j``-th (1-based) becomes ``max_{i <= j} min(1, (m - i + 1) p_(i))``. It controls
  the family-wise error rate at the nominal level under any dependence between the tests
  and is never less powerful than Bonferroni.

:func:`compare_to_reference` compares one reference method with each other method of a
table and Holm-corrects the p-values across those comparisons; :func:`table_row` and
:func:`comparison_markdown` format the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from compactnn._checks import check_choice, check_float, check_int

__all__ = ["PairedComparison", "bootstrap_ci", "compare_to_reference", "comparison_markdown",
           "dz_interval", "holm", "paired_comparison", "paired_difference", "table_row",
           "wilcoxon_p", "wilson_interval"]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order. NaN entries (comparisons that could not
    be tested) stay NaN and are not counted in the family size."""
    for x in pvalues:
        if isinstance(x, bool) or not isinstance(x, int | float | np.floating):
            raise TypeError(f"pvalues must be numbers, got {x!r}")
    p = np.asarray([float(x) for x in pvalues], dtype=np.float64)
    ok = ~np.isnan(p)
    if bool(((p[ok] < 0) | (p[ok] > 1)).any()):
        raise ValueError(f"pvalues must be in [0, 1], got {p[ok].tolist()}")
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(ok)
    m = len(idx)
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        out[i] = running
    return out.tolist()


def _pairs(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"a and b must be 1-D of the same length, got shapes {x.shape} and "
                         f"{y.shape}")
    if len(x) < 1:
        raise ValueError("a and b are empty: need at least one pair")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a and b must be finite (a diverged run has no score to pair)")
    return x - y


def wilcoxon_p(d: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the differences ``d`` (1.0 when every
    difference is zero, NaN with fewer than 2 pairs)."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def dz_interval(dz: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact confidence interval of Cohen's ``d_z`` from the noncentral t distribution."""
    from scipy.optimize import brentq
    from scipy.stats import nct

    if n < 2 or not math.isfinite(dz):
        return (math.nan, math.nan)
    df, t_obs, alpha = n - 1, dz * math.sqrt(n), 1.0 - level

    def bound(target: float) -> float:
        f = lambda nc: float(nct.cdf(t_obs, df, nc)) - target  # noqa: E731 (decreasing in nc)
        lo, hi = t_obs - 10.0, t_obs + 10.0
        for _ in range(60):
            if not f(lo) < 0:
                break
            lo -= 10.0 + abs(lo)
        for _ in range(60):
            if not f(hi) > 0:
                break
            hi += 10.0 + abs(hi)
        return brentq(f, lo, hi, xtol=1e-10)

    try:
        with np.errstate(all="ignore"):
            lo, hi = bound(1 - alpha / 2), bound(alpha / 2)
        if math.isfinite(lo) and math.isfinite(hi):
            return (lo / math.sqrt(n), hi / math.sqrt(n))
    except (ValueError, RuntimeError):
        pass
    # scipy's noncentral t loses accuracy for very large effects; there the large-sample
    # normal approximation sd(d_z) ~ sqrt(1/n + d_z^2 / (2n)) is accurate
    from scipy.stats import norm

    half = float(norm.ppf(1 - alpha / 2)) * math.sqrt(1.0 / n + dz * dz / (2.0 * n))
    return (dz - half, dz + half)


def bootstrap_ci(d: Sequence[float], level: float = 0.95, n_boot: int = 10_000,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of ``mean(d)`` and ``d_z`` (resampling the pairs).
    Resamples whose differences are all equal have no ``d_z`` and are skipped for it."""
    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2:
        return {"mean": (math.nan, math.nan), "dz": (math.nan, math.nan)}
    rng = np.random.default_rng(seed)
    samples = d[rng.integers(0, len(d), size=(n_boot, len(d)))]
    means = samples.mean(1)
    sds = samples.std(1, ddof=1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo, hi = np.percentile(means, q)
    ok = sds > 0
    dz = (means[ok] / sds[ok]) if ok.any() else np.array([math.nan])
    dlo, dhi = np.percentile(dz, q) if ok.any() else (math.nan, math.nan)
    return {"mean": (float(lo), float(hi)), "dz": (float(dlo), float(dhi))}


@dataclass(frozen=True)
class PairedComparison:
    """Paired statistics of ``a - b`` over seeds (see the module docstring)."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float
    ci_t: tuple[float, float]
    ci_boot: tuple[float, float]
    dz: float
    dz_ci: tuple[float, float]  # noncentral t
    dz_ci_boot: tuple[float, float]
    p_t: float
    p_wilcoxon: float
    wins: int | None  # pairs where a is better (None without a direction)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_comparison(a: Sequence[float], b: Sequence[float], *, level: float = 0.95,
                      lower_is_better: bool | None = None, n_boot: int = 10_000,
                      seed: int = 0) -> PairedComparison:
    """Tests, effect sizes and intervals of the paired differences ``a - b``."""
    from scipy.stats import t as t_dist

    d = _pairs(a, b)
    check_float("level", level, 0.0, 1.0, min_inclusive=False, max_inclusive=False)
    check_int("n_boot", n_boot, 1)
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        half = float(t_dist.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
        ci_t = (mean - half, mean + half)
        dz = mean / sd
        p_t = float(2 * t_dist.sf(abs(mean / (sd / math.sqrt(n))), n - 1))
    elif n > 1:  # every difference equal: no spread to test against
        ci_t, dz = (mean, mean), (0.0 if mean == 0 else math.copysign(math.inf, mean))
        p_t = 1.0 if mean == 0 else math.nan
    else:
        ci_t, dz, p_t = (math.nan, math.nan), math.nan, math.nan
    boot = bootstrap_ci(d, level, n_boot, seed)
    wins = None
    if lower_is_better is not None:
        wins = int((d < 0).sum()) if lower_is_better else int((d > 0).sum())
    return PairedComparison(n, float(np.mean(a)), float(np.mean(b)), mean, sd, ci_t,
                            boot["mean"], dz, dz_interval(dz, n, level), boot["dz"], p_t,
                            wilcoxon_p(d), wins)


def compare_to_reference(values: Mapping[str, Sequence[float]], reference: str, *,
                         lower_is_better: bool, test: str = "t", level: float = 0.95,
                         n_boot: int = 10_000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """``reference - other`` for every other method of ``values`` (scores in seed order),
    with the chosen test's p-values Holm-corrected across those comparisons:
    ``{other: {**PairedComparison.as_dict(), "p": raw, "p_holm": adjusted}}``."""
    check_choice("test", test, ("t", "wilcoxon"))
    if reference not in values:
        raise ValueError(f"reference {reference!r} is not one of {list(values)}")
    others = [m for m in values if m != reference]
    comps = {m: paired_comparison(values[reference], values[m], level=level,
                                  lower_is_better=lower_is_better, n_boot=n_boot, seed=seed)
             for m in others}
    raw = [comps[m].p_t if test == "t" else comps[m].p_wilcoxon for m in others]
    adj = holm(raw)
    return {m: {**comps[m].as_dict(), "p": p, "p_holm": q}
            for m, p, q in zip(others, raw, adj, strict=True)}


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<1e-4" if p < 1e-4 else f"{p:.3g}")


def _ci(ci: tuple[float, float], fmt: str) -> str:
    return "n/a" if any(math.isnan(c) for c in ci) else (
        f"[{fmt.format(ci[0])}, {fmt.format(ci[1])}]")


TABLE_HEADER = ["ref - other", "95% CI (t)", "95% CI (bootstrap)", "d_z [95% CI]",
                "p (t)", "p (Holm)", "p (Wilcoxon)", "wins"]


def table_row(comparison: Mapping[str, Any], fmt: str = "{:+.4f}") -> list[str]:
    """The cells of :data:`TABLE_HEADER` for one entry of :func:`compare_to_reference`."""
    c = comparison
    dz = c["dz"]
    dz_txt = ("n/a" if math.isnan(dz) else f"{dz:+.2f}") + (
        f" {_ci(c['dz_ci'], '{:+.2f}')}" if not math.isnan(dz) else "")
    wins = "-" if c.get("wins") is None else f"{c['wins']}/{c['n']}"
    return [fmt.format(c["mean_diff"]), _ci(c["ci_t"], fmt), _ci(c["ci_boot"], fmt), dz_txt,
            _p(c["p_t"]), _p(c["p_holm"]), _p(c["p_wilcoxon"]), wins]


def comparison_markdown(values: Mapping[str, Sequence[float]], reference: str, *,
                        lower_is_better: bool, labels: Mapping[str, str] | None = None,
                        fmt: str = "{:.4f}", diff_fmt: str = "{:+.4f}",
                        test: str = "t", seed: int = 0) -> str:
    """A markdown table: each method's mean +- sd over seeds, then the paired comparison of
    the reference with it (Holm-corrected across the table's comparisons)."""
    from compactnn.experiments.reporting import markdown_table

    labels = dict(labels or {})
    comps = compare_to_reference(values, reference, lower_is_better=lower_is_better,
                                 test=test, seed=seed)
    rows = []
    for m, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        ms = fmt.format(v.mean()) + (f" +- {fmt.format(v.std(ddof=1))}" if len(v) > 1 else "")
        cells = table_row(comps[m], diff_fmt) if m in comps else ["ref"] + ["-"] * 7
        rows.append([labels.get(m, m), len(v), ms, *cells])
    return markdown_table(["method", "seeds", "mean +- sd", *TABLE_HEADER], rows)


def paired_difference(a: Sequence[float], b: Sequence[float]
                      ) -> tuple[float, float, float, float]:
    """``(mean(a - b), ci_low, ci_high, p)`` over paired samples: the 95% interval
    is ``mean +- t_{0.975, n-1} * sd / sqrt(n)`` and ``p`` the two-sided paired
    t-test. With fewer than 2 pairs the interval and ``p`` are NaN; with every
    difference equal the interval is that difference and ``p`` is 1 when it is
    0, else 0."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    if not diffs:
        raise ValueError("paired_difference needs at least one pair")
    mean = math.fsum(diffs) / len(diffs)
    n = len(diffs)
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(np.std(diffs, ddof=1))
    if sd == 0.0:
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    from scipy.stats import t

    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    stat = mean / (sd / math.sqrt(n))
    p = 2 * t.sf(abs(stat), n - 1)
    return mean, mean - half, mean + half, float(p)


def wilson_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion: the ``q`` solving
    ``(x/n - q)^2 = z^2 q (1 - q) / n`` with ``z`` the normal quantile of ``level``; unlike
    ``x/n +- z sqrt(x/n (1 - x/n) / n)`` it stays inside ``[0, 1]`` and is not empty
    at 0 or ``n`` successes."""
    from scipy.stats import norm

    check_int("trials", trials, 1)
    check_int("successes", successes, 0, trials)
    check_float("level", level, 0.0, 1.0, min_inclusive=False, max_inclusive=False)
    z = float(norm.ppf((1 + level) / 2))
    phat, n = successes / trials, trials
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 or n successes the bound is 0 or 1 exactly (rounding would leave ~1e-18)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == trials else min(1.0, centre + half)
    return (lo, hi)
