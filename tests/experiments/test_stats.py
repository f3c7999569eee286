"""Paired statistics: Holm against a hand-computed case, tests and intervals against
scipy and against their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from compactnn.experiments.stats import (
    bootstrap_ci,
    compare_to_reference,
    comparison_markdown,
    dz_interval,
    holm,
    paired_comparison,
    table_row,
)


def test_holm_hand_computed():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 ->
    # raised to the running max 0.06)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; a NaN is not a test and does not enlarge the family
    adj = holm([0.5, float("nan"), 0.2])
    assert adj[0] == pytest.approx(0.5) and adj[2] == pytest.approx(0.4)
    assert math.isnan(adj[1])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_properties(p):
    adj = np.asarray(holm(p))
    p = np.asarray(p)
    assert (adj >= p - 1e-15).all() and (adj <= 1).all()
    assert (adj <= np.minimum(1, len(p) * p) + 1e-15).all()  # never worse than Bonferroni
    order = np.argsort(p, kind="stable")
    assert (np.diff(adj[order]) >= -1e-15).all()  # monotone in the raw p-values


@pytest.mark.parametrize("bad, err", [([0.1, 1.2], ValueError), ([-0.1], ValueError),
                                      ([[0.1, 0.2]], TypeError), (["0.1"], TypeError)])
def test_holm_rejects_non_p_values(bad, err):
    with pytest.raises(err):
        holm(bad)


A = [0.61, 0.58, 0.66, 0.70, 0.59, 0.64, 0.62, 0.67, 0.60, 0.65]
B = [0.59, 0.57, 0.62, 0.69, 0.60, 0.61, 0.60, 0.66, 0.57, 0.62]


def test_paired_comparison_matches_scipy_and_definitions():
    c = paired_comparison(A, B, lower_is_better=False, n_boot=4000, seed=1)
    d = np.subtract(A, B)
    ref = sps.ttest_rel(A, B)
    assert c.p_t == pytest.approx(ref.pvalue, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert c.ci_t == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert c.p_wilcoxon == pytest.approx(sps.wilcoxon(d).pvalue)
    assert c.mean_diff == pytest.approx(d.mean())
    assert c.dz == pytest.approx(d.mean() / d.std(ddof=1))
    assert c.wins == int((d > 0).sum()) and c.n == 10
    lo, hi = c.dz_ci
    assert lo < c.dz < hi
    # the bounds are where the observed t is the 97.5% / 2.5% quantile
    t_obs = c.dz * math.sqrt(10)
    assert sps.nct.cdf(t_obs, 9, lo * math.sqrt(10)) == pytest.approx(0.975, abs=1e-7)
    assert sps.nct.cdf(t_obs, 9, hi * math.sqrt(10)) == pytest.approx(0.025, abs=1e-7)
    assert c.ci_boot[0] < c.mean_diff < c.ci_boot[1]
    assert c.dz_ci_boot[0] < c.dz < c.dz_ci_boot[1]


def test_dz_interval_at_zero_is_symmetric_and_shrinks_with_n():
    lo, hi = dz_interval(0.0, 10)
    assert lo == pytest.approx(-hi, abs=1e-8) and hi > 0
    lo50, hi50 = dz_interval(0.0, 50)
    assert hi50 < hi


def test_bootstrap_is_seeded_and_centred():
    d = np.random.default_rng(0).normal(1.0, 0.5, size=30)
    a, b = bootstrap_ci(d, seed=3), bootstrap_ci(d, seed=3)
    assert a == b
    assert a["mean"][0] < d.mean() < a["mean"][1]
    assert bootstrap_ci(d, seed=4) != a


def test_degenerate_differences():
    c = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert c.p_t == 1.0 and c.p_wilcoxon == 1.0 and c.dz == 0.0 and c.wins is None
    c = paired_comparison([2.0, 3.0], [1.0, 2.0], lower_is_better=True)
    assert math.isnan(c.p_t) and c.dz == math.inf and c.wins == 0
    one = paired_comparison([1.0], [0.5])
    assert math.isnan(one.p_t) and math.isnan(one.ci_t[0])


@pytest.mark.parametrize("a, b", [([1.0, 2.0], [1.0]), ([], []), ([1.0, float("nan")],
                                                                 [1.0, 2.0])])
def test_bad_pairs_are_refused(a, b):
    with pytest.raises(ValueError):
        paired_comparison(a, b)


def test_compare_to_reference_holm_corrects_across_the_table():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, 10)
    vals = {"ref": ref, "x": ref + 0.5 + rng.normal(0, 0.2, 10),
            "y": ref + rng.normal(0, 0.2, 10), "z": ref - 0.1 + rng.normal(0, 0.2, 10)}
    out = compare_to_reference(vals, "ref", lower_is_better=True)
    assert list(out) == ["x", "y", "z"]
    assert [out[m]["p_holm"] for m in out] == pytest.approx(holm([out[m]["p"] for m in out]))
    assert out["x"]["mean_diff"] < 0 and out["x"]["wins"] == 10
    w = compare_to_reference(vals, "ref", lower_is_better=True, test="wilcoxon")
    assert w["x"]["p"] == pytest.approx(out["x"]["p_wilcoxon"])
    with pytest.raises(ValueError, match="reference"):
        compare_to_reference(vals, "nope", lower_is_better=True)
    row = table_row(out["x"])
    assert row[0] == f"{out['x']['mean_diff']:+.4f}" and row[-1] == "10/10"
    md = comparison_markdown(vals, "ref", lower_is_better=True, labels={"ref": "R"})
    assert md.splitlines()[2].startswith("| R | 10 |") and "| ref |" in md.splitlines()[2]
    assert len(md.splitlines()) == 6


def test_dz_interval_for_huge_effects_falls_back_to_the_normal_approximation():
    # scipy's noncentral t cdf fails far in the tail; the interval must still be finite
    # and contain the estimate
    for dz, n in [(40.0, 2), (8.0, 3), (25.0, 5)]:
        lo, hi = dz_interval(dz, n)
        assert np.isfinite(lo) and np.isfinite(hi) and lo < dz < hi
