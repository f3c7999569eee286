"""Helpers the experiments share: markdown tables, mean +- std, plots."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

__all__ = ["geometric_mean_ci", "markdown_table", "mean_ci", "mean_std", "new_figure",
           "paired_summary", "write_csv"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def mean_std(values: Sequence[float], fmt: str = "{:.4f}") -> str:
    """``"m +- s"`` over seeds (``"m"`` alone for one value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return fmt.format(m)
    return f"{fmt.format(m)} +- {fmt.format(statistics.stdev(values))}"


def _t_half_width(values: Sequence[float], level: float = 0.95) -> float:
    from scipy.stats import t as t_dist

    n = len(values)
    return float(t_dist.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / n ** 0.5


def mean_ci(values: Sequence[float], fmt: str = "{:.4f}") -> str:
    """``"m [lo, hi]"``: the mean over seeds and its 95% t-interval (``"m"`` alone for one
    value)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return fmt.format(m)
    half = _t_half_width(values)
    return f"{fmt.format(m)} [{fmt.format(m - half)}, {fmt.format(m + half)}]"


def geometric_mean_ci(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """The geometric mean over seeds and the 95% t-interval of the mean log, mapped back:
    the summary for positive scores compared by ratios, such as perplexities."""
    import math

    if any(not v > 0 for v in values):
        raise ValueError(f"values must be positive, got {list(values)}")
    logs = [math.log(v) for v in values]
    m = statistics.fmean(logs)
    if len(logs) < 2:
        return fmt.format(math.exp(m))
    half = _t_half_width(logs)
    return (f"{fmt.format(math.exp(m))} [{fmt.format(math.exp(m - half))}, "
            f"{fmt.format(math.exp(m + half))}]")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def new_figure(**kwargs):
    """A matplotlib figure and axes on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kwargs)


def paired_summary(pairs: list[tuple[float, float]]) -> tuple[float, int, int, str, str]:
    """Mean difference, wins of the first over the second, the number of pairs, and the
    paired t-test's and Wilcoxon signed-rank test's p-values (``"-"`` when fewer than
    3 pairs or all tied, where neither test is defined)."""
    import statistics

    from scipy.stats import ttest_rel, wilcoxon

    diff = statistics.fmean(a - b for a, b in pairs) if pairs else float("nan")
    wins = sum(a > b for a, b in pairs)
    if len(pairs) < 3 or all(a == b for a, b in pairs):
        return diff, wins, len(pairs), "-", "-"
    xa, xb = [p[0] for p in pairs], [p[1] for p in pairs]
    try:
        w = f"{wilcoxon(xa, xb).pvalue:.3g}"
    except ValueError:  # every difference zero after rounding
        w = "-"
    return diff, wins, len(pairs), f"{ttest_rel(xa, xb).pvalue:.3g}", w

