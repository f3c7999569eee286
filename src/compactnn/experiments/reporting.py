"""Helpers the experiments share: markdown tables, mean +- std, plots."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

__all__ = ["markdown_table", "mean_std", "write_csv", "new_figure"]


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
