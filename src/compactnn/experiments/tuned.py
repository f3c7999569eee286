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

__all__ = ["EngineRun", "MetricSpec", "PARAM_KEYS", "budget_main", "report_tables", "run_arm",
           "run_tuned", "seed_csv"]

# tuned hyper-parameter -> key of the `compactnn mtl` config
PARAM_KEYS = {"lr": "optim.lr", "batch_size": "optim.batch_size", "gate_lr": "optim.gate_lr",
              "gamma": "gate.gamma", "entropy_reg": "gate.entropy_reg",
              "importance_reg": "gate.importance_reg", "noisy": "gate.noisy"}


def run_arm(out_dir: Path, overrides: Sequence[str], data: Any = None) -> dict[str, Any]:
    """Train one configuration with ``compactnn mtl``'s loop (no progress bar, no model
    file); returns its metrics."""
    from compactnn.config import build_config, parse_overrides
    from compactnn.tasks.mtl import train_mtl
    from compactnn.tasks.mtl.config import MTLConfig

    cfg = build_config(MTLConfig, parse_overrides(
        ["progress=false", "save_model=false", "resume=false", f"out={out_dir}",
         *overrides]))
    return train_mtl(cfg, data=data).metrics


def _value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else repr(v)


class EngineRun:
    """``run(method, params, seed)`` for the tuner, training with ``compactnn mtl``: the
    method is the gate (``gate.name``), ``params`` map to config keys through
    :data:`PARAM_KEYS`, ``data_for_seed(seed)`` gives the data of a seed. Returns
    ``{"val": metrics[val_key], "test": metrics[test_key], **{name: fn(metrics)}}``."""

    def __init__(self, out_root: Path, common: Sequence[str],
                 data_for_seed: Callable[[int], Any], val_key: str, test_key: str,
                 extra: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None) -> None:
        self.out_root, self.common = Path(out_root), list(common)
        self.data_for_seed, self.val_key, self.test_key = data_for_seed, val_key, test_key
        self.extra = dict(extra or {})

    def __call__(self, method: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
        import hashlib

        import torch

        torch.set_num_threads(1)
        unknown = sorted(set(params) - set(PARAM_KEYS))
        if unknown:
            raise ValueError(f"no config key for the tuned parameters {unknown}")
        tag = hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:10]
        overrides = [*self.common, f"gate.name={method}", f"seed={seed}",
                     *[f"{PARAM_KEYS[k]}={_value(v)}" for k, v in params.items()]]
        m = run_arm(self.out_root / f"{method}_s{seed}_{tag}", overrides,
                    self.data_for_seed(seed))
        if m.get("signal"):
            # SIGINT/SIGTERM stopped the run (after saving): the search must stop too,
            # without scoring this configuration or counting its slot
            from compactnn.engine.control import RunInterrupted

            raise RunInterrupted(int(m["signal"]))
        out = {"val": float(m[self.val_key]), "test": float(m[self.test_key]),
               "best_epoch": m.get("best_epoch", m.get("epoch")), "epochs_run": m.get("epoch"),
               "experts_per_example": m.get("mean_experts_per_example"),
               "train_seconds": m.get("train_seconds")}
        out.update({k: f(m) for k, f in self.extra.items()})
        return out

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


def budget_main(run: Callable[..., Any], argv: Sequence[str] | None = None) -> None:
    """Command line of a tuned experiment: ``OUT [--quick] [--seed S] [key=value ...]``,
    where the ``key=value`` pairs override the experiment's scale (``trials``, ``seeds``,
    ``epochs``, ...: e.g. a smaller budget on a busy machine). Resumable; the report goes
    to ``OUT/report.md``."""
    import argparse

    p = argparse.ArgumentParser(description=budget_main.__doc__)
    p.add_argument("out", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="one method (where the experiment allows)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_intermixed_args(argv)
    budget: dict[str, Any] = {}
    for item in a.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"expected key=value, got {item!r}")
        budget[key] = int(value)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.only is not None:
        budget["only"] = a.only
    res = run(a.out, a.quick, a.seed, **budget)
    (a.out / "report.md").write_text(res.markdown)
    print(res.markdown)
