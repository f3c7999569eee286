"""Shared by the tuned reproductions: run the tuning protocol (:func:`compactnn.tune.tune`)
for a set of compared methods and report the re-trained seeds with paired statistics.

Every table compares a reference method (the paper's method) with each other method,
pairing runs by seed, with the p-values Holm-corrected across the comparisons of that
table (:func:`compactnn.experiments.stats.comparison_markdown`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from compactnn.experiments.stats import comparison_markdown
from compactnn.tune import Method, TuneReport, tune

__all__ = ["MetricSpec", "report_tables", "run_tuned", "seed_csv"]

# (key in the run's result, lower is better, label in the report)
MetricSpec = tuple[str, bool, str]


def run_tuned(out_dir: Path, methods: Mapping[str, Method],
              run: Callable[[str, dict[str, Any], int], Mapping[str, Any]], *,
              n_trials: int, seeds: Sequence[int], direction: str,
              sampler_seed: int = 0, n_startup_trials: int = 10,
              log: Callable[[str], None] | None = None) -> TuneReport:
    """The protocol in ``out_dir / "tune"`` (resumable)."""
    return tune(methods, run, out_dir / "tune", n_trials=n_trials, seeds=list(seeds),
                direction=direction, sampler_seed=sampler_seed,
                n_startup_trials=n_startup_trials, log=log)


def report_tables(report: TuneReport, reference: str, metrics: Sequence[MetricSpec],
                  labels: Mapping[str, str], methods: Sequence[str] | None = None,
                  fmt: str = "{:.4f}") -> str:
    """One markdown table per metric: mean +- sd of each method over the seeds and the
    paired comparison ``reference - other`` (95% CIs, d_z, t / Holm / Wilcoxon p)."""
    names = list(methods or report.final)
    parts = []
    for key, lower, label in metrics:
        values = {m: report.values(m, key) for m in names}
        parts.append(f"**{label}** ({'lower' if lower else 'higher'} is better; "
                     f"{len(report.seeds)} seeds, reference {labels.get(reference, reference)})"
                     "\n\n" + comparison_markdown(values, reference, lower_is_better=lower,
                                                  labels=labels, fmt=fmt))
    return "\n\n".join(parts)


def seed_csv(path: Path, report: TuneReport, keys: Sequence[str]) -> Path:
    """The re-trained runs, one row per method and seed."""
    from compactnn.experiments.reporting import write_csv

    rows = [[m, r["seed"], *[r.get(k, "") for k in keys]]
            for m, rs in report.final.items() for r in rs]
    return write_csv(path, ["method", "seed", *keys], rows)
