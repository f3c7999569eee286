"""``compactnn mtl``: multi-task training of mixture-of-experts models (DSelect-k, Top-k or
softmax gates) with a typed config (:mod:`compactnn.tasks.mtl.config`), exact resume and
DDP, as a task of the engine's loop (:func:`compactnn.engine.run`).

The loss of a step is ``sum_t w_t L_t + aux``: ``L_t`` is task ``t``'s mean loss over its
non-missing rows (BCE-with-logits, cross-entropy or MSE by task kind), ``w_t`` its weight
(``loss.weights``, default 1) and ``aux`` the gates' regularizers (DSelect-k entropy and
unreachable-code penalty, Top-k balancing losses; zero for softmax). Under DDP the task
losses and ``reduction="mean"`` regularizers average exactly over the processes; the
noisy Top-k gate draws its noise per process, so Top-k runs are not bit-identical to a
single process.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compactnn.config import ConfigError
from compactnn.data.multitask import MultiTaskData, MultiTaskPart
from compactnn.engine import DistInfo, Run, Task, batched, lr_scheduler, predict, run
from compactnn.engine.settings import RUN_KEYS, loop_config
from compactnn.moe import nonzeros_per_example, nonzeros_per_task, task_expert_weights
from compactnn.tasks.mtl.config import MTLConfig
from compactnn.tasks.mtl.data import load_mtl_data
from compactnn.tasks.mtl.metrics import expert_selection_ari, task_losses, task_metrics
from compactnn.tasks.mtl.model import MTLModel

__all__ = ["RUN_KEYS", "MTLTask", "evaluate_part", "gate_report", "train_mtl"]

def _to(part: MultiTaskPart, idx: Tensor, device: torch.device):
    x = part.x[idx].to(device)
    c = part.x_cat[idx].to(device) if part.x_cat is not None else None
    return x, c, [y[idx].to(device) for y in part.targets]


def evaluate_part(model: MTLModel, part: MultiTaskPart, batch_size: int,
                  device: torch.device) -> dict[str, dict[str, float]]:
    """Per-task metrics on a split: ``{task: {metric: value}}``."""
    outs = predict(model, batched(part.x, part.x_cat, batch_size=batch_size),
                   forward=lambda m, x, c: m(x, c)[0], device=device)
    return {spec.name: task_metrics(spec, out, y)
            for spec, out, y in zip(model.tasks, outs, part.targets, strict=True)}


def _flat(metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    row = {f"{t}_{k}": v for t, m in metrics.items() for k, v in m.items()}
    for key in ("mse", "auc", "accuracy", "loss"):
        vals = [m[key] for m in metrics.values() if key in m and not math.isnan(m[key])]
        if vals:
            row[f"mean_{key}"] = float(np.mean(vals))
    return row


def gate_report(model: MTLModel, data: MultiTaskData, batch_size: int,
                device: torch.device) -> dict[str, Any]:
    """Task x expert weights (batch mean for per-example gates), experts each task uses
    (for at least one example of a validation batch, and on average per example) and,
    when the planted clusters are known, the adjusted Rand index of the tasks' selected
    experts against them."""
    model.eval()
    routing = None
    if not model.moe.is_static:
        idx = torch.arange(min(batch_size, len(data.val)))
        x, c, _ = _to(data.val, idx, device)
        routing = model.features(x, c)
    with torch.no_grad():
        weights = task_expert_weights(model.moe, routing).cpu()
        used = nonzeros_per_task(model.moe, routing).cpu()
        per_example = nonzeros_per_example(model.moe, routing).float().mean()
    out: dict[str, Any] = {"expert_weights": weights.tolist(),
                           "experts_per_task": used.tolist(),
                           "mean_experts_per_task": float(used.float().mean()),
                           "mean_experts_per_example": float(per_example)}
    clusters = data.meta.get("clusters")
    if clusters is not None:
        clusters = np.asarray(clusters)[data.meta.get("task_index",
                                                      list(range(len(clusters))))]
        if len(clusters) == len(model.tasks) and len(model.tasks) > 1:
            out["ari_support"] = expert_selection_ari(weights, clusters, "support")
            out["ari_argmax"] = expert_selection_ari(weights, clusters, "argmax")
    return out


class MTLTask(Task):
    """The multi-task task of ``compactnn mtl`` (see the module doc); ``data`` replaces
    ``cfg.data`` (its tasks are still filtered by ``cfg.data.tasks``)."""

    def __init__(self, cfg: MTLConfig, data: MultiTaskData | None = None) -> None:
        self.cfg, self.data = cfg, data
        # sparse execution leaves unselected experts without gradients
        self.find_unused_parameters = cfg.execution != "dense"

    def setup(self, info: DistInfo) -> None:
        cfg = self.cfg
        self.info = info
        if self.data is None:
            self.data = load_mtl_data(cfg.data, cfg.seed)
        else:
            self.data = self.data.select_tasks(cfg.data.tasks).limit(cfg.data.max_train,
                                                                     cfg.data.max_eval)
        self.data.validate()
        ntask = len(self.data.tasks)
        self.loss_weights = list(cfg.loss.weights) or [1.0] * ntask
        if len(self.loss_weights) != ntask:
            raise ConfigError(f"loss.weights has {len(self.loss_weights)} entries for {ntask} "
                              f"tasks ({', '.join(self.data.task_names[:8])})")
        self.num_train = len(self.data.train)

    def build(self, info: DistInfo, steps_per_epoch: int) -> tuple[nn.Module, Any, Any]:
        cfg, data, o = self.cfg, self.data, self.cfg.optim
        model = MTLModel(data.input_shape, data.tasks, data.cat_cardinalities, cfg.experts,
                         cfg.gate, cfg.towers, execution=cfg.execution).to(info.device)
        gate_ids = {id(p) for p in model.moe.gates.parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids]},
                  {"params": list(model.moe.gates.parameters()),
                   "lr": o.gate_lr if o.gate_lr is not None else o.lr}]
        if o.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, foreach=True)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
        else:
            opt = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
        sched = lr_scheduler(opt, o.schedule, o.epochs * steps_per_epoch, group_scale={
            1: (o.gate_warmup_factor, o.gate_warmup_epochs * steps_per_epoch)})
        self.model = model
        return model, opt, sched

    def train_step(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float], int]:
        xb, cb, ys = _to(self.data.train, batch, self.info.device)
        outputs, aux = model(xb, cb)
        losses = task_losses(self.data.tasks, outputs, ys)  # (tasks,)
        loss = (losses * losses.new_tensor(self.loss_weights)).sum()
        n = len(batch)
        sums = {"loss": float(loss.detach()) * n}
        sums.update({f"{s.name}_loss": lt * n
                     for s, lt in zip(self.data.tasks, losses.detach().tolist(), strict=True)})
        return loss + aux, sums, n

    @property
    def monitor(self) -> str:
        """Early stopping's default column: the mean validation loss of the
        classification tasks, or the mean validation MSE when all tasks regress."""
        if all(t.kind == "regression" for t in self.data.tasks):
            return "val_mean_mse"
        return "val_mean_loss"

    def evaluate(self, split: str) -> dict[str, float]:
        return _flat(self._per_task(split))

    def _per_task(self, split: str) -> dict[str, dict[str, float]]:
        return evaluate_part(self.model, getattr(self.data, split), self.cfg.eval_batch_size,
                             self.info.device)

    def summary(self) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in self.model.parameters()),
                "tasks": self.data.task_names}

    def final_metrics(self) -> dict[str, Any]:
        test, val = self._per_task("test"), self._per_task("val")
        result: dict[str, Any] = {f"test_{k}": v for k, v in _flat(test).items()}
        result.update({f"val_{k}": v for k, v in _flat(val).items()})
        result.update(test=test, val=val)
        result.update(gate_report(self.model, self.data, self.cfg.eval_batch_size,
                                  self.info.device))
        return result

    def write_outputs(self, out: Path, metrics: dict[str, Any]) -> None:
        with open(out / "gate_weights.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["task", *[f"expert_{e}" for e in range(self.model.moe.num_experts)]])
            for name, row in zip(self.data.task_names, metrics["expert_weights"], strict=True):
                w.writerow([name, *row])


def train_mtl(cfg: MTLConfig, dist_info: DistInfo | None = None,
              data: MultiTaskData | None = None,
              on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> Run:
    """Run ``compactnn mtl`` as configured: returns a :class:`~compactnn.engine.Run`
    (``.metrics``, ``.model``, ``.history``) and writes the config, ``metrics.csv``,
    ``gate_weights.csv``, checkpoints, ``model.safetensors`` and ``result.json`` to
    ``cfg.out``.

    ``data``: a :class:`~compactnn.data.multitask.MultiTaskData` of your own, used instead
    of ``cfg.data`` (its tasks are still filtered by ``cfg.data.tasks``).
    ``on_epoch_end(row)``: sees each epoch's metrics row (e.g. to report to a tuner).
    """
    cfg.validate()
    loop = loop_config(cfg, epochs=cfg.optim.epochs, batch_size=cfg.optim.batch_size,
                       desc="mtl", tensorboard=False, on_epoch_end=on_epoch_end)
    return run(MTLTask(cfg, data), loop, dist_info)
