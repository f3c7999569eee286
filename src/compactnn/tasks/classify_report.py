"""What a finished ``compactnn train`` run leaves to look at: ``curves.png``
(loss and accuracy per epoch, training and validation, from the run's
``metrics.csv``, so a resumed run's curves are whole) and ``report.md`` (the
final metrics, the plot and the factorize report)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

__all__ = ["read_history", "write_curves", "write_run_report"]

#: (panel title, metrics.csv column of the training value, of the validation value)
PANELS = (("loss", "train_loss", "val_loss"), ("accuracy", "train_accuracy", "val_accuracy"))


def read_history(path: Path) -> list[dict[str, float]]:
    """The numeric columns of ``metrics.csv``, one dict per epoch (a value that is
    not a number is left out)."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, text in raw.items():
                try:
                    row[key] = float(text)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


def write_curves(path: Path, history: list[dict[str, float]]) -> bool:
    """Plot the loss and accuracy panels to ``path`` (PNG); False, writing nothing,
    when matplotlib is not installed (it comes with ``compactnn[experiments]``)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    try:
        for ax, (title, train_key, val_key) in zip(axes, PANELS, strict=True):
            for key, label, style in ((train_key, "train", "-o"), (val_key, "validation", "-s")):
                pts = [(r["epoch"], r[key]) for r in history
                       if "epoch" in r and key in r and math.isfinite(r[key])]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, label=label, markersize=3)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def write_run_report(out: Path, metrics: dict[str, Any], factorize_report: Any = None) -> None:
    """Write ``curves.png`` and ``report.md`` into the run folder ``out``."""
    history = read_history(out / "metrics.csv") if (out / "metrics.csv").exists() else []
    plotted = bool(history) and write_curves(out / "curves.png", history)
    lines = ["# compactnn train", "", "## Final metrics", "", "| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, bool | int | float | str):
            lines.append(f"| {key} | {_fmt(value)} |")
    lines += ["", "## Training curves", ""]
    if plotted:
        lines.append("![loss and accuracy per epoch, training and validation](curves.png)")
    else:
        lines.append("No plot: " + ("no epoch finished." if not history else
                                    "matplotlib is not installed (pip install "
                                    "'compactnn[experiments]'); the numbers are in "
                                    "metrics.csv."))
    lines += ["", "## Factorization", ""]
    if factorize_report is None:
        lines.append("The model was trained dense (lowrank.enabled is false).")
    else:
        lines += [str(factorize_report.to_markdown()), "",
                  f"Parameters {factorize_report.params_before} -> "
                  f"{factorize_report.params_after}."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
