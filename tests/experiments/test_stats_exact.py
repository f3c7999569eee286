"""The interval formulas of ``stats`` against their closed forms, value for value:
the normal approximation of d_z's interval and the percentile bootstrap recomputed
with ``np.percentile`` on the very same resamples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as sps

from compactnn.experiments.stats import (
    bootstrap_ci,
    compare_to_reference,
    comparison_markdown,
    dz_interval,
    holm,
    paired_comparison,
    paired_difference,
    table_row,
    wilcoxon_p,
)


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


# --------------------------------------------------------------------------- edges


def test_wilcoxon_p_matches_scipy_including_two_pairs_and_equal_differences():
    for d in ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0], [0.5, -0.2, 0.3, 0.9, -0.1]):
        assert wilcoxon_p(d) == sps.wilcoxon(d).pvalue
    assert wilcoxon_p([0.0, 0.0, 0.0]) == 1.0 and math.isnan(wilcoxon_p([0.3]))


def test_dz_interval_is_undefined_without_two_pairs_or_a_finite_effect():
    for dz, n in [(0.5, 1), (math.nan, 5), (math.inf, 5), (-math.inf, 3)]:
        lo, hi = dz_interval(dz, n)
        assert math.isnan(lo) and math.isnan(hi)


@pytest.mark.parametrize("dz, n", [(6.0, 2), (-6.0, 2)])
def test_exact_interval_far_from_the_estimate_widens_its_bracket(dz, n):
    # with one degree of freedom a bound lies outside t_obs +- 10
    lo, hi = dz_interval(dz, n)
    t_obs = dz * math.sqrt(n)
    assert max(abs(lo), abs(hi)) * math.sqrt(n) > abs(t_obs) + 10
    assert sps.nct.cdf(t_obs, n - 1, lo * math.sqrt(n)) == pytest.approx(0.975, abs=1e-7)
    assert sps.nct.cdf(t_obs, n - 1, hi * math.sqrt(n)) == pytest.approx(0.025, abs=1e-7)


def test_bootstrap_edges_and_defaults():
    two = bootstrap_ci([0.1, 0.3], n_boot=200, seed=1)
    mean_ref, dz_ref = _reference_bootstrap([0.1, 0.3], 0.95, 200, 1)
    assert two == {"mean": tuple(map(float, mean_ref)), "dz": tuple(map(float, dz_ref))}
    flat = bootstrap_ci([1.0, 1.0, 1.0], n_boot=50)
    assert flat["mean"] == (1.0, 1.0) and all(math.isnan(x) for x in flat["dz"])
    assert all(math.isnan(x) for x in bootstrap_ci([2.0])["mean"])
    d = [0.3, -0.1, 0.4, 0.2]
    assert bootstrap_ci(d) == bootstrap_ci(d, 0.95, 10_000, 0)


A = [0.61, 0.58, 0.66, 0.70, 0.59]
B = [0.59, 0.58, 0.62, 0.71, 0.57]  # one tie, one loss


def test_paired_comparison_fields_wins_and_defaults():
    c = paired_comparison(A, B, lower_is_better=False)
    d = np.subtract(A, B)
    assert (c.mean_a, c.mean_b) == (float(np.mean(A)), float(np.mean(B)))
    assert c.sd_diff == float(d.std(ddof=1))
    assert c.wins == 3  # a tie is not a win
    assert paired_comparison(A, B, lower_is_better=True).wins == 1
    assert c == paired_comparison(A, B, lower_is_better=False, level=0.95, n_boot=10_000,
                                  seed=0)
    narrow = paired_comparison(A, B, level=0.8, n_boot=500, seed=3)
    assert narrow.dz_ci == dz_interval(narrow.dz, 5, 0.8)
    assert narrow.ci_boot == bootstrap_ci(d, 0.8, 500, 3)["mean"]
    two = paired_comparison([1.0, 2.0], [0.0, 0.5])
    assert two.sd_diff == float(np.std([1.0, 1.5], ddof=1))
    assert two.dz == 1.25 / two.sd_diff and not math.isnan(two.p_t)


@pytest.mark.parametrize("kwargs, match", [
    ({"level": 0.0}, "level"), ({"level": 1.0}, "level"), ({"level": 1.5}, "level"),
    ({"n_boot": 0}, "n_boot")])
def test_paired_comparison_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_comparison(A, B, **kwargs)
    assert paired_comparison(A, B, n_boot=1).n == 5


def test_argument_errors_name_the_problem():
    with pytest.raises(ValueError, match="same length"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_comparison([], [])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([1.0, math.inf], [1.0, 2.0])
    with pytest.raises(TypeError, match="pvalues must be numbers"):
        holm([0.1, "0.2"])
    with pytest.raises(ValueError, match=r"pvalues must be in \[0, 1\]"):
        holm([0.1, 1.5])
    with pytest.raises(ValueError, match="test"):
        compare_to_reference({"r": A, "x": B}, "r", lower_is_better=True, test="z")
    with pytest.raises(ValueError, match="at least one pair"):
        paired_difference([], [])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])


def test_holm_leaves_nan_out_of_the_family():
    assert holm([0.01, math.nan, 0.04])[::2] == [0.02, 0.04]
    assert math.isnan(holm([0.01, math.nan, 0.04])[1])


def test_compare_to_reference_passes_its_options_on():
    vals = {"r": A, "x": B, "y": [0.6, 0.6, 0.6, 0.6, 0.6]}
    out = compare_to_reference(vals, "r", lower_is_better=True, level=0.8, n_boot=300, seed=5)
    for m in ("x", "y"):
        want = paired_comparison(A, vals[m], level=0.8, lower_is_better=True, n_boot=300,
                                 seed=5).as_dict()
        assert {k: out[m][k] for k in want} == want
        assert out[m]["p"] == want["p_t"]
    assert [out[m]["p_holm"] for m in ("x", "y")] == holm([out["x"]["p"], out["y"]["p"]])
    default = compare_to_reference(vals, "r", lower_is_better=True)
    explicit = compare_to_reference(vals, "r", lower_is_better=True, level=0.95, n_boot=10_000,
                                    seed=0)
    assert default["x"]["ci_boot"] == explicit["x"]["ci_boot"]


def test_table_row_formats_every_cell():
    c = {"mean_diff": 0.012345, "ci_t": (-0.001, 0.0256), "ci_boot": (0.0, 0.02),
         "dz": 0.5, "dz_ci": (-0.25, 1.25), "p_t": 0.0456, "p_holm": 0.00001,
         "p_wilcoxon": math.nan, "wins": 3, "n": 5}
    assert table_row(c) == ["+0.0123", "[-0.0010, +0.0256]", "[+0.0000, +0.0200]",
                            "+0.50 [-0.25, +1.25]", "0.0456", "<1e-4", "n/a", "3/5"]
    c.update(dz=math.nan, ci_boot=(math.nan, math.nan), wins=None, p_t=1e-4, p_holm=0.5)
    assert table_row(c, "{:.2f}") == ["0.01", "[-0.00, 0.03]", "n/a", "n/a", "0.0001", "0.5",
                                      "n/a", "-"]


def test_comparison_markdown_is_the_table_of_these_numbers():
    vals = {"r": A, "x": B}
    md = comparison_markdown(vals, "r", lower_is_better=False, labels={"x": "X"},
                             fmt="{:.3f}", diff_fmt="{:+.3f}", test="wilcoxon", seed=4)
    comps = compare_to_reference(vals, "r", lower_is_better=False, test="wilcoxon", seed=4)
    sd = [float(np.std(v, ddof=1)) for v in (A, B)]
    header = ("| method | seeds | mean +- sd | ref - other | 95% CI (t) | 95% CI (bootstrap) "
              "| d_z [95% CI] | p (t) | p (Holm) | p (Wilcoxon) | wins |")
    ref_row = f"| r | 5 | {np.mean(A):.3f} +- {sd[0]:.3f} | ref" + " | -" * 7 + " |"
    x_row = (f"| X | 5 | {np.mean(B):.3f} +- {sd[1]:.3f} | "
             + " | ".join(table_row(comps["x"], "{:+.3f}")) + " |")
    assert md.splitlines() == [header, "| " + " | ".join(["---"] * 11) + " |", ref_row, x_row]
    assert table_row(comps["x"])[-1] == "3/5"
    one = comparison_markdown({"r": [1.0], "x": [0.5]}, "r", lower_is_better=True)
    assert one.splitlines()[2].startswith("| r | 1 | 1.0000 | ref |")
    assert comparison_markdown(vals, "r", lower_is_better=False) == comparison_markdown(
        vals, "r", lower_is_better=False, test="t", seed=0)


def test_defaults_are_the_documented_ones():
    # continuous differences, so one resample more or less moves the percentiles
    d = np.random.default_rng(8).normal(0.2, 1.0, size=12)
    assert bootstrap_ci(d) == bootstrap_ci(d, 0.95, 10_000, 0)
    a, b = d + 1.0, np.ones(12)
    assert paired_comparison(a, b).ci_boot == bootstrap_ci(d, 0.95, 10_000, 0)["mean"]
    out = compare_to_reference({"r": a, "x": b}, "r", lower_is_better=True)
    assert out["x"]["ci_boot"] == bootstrap_ci(d, 0.95, 10_000, 0)["mean"]


def test_messages_name_the_argument_first():
    cases = [(lambda: paired_comparison([], []), "a and b are empty: need at least one pair"),
             (lambda: paired_comparison([1.0, math.nan], [1.0, 2.0]),
              "a and b must be finite (a diverged run has no score to pair)"),
             (lambda: paired_difference([], []), "paired_difference needs at least one pair")]
    for call, message in cases:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message
    for call, name in [(lambda: paired_comparison(A, B, level=2.0), "level"),
                       (lambda: paired_comparison(A, B, n_boot=0), "n_boot"),
                       (lambda: compare_to_reference({"r": A, "x": B}, "r",
                                                     lower_is_better=True, test="z"), "test")]:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(f"{name} ")


def test_report_cells_of_undefined_numbers_and_options():
    c = {"mean_diff": math.nan, "ci_t": (math.nan, math.nan), "ci_boot": (0.0, math.inf),
         "dz": 0.5, "dz_ci": (0.25, math.inf), "p_t": math.nan, "p_holm": math.nan,
         "p_wilcoxon": math.nan, "wins": None, "n": 1}
    assert table_row(c)[:4] == ["+nan", "n/a", "[+0.0000, +inf]", "+0.50 [+0.25, +inf]"]
    vals = {"r": [0.61, 0.58], "x": [0.59, 0.60]}
    md = comparison_markdown(vals, "r", lower_is_better=True, diff_fmt="{:+.12f}", seed=7)
    comps = compare_to_reference(vals, "r", lower_is_better=True, seed=7)
    assert md.splitlines()[3] == ("| x | 2 | 0.5950 +- 0.0071 | "
                                  + " | ".join(table_row(comps["x"], "{:+.12f}")) + " |")
    plain = comparison_markdown(vals, "r", lower_is_better=True).splitlines()[3]
    assert plain.split(" | ")[3] == f"{np.mean([0.02, -0.02]):+.4f}"


def test_comparison_markdown_uses_its_seed():
    d = np.random.default_rng(9).normal(0.2, 1.0, size=12)
    vals = {"r": d + 1.0, "x": np.ones(12)}
    md = comparison_markdown(vals, "r", lower_is_better=True, diff_fmt="{:+.12f}", seed=7)
    comps = compare_to_reference(vals, "r", lower_is_better=True, seed=7)
    assert md.splitlines()[3].endswith(" | ".join(table_row(comps["x"], "{:+.12f}")) + " |")
    assert comps["x"]["ci_boot"] != compare_to_reference(vals, "r", lower_is_better=True,
                                                         seed=0)["x"]["ci_boot"]
