"""Paired differences with confidence intervals, and Holm's correction."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compactnn.experiments.stats import holm, paired_difference


def test_holm_against_a_hand_computed_case():
    # sorted: 0.01*4=0.04, 0.02*3=0.06, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.4]) == pytest.approx([0.8, 0.8])  # 0.4*2, max(0.8, 0.5)
    assert holm([0.9, 0.6]) == [1.0, 1.0]  # capped


def test_holm_leaves_nans_out_of_the_count():
    out = holm([0.01, math.nan, 0.02])
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.02)
    assert math.isnan(out[1])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_never_lowers_a_pvalue_and_keeps_the_order(ps):
    adj = holm(ps)
    assert all(q >= p for p, q in zip(ps, adj, strict=True))
    for i in range(len(ps)):
        for j in range(len(ps)):
            if ps[i] < ps[j]:
                assert adj[i] <= adj[j]


def test_paired_difference_matches_scipy():
    from scipy.stats import t, ttest_rel

    a, b = [0.90, 0.91, 0.93, 0.88], [0.80, 0.83, 0.82, 0.84]
    d, lo, hi, p = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert d == pytest.approx(sum(diffs) / 4)
    sd = (sum((x - d) ** 2 for x in diffs) / 3) ** 0.5
    assert hi - d == pytest.approx(t.ppf(0.975, 3) * sd / 2)
    assert d - lo == pytest.approx(hi - d)
    assert p == pytest.approx(ttest_rel(a, b).pvalue)


def test_paired_difference_edge_cases():
    d, lo, hi, p = paired_difference([0.5], [0.4])
    assert d == pytest.approx(0.1) and math.isnan(lo) and math.isnan(p)
    assert paired_difference([0.5, 0.6], [0.5, 0.6]) == (0.0, 0.0, 0.0, 1.0)
    assert paired_difference([0.6, 0.7], [0.5, 0.6])[3] == 0.0  # constant nonzero shift
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])
