"""Helpers the experiments share: markdown tables, mean +- std, plots."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

__all__ = ["markdown_table", "mean_std", "new_figure", "paired_summary", "write_csv"]


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

