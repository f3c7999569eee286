"""The cells of the DSelect-k study (:mod:`compactnn.experiments.mtl_dselect`): one run
of a configuration at one seed, on planted experts or through ``compactnn mtl`` on the
real data sets, and the wrapper that records its cost and a failed configuration."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CELL_ERRORS", "best_epoch_note", "run_planted_cell", "run_real_cell", "timed"]


#: Errors of one configuration (a diverged or impossible run): the cell is recorded as
#: failed (validation and test NaN, the error kept) and the study goes on. A missing data
#: set (FileNotFoundError) or an interruption is not a failed cell.
CELL_ERRORS = (ArithmeticError, RuntimeError, ValueError)


def timed(fn: Callable[[Mapping[str, Any]], dict[str, Any]]
          ) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def run(params: Mapping[str, Any]) -> dict[str, Any]:
        import torch

        torch.set_num_threads(1)
        start = time.process_time()
        wall = time.perf_counter()
        try:
            out = fn(params)
        except CELL_ERRORS as e:  # (an interruption is a KeyboardInterrupt: not caught)
            out = {"val": math.nan, "test": math.nan, "failed": f"{type(e).__name__}: {e}"}
        out.update(cpu_seconds=time.process_time() - start,
                   seconds=time.perf_counter() - wall)
        return out

    return run


def best_epoch_note(best_epoch: int, epochs_run: int, cap: int) -> bool:
    """True when the best epoch is inside the last 10% of the epoch cap (training may not
    have converged)."""
    return epochs_run >= cap and best_epoch > 0.9 * cap


def run_planted_cell(data, params: Mapping[str, Any]) -> dict[str, Any]:
    """One planted-experts run: test / validation MSE, best epoch, per-epoch validation
    MSE and saturation, support recovery (learned experts matched to planted ones; frozen
    planted experts are their own match) and the adjusted Rand index of the supports."""
    import torch

    from compactnn.data.planted import (
        match_experts,
        planted_expert_outputs,
        support_recovery,
        with_spare_experts,
    )
    from compactnn.experiments.mtl_dselect import PLANTED
    from compactnn.experiments.planted_moe import SCHEDULE_KEYS, routing_matrix, train_routed
    from compactnn.tasks.mtl.metrics import expert_selection_ari

    p, arm, seed = PLANTED, params["arm"], int(params["seed"])
    n_exp = p["clusters"] * p["k"] + int(params.get("spare", 0))
    frozen = None
    if params.get("experts", "learned") == "frozen":
        frozen = with_spare_experts(data.meta["experts"], int(params.get("spare", 0)), seed)
    kw: dict[str, Any] = {}
    if arm == "oracle" and frozen is not None:
        # frozen planted experts keep their ids: the oracle routes each task to its own
        # planted pair (learned experts have no ids, so there it reserves c k .. c k + k - 1)
        routing = np.zeros((p["tasks"], n_exp))
        for t, support in enumerate(data.meta["planted_supports"]):
            routing[t, support] = 1.0 / p["k"]
        kw["routing"] = routing
    elif arm in ("oracle", "random"):
        kw["routing"] = routing_matrix(arm, p["tasks"], data.meta["clusters"], n_exp, p["k"],
                                       seed=seed)
    else:
        gate_params = {k: params[k] for k in ("gamma", "entropy_reg", "importance_reg",
                                              *SCHEDULE_KEYS) if k in params}
        kw.update(gate=arm, gate_params=gate_params, aux_per_task=True,
                  gate_warmup_epochs=int(params.get("gate_warmup_epochs", 0)),
                  gate_warmup_factor=float(params.get("gate_warmup_factor", 0.1)))
    r = train_routed(data, num_experts=n_exp, k=p["k"], hidden=p["hidden"], out=p["out"],
                     epochs=int(params["epochs"]), lr=float(params["lr"]),
                     batch_size=int(params["batch_size"]), patience=int(params["patience"]),
                     seed=seed, frozen_experts=frozen, **kw)
    out: dict[str, Any] = {
        "val": r["val_mse"], "test": r["test_mse"], "best_epoch": r["best_epoch"],
        "epochs_run": r["epochs_run"], "val_history": [round(v, 6) for v in r["val_history"]],
        "saturation_history": [round(v, 6) for v in r["saturation_history"]],
        "best_in_last_10pct": best_epoch_note(r["best_epoch"], r["epochs_run"],
                                              int(params["epochs"]))}
    if r["weights"] is not None and np.isfinite(r["test_mse"]):
        planted = data.meta["experts"]
        if frozen is None:
            with torch.no_grad():
                g = r["model"].expert_outputs(data.test.x).permute(1, 0, 2).numpy()
            matching, _ = match_experts(g, planted_expert_outputs(planted, data.test.x.numpy()))
        else:  # the frozen planted experts keep their ids; spare ones match nothing
            matching = {e: e for e in range(len(planted["w1"]))}
        rec = support_recovery(r["weights"], data.meta["planted_supports"], matching)
        out.update(precision=rec["precision"], recall=rec["recall"], exact=rec["exact"],
                   experts_per_task=rec["support_size"],
                   ari=expert_selection_ari(r["weights"], data.meta["clusters"], "support"))
    return out


def run_real_cell(data, params: Mapping[str, Any]) -> dict[str, Any]:
    """One ``compactnn mtl`` run on Multi-Fashion-MNIST or MovieLens (layouts in the
    module doc of :mod:`compactnn.experiments.mtl_real` and the issue)."""
    import tempfile

    from compactnn.experiments.mtl_dselect import REAL
    from compactnn.experiments.tuned import run_arm

    ds, r = params["dataset"], REAL[params["dataset"]]
    if ds == "fashion":
        layout = ["data.name=multi_fashion_mnist", "experts.num=4", "experts.arch=lenet",
                  "experts.channels=[10,20]", "experts.hidden=[50]", "experts.out=50",
                  "towers.hidden=[50,50]", "execution=auto"]
    else:
        layout = [f"data.name={params.get('data', 'movielens')}", "experts.num=16",
                  "experts.hidden=[]", "experts.out=256", "experts.dropout=0.5",
                  "experts.embedding_dim=128", "towers.hidden=[256]", "loss.weights=[0.9,0.1]",
                  "eval_batch_size=8192"]
    keys = {"gamma": "gate.gamma", "entropy_reg": "gate.entropy_reg",
            "importance_reg": "gate.importance_reg"}
    overrides = [*layout, "gate.per_example=true", "gate.k=2", f"gate.name={params['gate']}",
                 f"optim.lr={params['lr']!r}", f"optim.batch_size={params['batch_size']}",
                 f"optim.epochs={params['epochs']}", f"early_stop.patience={params['patience']}",
                 f"early_stop.metric={r['metric']}", f"seed={params['seed']}",
                 *[f"{keys[k]}={params[k]!r}" for k in keys if k in params]]
    with tempfile.TemporaryDirectory(prefix="dselect_") as tmp:
        m = run_arm(Path(tmp) / "run", overrides, data)
    if m.get("signal"):
        from compactnn.engine.control import RunInterrupted

        raise RunInterrupted(int(m["signal"]))
    best, run = int(m.get("best_epoch") or 0), int(m.get("epoch") or 0)
    out = {"val": float(m[r["metric"]]) if r["metric"] in m else math.nan,
           "test": float(m[r["test"]]), "best_epoch": best, "epochs_run": run,
           "best_in_last_10pct": best_epoch_note(best, run, int(params["epochs"])),
           "experts_per_example": m.get("mean_experts_per_example")}
    for split in ("val", "test"):
        for task, metrics in m[split].items():
            for key, value in metrics.items():
                out[f"{split}_{task}_{key}"] = value
    return out
