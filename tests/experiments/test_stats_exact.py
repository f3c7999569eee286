"""The interval formulas of ``stats`` against their closed forms, value for value:
the normal approximation of d_z's interval and the percentile bootstrap recomputed
with ``np.percentile`` on the very same resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as sps

from compactnn.experiments.stats import bootstrap_ci, dz_interval, paired_comparison


def _normal_interval(dz: float, n: int, level: float) -> tuple[float, float]:
    # sd(d_z) ~ sqrt(1/n + d_z^2 / (2n)) for large samples
    half = sps.norm.ppf(1 - (1 - level) / 2) * math.sqrt(1 / n + dz ** 2 / (2 * n))
    return dz - half, dz + half


class _FailingNct:
    """Stands in for scipy's noncentral t where its cdf cannot be evaluated."""

    @staticmethod
    def cdf(*args, **kwargs):
        raise ValueError("no convergence")


@pytest.mark.parametrize("dz, n, level", [(1.5, 8, 0.95), (0.3, 20, 0.95), (2.0, 5, 0.9),
                                          (-4.0, 12, 0.99)])
def test_normal_fallback_is_the_closed_form(monkeypatch, dz, n, level):
    monkeypatch.setattr(sps, "nct", _FailingNct)
    lo, hi = dz_interval(dz, n, level)
    want = _normal_interval(dz, n, level)
    assert lo == pytest.approx(want[0], rel=1e-12, abs=1e-12)
    assert hi == pytest.approx(want[1], rel=1e-12, abs=1e-12)


def test_exact_interval_inverts_the_noncentral_t():
    dz, n, level = 0.8, 7, 0.9
    lo, hi = dz_interval(dz, n, level)
    t_obs = dz * math.sqrt(n)
    assert sps.nct.cdf(t_obs, n - 1, lo * math.sqrt(n)) == pytest.approx(0.95, abs=1e-8)
    assert sps.nct.cdf(t_obs, n - 1, hi * math.sqrt(n)) == pytest.approx(0.05, abs=1e-8)


def _reference_bootstrap(d, level, n_boot, seed):
    d = np.asarray(d, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = d[rng.integers(0, len(d), size=(n_boot, len(d)))]
    means, sds = draws.mean(1), draws.std(1, ddof=1)
    q = [50 * (1 - level), 50 * (1 + level)]
    ok = sds > 0
    return np.percentile(means, q), np.percentile(means[ok] / sds[ok], q)


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_bootstrap_is_the_percentile_interval_of_the_same_draws(level):
    d = np.random.default_rng(5).normal(0.4, 1.0, size=9)
    got = bootstrap_ci(d, level=level, n_boot=3000, seed=11)
    mean_ref, dz_ref = _reference_bootstrap(d, level, 3000, 11)
    assert got["mean"] == (float(mean_ref[0]), float(mean_ref[1]))
    assert got["dz"] == (float(dz_ref[0]), float(dz_ref[1]))


def test_bootstrap_skips_constant_resamples_for_dz_only():
    d = [1.0, 1.0, 1.0, 3.0]  # many resamples draw four equal values
    got = bootstrap_ci(d, n_boot=500, seed=2)
    mean_ref, dz_ref = _reference_bootstrap(d, 0.95, 500, 2)
    assert got["mean"] == (float(mean_ref[0]), float(mean_ref[1]))
    assert got["dz"] == (float(dz_ref[0]), float(dz_ref[1]))


def test_paired_comparison_reports_these_intervals():
    a = [0.61, 0.58, 0.66, 0.70, 0.59, 0.64]
    b = [0.59, 0.57, 0.62, 0.69, 0.60, 0.61]
    c = paired_comparison(a, b, lower_is_better=False, n_boot=2000, seed=4)
    d = np.subtract(a, b)
    boot = bootstrap_ci(d, n_boot=2000, seed=4)
    assert c.ci_boot == boot["mean"] and c.dz_ci_boot == boot["dz"]
    assert c.dz_ci == dz_interval(d.mean() / d.std(ddof=1), 6)
