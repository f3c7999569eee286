"""The shared summaries of experiment reports: t-intervals of a mean and of a mean log,
against scipy's own interval on the same values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from compactnn.experiments.reporting import geometric_mean_ci, mean_ci, mean_std


def _parse(text: str) -> list[float]:
    return [float(x) for x in text.replace("[", " ").replace("]", " ").replace(",", " ").split()]


def test_mean_ci_is_the_t_interval_of_the_mean() -> None:
    values = [0.31, 0.35, 0.29, 0.40]
    m, lo, hi = _parse(mean_ci(values, "{:.10f}"))
    want = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                            scale=stats.sem(values))
    assert m == pytest.approx(np.mean(values), abs=1e-9)
    assert (lo, hi) == pytest.approx(want, abs=1e-9)
    assert mean_ci([2.5]) == "2.5000"


def test_geometric_mean_ci_is_the_t_interval_of_the_mean_log() -> None:
    values = [48.2, 61.0, 39.5]
    g, lo, hi = _parse(geometric_mean_ci(values, "{:.10f}"))
    logs = np.log(values)
    want = stats.t.interval(0.95, 2, loc=logs.mean(), scale=stats.sem(logs))
    assert g == pytest.approx(math.exp(logs.mean()), rel=1e-9)
    assert (lo, hi) == pytest.approx(tuple(np.exp(want)), rel=1e-9)
    assert g < np.mean(values)  # the geometric mean, not the arithmetic one
    assert geometric_mean_ci([7.0]) == "7.00"
    with pytest.raises(ValueError, match="positive"):
        geometric_mean_ci([3.0, 0.0])


def test_mean_std_uses_the_sample_deviation() -> None:
    assert mean_std([1.0, 2.0, 3.0], "{:.3f}") == "2.000 +- 1.000"
