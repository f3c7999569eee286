"""DSelect-k against Top-k and softmax gates on synthetic multi-task regression [DSK].

(a) ``mtl_synthetic_corr``: the two-task data of [MMoE] at task correlations
    ``p in {0, 0.5, 0.9}``, per-example gates, test MSE (mean of the two tasks).
(b) ``mtl_synthetic_clusters``: ``T = 16`` and ``T = 128`` tasks in orthogonal clusters,
    static (task-only) gates: test MSE, experts per task, and how well the tasks' selected
    experts recover the planted clusters (adjusted Rand index), with heat maps of the
    task x expert weights.

Every gate sees the same data, experts, towers, optimizer and steps; runs with the same
seed share the data and the model initialization apart from the gate, so DSelect-k is
compared with each baseline by a paired t-test across seeds
(:func:`compactnn.tasks.mtl.metrics.paired_test`). Training goes through
:func:`compactnn.tasks.mtl.train_mtl`, the loop of ``compactnn mtl``.

The helpers here (:func:`run_arm`, :func:`comparison_table`, ...) are shared with
:mod:`compactnn.experiments.mtl_real`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compactnn.config import build_config, parse_overrides
from compactnn.data.multitask import MultiTaskData
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.tasks.mtl.config import MTLConfig
from compactnn.tasks.mtl.metrics import paired_test

GATES = ("dselect_k", "topk", "softmax")
GATE_LABELS = {"dselect_k": "DSelect-k", "topk": "Top-k", "softmax": "softmax (MMoE)"}


def run_arm(out_dir: Path, overrides: Sequence[str], data: MultiTaskData | None = None
            ) -> dict[str, Any]:
    """Train one configuration with ``compactnn mtl``'s loop (no progress bar, no model
    file); returns its result dict without the model."""
    from compactnn.tasks.mtl import train_mtl

    cfg = build_config(MTLConfig, parse_overrides(
        ["progress=false", "save_model=false", "resume=false", f"out={out_dir}",
         *overrides]))
    return train_mtl(cfg, data=data).metrics


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def comparison_table(rows: list[dict[str, Any]], metric: str, lower_is_better: bool,
                     settings: Sequence[Any], setting_label: str = "setting",
                     fmt: str = "{:.4f}", pooled: bool = True) -> tuple[str, list[list[Any]]]:
    """Markdown table: per setting and gate, ``metric`` mean +- std over seeds, the paired
    difference against DSelect-k and its p-value (paired t-test over seeds), experts per
    task, ARI (when present) and training seconds. With ``pooled``, a last block pools the
    pairs of every setting (one pair per setting and seed)."""
    header = [setting_label, "gate", metric, "DSelect-k - gate", "p (paired t)", "wins",
              "experts/example", "ARI (support)", "train s"]
    table: list[list[Any]] = []
    pooled_pairs: dict[str, tuple[list[float], list[float]]] = {g: ([], []) for g in GATES}

    def by(setting, gate):
        return sorted((r for r in rows if r["setting"] == setting and r["gate"] == gate),
                      key=lambda r: r["seed"])

    for s in settings:
        dsk = by(s, "dselect_k")
        for g in GATES:
            rs = by(s, g)
            if not rs:
                continue
            vals = [r[metric] for r in rs]
            diff, p, wins = "-", "-", "-"
            if g != "dselect_k" and dsk:
                a = [r[metric] for r in dsk]
                t = paired_test(a, vals)
                diff, p = f"{t['mean_diff']:+.4f}", _fmt_p(t["p"])
                better = [(x < y) if lower_is_better else (x > y)
                          for x, y in zip(a, vals, strict=True)]
                wins = f"{sum(better)}/{len(better)}"
                pooled_pairs[g][0].extend(a)
                pooled_pairs[g][1].extend(vals)
            ari = [r["ari_support"] for r in rs if "ari_support" in r]
            table.append([s, GATE_LABELS[g], mean_std(vals, fmt), diff, p, wins,
                          mean_std([r.get("mean_experts_per_example",
                                          r["mean_experts_per_task"]) for r in rs], "{:.2f}"),
                          mean_std(ari, "{:.3f}") if ari else "-",
                          mean_std([r["train_seconds"] for r in rs], "{:.1f}")])
    if pooled and len(settings) > 1:
        for g in GATES[1:]:
            a, b = pooled_pairs[g]
            if len(a) < 2:
                continue
            t = paired_test(a, b)
            better = [(x < y) if lower_is_better else (x > y) for x, y in zip(a, b, strict=True)]
            table.append(["all (pooled)", GATE_LABELS[g], "-", f"{t['mean_diff']:+.4f}",
                          _fmt_p(t["p"]), f"{sum(better)}/{len(better)}", "-", "-", "-"])
    return markdown_table(header, table), table


def write_rows(path: Path, rows: list[dict[str, Any]], keys: Sequence[str]) -> Path:
    return write_csv(path, list(keys), [[r.get(k, "") for k in keys] for r in rows])


def bar_plot(path: Path, rows: list[dict[str, Any]], metric: str, settings: Sequence[Any],
             title: str, xlabel: str) -> Path:
    """Grouped bars of ``metric`` (mean, std error bars over seeds) per setting and gate."""
    fig, ax = new_figure(figsize=(6.4, 4.0))
    width = 0.8 / len(GATES)
    for i, g in enumerate(GATES):
        means, stds = [], []
        for s in settings:
            v = [r[metric] for r in rows if r["setting"] == s and r["gate"] == g]
            means.append(statistics.fmean(v) if v else np.nan)
            stds.append(statistics.stdev(v) if len(v) > 1 else 0.0)
        ax.bar(np.arange(len(settings)) + (i - 1) * width, means, width, yerr=stds,
               label=GATE_LABELS[g], capsize=3)
    ax.set_xticks(range(len(settings)), [str(s) for s in settings])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _seeds(seed: int, quick: bool, n_full: int = 5) -> list[int]:
    return [seed, seed + 1] if quick else list(range(seed, seed + n_full))


# ------------------------------------------------------------------------------ (a)
@register("mtl_synthetic_corr",
          "MTL (a): DSelect-k vs Top-k vs softmax, 2 synthetic tasks at correlation 0/0.5/0.9")
def run_corr(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    from tqdm.auto import tqdm

    from compactnn.data.synthetic import make_mmoe_synthetic

    torch.set_num_threads(1)
    seeds = _seeds(seed, quick)
    corrs = [0.0, 0.5, 0.9]
    n_train, epochs = (3000, 6) if quick else (10_000, 15)
    common = ["data.name=synthetic", "experts.num=8", "experts.hidden=[32]", "experts.out=16",
              "towers.hidden=[8]", "gate.per_example=true", "gate.k=2", "optim.lr=0.005",
              "optim.batch_size=128", f"optim.epochs={epochs}"]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(seeds) * len(corrs) * len(GATES), desc="mtl_synthetic_corr",
               unit="run")
    for s in seeds:
        for p in corrs:
            data = make_mmoe_synthetic(n_train=n_train, n_val=500, n_test=2000,
                                       correlation=p, seed=s)
            for g in GATES:
                r = run_arm(out_dir / "runs" / f"p{p}_{g}_s{s}",
                            [*common, f"gate.name={g}", f"seed={s}"], data)
                rows.append({"setting": p, "gate": g, "seed": s,
                             "test_mse": r["test_mean_mse"],
                             "test_mse_t0": r["test"]["t0"]["mse"],
                             "test_mse_t1": r["test"]["t1"]["mse"],
                             "mean_experts_per_task": r["mean_experts_per_task"],
                             "mean_experts_per_example": r["mean_experts_per_example"],
                             "train_seconds": r["train_seconds"]})
                bar.update()
    bar.close()
    keys = ["setting", "gate", "seed", "test_mse", "test_mse_t0", "test_mse_t1",
            "mean_experts_per_task", "mean_experts_per_example", "train_seconds"]
    csv = write_rows(out_dir / "mtl_synthetic_corr.csv", rows, keys)
    md_table, _ = comparison_table(rows, "test_mse", True, corrs, "correlation p")
    png = bar_plot(out_dir / "mtl_synthetic_corr.png", rows, "test_mse", corrs,
                   "Two synthetic tasks: test MSE (standardized targets)", "task correlation p")
    md = (f"Two regression tasks of [MMoE] (d = 100, 10 sinusoids, noise std 0.1, "
          f"targets standardized), {n_train} training rows, 2000 test rows. 8 MLP experts "
          "100-32-16, towers 16-8-1, per-example gates with k = 2, Adam lr 5e-3, batch "
          f"128, {epochs} epochs. Seeds {seeds}. Metric: test MSE averaged over the two "
          "tasks (lower is better); `DSelect-k - gate` < 0 favours DSelect-k; p-values of "
          "the paired t-test across seeds (pooled: one pair per correlation and seed).\n\n"
          + md_table + f"\n\n![mtl_synthetic_corr]({png.name})\n")
    return ExperimentResult("mtl_synthetic_corr", md, [csv, png])


# ------------------------------------------------------------------------------ (b)
def _heatmaps(path: Path, mats: dict[str, np.ndarray], clusters: np.ndarray,
              title: str) -> Path:
    from compactnn.moe import plot_task_expert_weights

    order = np.argsort(clusters, kind="stable")  # tasks grouped by planted cluster
    n_tasks = len(clusters)
    fig, axes = new_figure(ncols=len(mats), figsize=(4.6 * len(mats),
                                                      min(12.0, 1.5 + 0.22 * n_tasks)))
    for ax, (g, m) in zip(np.atleast_1d(axes), mats.items(), strict=True):
        names = [f"t{t} (c{clusters[t]})" for t in order]
        plot_task_expert_weights(m[order], ax=ax, task_names=names,
                                 annotate=n_tasks <= 16, title=GATE_LABELS[g])
        if n_tasks > 32:
            ax.set_yticks([])
            ax.set_ylabel("tasks, grouped by cluster")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


@register("mtl_synthetic_clusters",
          "MTL (b): static DSelect-k vs Top-k vs softmax on 16 and 128 clustered tasks")
def run_clusters(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    from tqdm.auto import tqdm

    from compactnn.data.synthetic import make_clustered_synthetic

    torch.set_num_threads(1)
    # (tasks, clusters, experts, seeds, training rows, epochs, batch)
    if quick:
        settings = [(16, 4, 8, [seed, seed + 1], 3000, 10, 128),
                    (128, 8, 16, [seed], 2000, 3, 64)]
    else:
        settings = [(16, 4, 8, list(range(seed, seed + 5)), 10_000, 20, 128),
                    (128, 8, 16, list(range(seed, seed + 5)), 5000, 10, 128)]
    common = ["data.name=clustered", "data.correlation=0.9", "experts.hidden=[16]",
              "experts.out=8", "towers.hidden=[]", "gate.per_example=false", "gate.k=2",
              "optim.lr=0.005", "optim.gate_lr=0.05"]
    total = sum(len(st[3]) for st in settings) * len(GATES)
    bar = tqdm(total=total, desc="mtl_synthetic_clusters", unit="run")
    rows: list[dict[str, Any]] = []
    files: list[Path] = []
    heat: dict[int, tuple[dict[str, np.ndarray], np.ndarray]] = {}
    for n_tasks, n_clusters, n_experts, seeds, n_train, epochs, batch in settings:
        for s in seeds:
            data = make_clustered_synthetic(n_tasks, n_clusters, n_train=n_train, n_val=500,
                                            n_test=1000, correlation=0.9, seed=s)
            clusters = np.asarray(data.meta["clusters"])
            for g in GATES:
                r = run_arm(out_dir / "runs" / f"T{n_tasks}_{g}_s{s}",
                            [*common, f"data.num_tasks={n_tasks}",
                             f"data.num_clusters={n_clusters}", f"experts.num={n_experts}",
                             f"optim.epochs={epochs}", f"optim.batch_size={batch}",
                             f"gate.name={g}", f"seed={s}"], data)
                rows.append({"setting": n_tasks, "gate": g, "seed": s,
                             "test_mse": r["test_mean_mse"],
                             "mean_experts_per_task": r["mean_experts_per_task"],
                             "mean_experts_per_example": r["mean_experts_per_example"],
                             "ari_support": r["ari_support"], "ari_argmax": r["ari_argmax"],
                             "train_seconds": r["train_seconds"]})
                if s == seeds[0]:
                    heat.setdefault(n_tasks, ({}, clusters))[0][g] = np.asarray(
                        r["expert_weights"])
                bar.update()
    bar.close()
    keys = ["setting", "gate", "seed", "test_mse", "mean_experts_per_task", "ari_support",
            "ari_argmax", "train_seconds"]
    files.append(write_rows(out_dir / "mtl_synthetic_clusters.csv", rows, keys))
    tasks_list = [st[0] for st in settings]
    md_table, _ = comparison_table(rows, "test_mse", True, tasks_list, "tasks", pooled=False)
    ari_header = ["tasks", "gate", "ARI (support)", "ARI (argmax)", "experts/task"]
    ari_rows = []
    for t in tasks_list:
        for g in GATES:
            rs = [r for r in rows if r["setting"] == t and r["gate"] == g]
            ari_rows.append([t, GATE_LABELS[g], mean_std([r["ari_support"] for r in rs],
                                                         "{:.3f}"),
                             mean_std([r["ari_argmax"] for r in rs], "{:.3f}"),
                             mean_std([r["mean_experts_per_task"] for r in rs], "{:.2f}")])
    dsk_ari = {t: [r["ari_argmax"] for r in rows if r["setting"] == t
                   and r["gate"] == "dselect_k"] for t in tasks_list}
    tests = []
    for t in tasks_list:
        for g in GATES[1:]:
            b = [r["ari_argmax"] for r in rows if r["setting"] == t and r["gate"] == g]
            tests.append(f"T={t}, DSelect-k vs {GATE_LABELS[g]}: ARI (argmax) difference "
                         f"{paired_test(dsk_ari[t], b)['mean_diff']:+.3f}, p = "
                         f"{_fmt_p(paired_test(dsk_ari[t], b)['p'])}")
    pngs = []
    for t, (mats, clusters) in heat.items():
        pngs.append(_heatmaps(out_dir / f"mtl_clusters_T{t}_weights.png", mats, clusters,
                              f"{t} tasks in {len(set(clusters.tolist()))} clusters: "
                              "task x expert weights (seed 0)"))
    files += pngs
    desc = "; ".join(f"T = {st[0]}: {st[1]} clusters, {st[2]} experts, seeds {st[3]}, "
                     f"{st[4]} training rows, {st[5]} epochs of batch {st[6]}"
                     for st in settings)
    md = ("Clustered synthetic regression (tasks in orthogonal clusters, cosine 0.9 within "
          f"a cluster, 1000 test rows). {desc}. Static gates (one per task) with k = 2, MLP "
          "experts d-16-8, linear towers, Adam lr 5e-3 (gates 5e-2).\n\n"
          + md_table
          + "\n\nExpert selection: adjusted Rand index between the planted clusters and the "
          "tasks' selected experts (`support`: the exact set of nonzero weights; `argmax`: "
          "the expert of largest weight); 1 = tasks share experts exactly when they share a "
          "cluster, 0 = chance.\n\n" + markdown_table(ari_header, ari_rows) + "\n\n"
          + "\n".join(f"- {t}" for t in tests) + "\n\n"
          + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n")
    return ExperimentResult("mtl_synthetic_clusters", md, files)


# ------------------------------------------------------------------------ aggregation
# (experiment, metric, lower is better, setting label)
AGGREGATE_SPECS = [
    ("mtl_synthetic_corr", "test_mse", True, "correlation p"),
    ("mtl_synthetic_clusters", "test_mse", True, "tasks"),
    ("mtl_synthetic_clusters", "ari_argmax", False, "tasks"),
    ("mtl_synthetic_clusters", "ari_support", False, "tasks"),
    ("mtl_multi_fashion", "mean_accuracy", False, "split"),
    ("mtl_multi_fashion", "acc_top_left", False, "split"),
    ("mtl_multi_fashion", "acc_bottom_right", False, "split"),
    ("mtl_census", "auc_income", False, "split"),
    ("mtl_census", "auc_never_married", False, "split"),
]


def aggregate(run_dirs: Sequence[Path]) -> str:
    """Pool the per-seed CSVs of several ``compactnn reproduce`` folders (e.g. runs with
    ``--seed 0``, ``--seed 2``, ``--seed 4``) into the comparison tables, with paired
    t-tests over all their seeds. A (setting, gate, seed) row found twice is kept once."""
    import pandas as pd

    parts = []
    for name, metric, lower, label in AGGREGATE_SPECS:
        frames = [pd.read_csv(Path(d) / name / f"{name}.csv") for d in run_dirs
                  if (Path(d) / name / f"{name}.csv").exists()]
        if not frames:
            continue
        df = pd.concat(frames, ignore_index=True)
        if "setting" not in df.columns:
            df["setting"] = "test"
        df = df.drop_duplicates(["setting", "gate", "seed"]).sort_values(["setting", "seed"])
        rows = df.to_dict("records")
        settings = sorted(df["setting"].unique().tolist())
        seeds = sorted(df["seed"].unique().tolist())
        table, _ = comparison_table(rows, metric, lower, settings, label,
                                    pooled=name == "mtl_synthetic_corr")
        parts.append(f"### {name}: {metric} ({'lower' if lower else 'higher'} is better), "
                     f"seeds {seeds}\n\n{table}")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":  # pragma: no cover
    import sys

    print(aggregate([Path(p) for p in sys.argv[1:]]))
