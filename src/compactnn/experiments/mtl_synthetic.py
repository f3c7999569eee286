"""DSelect-k against Top-k and softmax gates on the two-task synthetic data of [MMoE]
(``mtl_synthetic_corr``): an extension beyond the DSelect-k paper, which does not run
this data set.

Task correlations ``p in {0, 0.5, 0.9}``, per-example gates with ``k = 2``, test MSE
(mean of the two tasks). For each correlation every gate goes through the same tuning
protocol (:func:`compactnn.tune.tune`): the same number of trials over its own search
space (learning rate and batch size for all; gamma and the entropy regularizer for
DSelect-k; the balancing weight for Top-k), chosen on validation MSE, then the best
configuration re-trained from the evaluation seeds. Training goes through
``compactnn mtl`` with early stopping on the validation MSE and the best weights
restored. Each seed draws its own data, shared by the gates, so the gates are compared
by paired tests with Holm's correction (:mod:`compactnn.experiments.stats`).

The expert-selection experiment with planted experts is
:mod:`compactnn.experiments.mtl_planted`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.tuned import EngineRun, report_tables, run_tuned, seed_csv
from compactnn.tune import Categorical, LogUniform, Method

GATES = ("dselect_k", "topk", "softmax")
GATE_LABELS = {"dselect_k": "DSelect-k", "topk": "Top-k", "softmax": "softmax (MMoE)"}


# Each gate's defaults, evaluated as one of its trials when ``gate_spaces(defaults=True)``:
# Adam's usual learning rate, the smallest batch, DSelect-k's gamma = 1 with a moderate
# entropy weight, Top-k's balancing weight 0.1. With a handful of trials a random search
# in DSelect-k's four dimensions can miss every sensible region; one known-reasonable
# point per gate keeps small budgets from deciding the comparison.
GATE_DEFAULTS = {"lr": 1e-3, "gamma": 1.0, "entropy_reg": 0.1, "importance_reg": 0.1}


def gate_spaces(batches: tuple[int, ...] = (128, 256, 512),
                lr: tuple[float, float] = (1e-4, 1e-1),
                defaults: bool = False) -> dict[str, Method]:
    """The per-gate search spaces (ranges after the DSelect-k authors' tuning code:
    lr 1e-4..1e-1, gamma 1e-3..10, entropy_reg 1e-3..10); ``defaults`` adds each gate's
    default configuration (:data:`GATE_DEFAULTS`) as one of its trials."""
    common = {"lr": LogUniform(*lr), "batch_size": Categorical(batches)}
    spaces = {"dselect_k": {**common, "gamma": LogUniform(1e-3, 10.0),
                            "entropy_reg": LogUniform(1e-3, 10.0)},
              "topk": {**common, "importance_reg": LogUniform(1e-3, 1.0)},
              "softmax": dict(common)}

    def start(space: dict) -> tuple[dict, ...]:
        if not defaults:
            return ()
        return ({k: min(batches) if k == "batch_size" else GATE_DEFAULTS[k] for k in space},)

    return {g: Method(space, start=start(space)) for g, space in spaces.items()}


def corr_scale(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n_train": 2000, "epochs": 8, "patience": 3, "trials": 2, "seeds": 2}
    return {"n_train": 10_000, "epochs": 100, "patience": 10, "trials": 10, "seeds": 10}


@register("mtl_synthetic_corr",
          "MTL (a, extension): tuned DSelect-k vs Top-k vs softmax, 2 synthetic tasks at "
          "correlation 0/0.5/0.9")
def run_corr(out_dir: Path, quick: bool, seed: int, only: str | None = None,
             **budget: int) -> ExperimentResult:
    """``only``: one correlation (e.g. ``"0.5"``; one process per correlation into the
    same folder, then a last call without ``only`` writes the whole report)."""
    from compactnn.data.synthetic import make_mmoe_synthetic

    sc = {**corr_scale(quick), **budget}
    seeds = list(range(seed, seed + sc["seeds"]))
    corrs = [0.0, 0.5, 0.9] if only is None else [float(only)]
    common = ["data.name=synthetic", "experts.num=8", "experts.hidden=[32]", "experts.out=16",
              "towers.hidden=[8]", "gate.per_example=true", "gate.k=2",
              f"optim.epochs={sc['epochs']}", f"early_stop.patience={sc['patience']}",
              "early_stop.metric=val_mean_mse"]
    parts, files = [], []
    for p in corrs:
        sub = out_dir / f"p{p}"

        def data(s: int, p: float = p):
            return make_mmoe_synthetic(n_train=sc["n_train"], n_val=1000, n_test=2000,
                                       correlation=p, seed=s)

        run = EngineRun(sub / "runs", common, data, "val_mean_mse", "test_mean_mse")
        report = run_tuned(sub, gate_spaces(defaults=not quick), run, n_trials=sc["trials"],
                           seeds=seeds, direction="minimize", sampler_seed=seed)
        files.append(seed_csv(out_dir / f"mtl_synthetic_corr_p{p}.csv", report,
                              ["test", "val", "experts_per_example", "best_epoch",
                               "epochs_run", "seconds"]))
        parts.append(f"#### correlation p = {p}\n\n" + report.markdown() + "\n"
                     + report_tables(report, "dselect_k",
                                     [("test", True, "test MSE (mean of the 2 tasks)"),
                                      ("experts_per_example", True, "experts per example")],
                                     GATE_LABELS))
    md = ("Extension beyond the DSelect-k paper. Two regression tasks of [MMoE] (d = 100, "
          f"10 sinusoids, noise std 0.1, targets standardized), {sc['n_train']} training / "
          "1000 validation / 2000 test rows per seed. 8 MLP experts 100-32-16, towers "
          "16-8-1, per-example gates with k = 2, Adam, up to "
          f"{sc['epochs']} epochs with early stopping (patience {sc['patience']} on the "
          f"validation MSE, best weights restored). Seeds {seeds}; each seed draws its "
          "own data.\n\n" + "\n\n".join(parts) + "\n")
    return ExperimentResult("mtl_synthetic_corr", md, files)


if __name__ == "__main__":  # pragma: no cover
    from compactnn.experiments.tuned import budget_main

    budget_main(run_corr)
