"""Paired comparisons across seeds for the experiment tables: the mean paired
difference with its 95% t confidence interval, the two-sided paired t-test, and
Holm's step-down correction across the comparisons of one table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["holm", "paired_difference"]


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
    mean = statistics.fmean(diffs)
    n = len(diffs)
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    sd = statistics.stdev(diffs)
    if sd == 0.0:
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    from scipy.stats import t

    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    stat = mean / (sd / math.sqrt(n))
    p = 2 * t.sf(abs(stat), n - 1)
    return mean, mean - half, mean + half, float(p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (same order as given): sorted ascending, the i-th
    (from 0) is multiplied by ``m - i``, made non-decreasing, capped at 1. NaNs
    stay NaN and do not count in ``m``."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
