"""``compactnn mtl``: multi-task training of mixture-of-experts models (DSelect-k, Top-k or
softmax gates) with a typed config, exact resume and DDP.

The loop mirrors :mod:`compactnn.train.trainer`: one global batch per step from a
permutation that depends only on ``(seed, epoch)``, split equally over ``torchrun``
processes (DDP averages the gradients, so N processes take the same steps as one);
checkpoints (safetensors) hold the model, optimizer, scheduler, random generators and the
position inside the epoch, so a run stopped at any step (SIGINT/SIGTERM or
``stop_after_steps``) resumes to the same final weights, and a checkpoint written with
another config is refused.

The loss of a step is ``sum_t w_t L_t + aux``: ``L_t`` is task ``t``'s mean loss over its
non-missing rows (BCE-with-logits, cross-entropy or MSE by task kind), ``w_t`` its weight
(``loss.weights``, default 1) and ``aux`` the gates' regularizers (DSelect-k entropy and
unreachable-code penalty, Top-k balancing losses; zero for softmax). Under DDP the task
losses and ``reduction="mean"`` regularizers average exactly over the processes; the
noisy Top-k gate draws its noise per process, so Top-k runs are not bit-identical to a
single process.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compactnn.data.multitask import MultiTaskData, MultiTaskPart
from compactnn.moe import nonzeros_per_example, nonzeros_per_task, task_expert_weights
from compactnn.mtl.config import DataConfig, MTLConfig
from compactnn.mtl.metrics import expert_selection_ari, task_loss, task_metrics
from compactnn.mtl.model import MTLModel
from compactnn.train.checkpoint import (
    RunClock,
    StopFlag,
    check_same_config,
    load_checkpoint,
    save_checkpoint,
)
from compactnn.train.config import ConfigError, config_to_dict
from compactnn.train.distributed import DistInfo, init_distributed, shard
from compactnn.train.logger import MetricLogger
from compactnn.train.loop import seed_everything

__all__ = ["evaluate_part", "known_tasks", "load_mtl_data", "train_mtl"]

# Keys that may change between an interrupted run and its resume.
_RUN_KEYS = {"resume", "stop_after_steps", "progress", "out", "device", "save_model"}


def known_tasks(cfg: DataConfig) -> list[str]:
    """The task names of the configured data set (without loading it)."""
    if cfg.name == "synthetic":
        return ["t0", "t1"]
    if cfg.name == "clustered":
        return [f"t{i}" for i in range(cfg.num_tasks)]
    if cfg.name == "multi_fashion_mnist":
        from compactnn.data.multi_fashion_mnist import MULTI_FASHION_TASKS

        return list(MULTI_FASHION_TASKS)
    if cfg.name == "census":
        from compactnn.data.census import CENSUS_TASKS

        return list(CENSUS_TASKS)
    from compactnn.data.movielens import MOVIELENS_TASKS

    return list(MOVIELENS_TASKS)


def load_mtl_data(cfg: DataConfig, seed: int) -> MultiTaskData:
    """The configured data set, restricted to ``cfg.tasks`` and the row limits."""
    known = known_tasks(cfg)
    unknown = [t for t in cfg.tasks if t not in known]
    if unknown:
        shown = known if len(known) <= 8 else [*known[:4], "...", known[-1]]
        raise ConfigError(f"data.tasks: unknown task {unknown[0]!r} for data.name="
                          f"{cfg.name}; known tasks: {', '.join(shown)}")
    s = cfg.seed if cfg.seed is not None else seed
    if cfg.name == "synthetic":
        from compactnn.data.synthetic import make_mmoe_synthetic

        data = make_mmoe_synthetic(cfg.n_train, cfg.n_val, cfg.n_test, cfg.input_dim or 100,
                                   cfg.correlation, noise_std=cfg.noise_std, seed=s)
    elif cfg.name == "clustered":
        from compactnn.data.synthetic import make_clustered_synthetic

        data = make_clustered_synthetic(cfg.num_tasks, cfg.num_clusters, cfg.n_train,
                                        cfg.n_val, cfg.n_test, cfg.input_dim,
                                        cfg.correlation, noise_std=cfg.noise_std, seed=s)
    elif cfg.name == "multi_fashion_mnist":
        from compactnn.data.multi_fashion_mnist import load_multi_fashion_mnist

        data = load_multi_fashion_mnist(cfg.root, cfg.val_size, seed=s,
                                        max_train=cfg.max_train, max_val=cfg.max_eval,
                                        max_test=cfg.max_eval)
    elif cfg.name == "census":
        from compactnn.data.census import load_census_income

        data = load_census_income(cfg.root, seed=s, max_train=cfg.max_train,
                                  max_eval=cfg.max_eval)
    else:
        from compactnn.data.movielens import load_movielens

        data = load_movielens(negatives=cfg.negatives, seed=s,
                              rating_threshold=cfg.rating_threshold,
                              max_train=cfg.max_train, max_eval=cfg.max_eval)
    return data.select_tasks(cfg.tasks).limit(cfg.max_train, cfg.max_eval)


def _to(part: MultiTaskPart, idx: Tensor, device: torch.device):
    x = part.x[idx].to(device)
    c = part.x_cat[idx].to(device) if part.x_cat is not None else None
    return x, c, [y[idx].to(device) for y in part.targets]


@torch.no_grad()
def predict(model: MTLModel, part: MultiTaskPart, batch_size: int,
            device: torch.device) -> list[Tensor]:
    """Every task's outputs on a whole split (eval mode), on the CPU."""
    was = model.training
    model.eval()
    outs: list[list[Tensor]] = [[] for _ in model.tasks]
    for i in range(0, len(part), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(part)))
        x, c, _ = _to(part, idx, device)
        for t, o in enumerate(model(x, c)[0]):
            outs[t].append(o.cpu())
    model.train(was)
    return [torch.cat(o) if o else torch.zeros(0) for o in outs]


def evaluate_part(model: MTLModel, part: MultiTaskPart, batch_size: int,
                  device: torch.device) -> dict[str, dict[str, float]]:
    """Per-task metrics on a split: ``{task: {metric: value}}``."""
    outs = predict(model, part, batch_size, device)
    return {spec.name: task_metrics(spec, out, y)
            for spec, out, y in zip(model.tasks, outs, part.targets, strict=True)}


def _flat(prefix: str, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    row = {f"{prefix}_{t}_{k}": v for t, m in metrics.items() for k, v in m.items()}
    for key in ("mse", "auc", "accuracy", "loss"):
        vals = [m[key] for m in metrics.values() if key in m and not math.isnan(m[key])]
        if vals:
            row[f"{prefix}_mean_{key}"] = float(np.mean(vals))
    return row


def _lr_lambda(schedule: str, total_steps: int):
    def f(step: int) -> float:
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))

    return f


def _wrap(model: nn.Module, info: DistInfo, execution: str) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.local_rank] if info.device.type == "cuda" else None
    # sparse execution leaves unselected experts without gradients
    return DistributedDataParallel(model, device_ids=ids,
                                   find_unused_parameters=execution != "dense")


def gate_report(model: MTLModel, data: MultiTaskData, batch_size: int,
                device: torch.device) -> dict[str, Any]:
    """Task x expert weights (batch mean for per-example gates), experts each task uses
    (for at least one example of a validation batch, and on average per example) and,
    when the planted clusters are known, the adjusted Rand index of the tasks' selected
    experts against them."""
    model.eval()
    routing = None
    if not all(g.is_static for g in model.moe.gates):
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


def train_mtl(cfg: MTLConfig, dist_info: DistInfo | None = None,
              data: MultiTaskData | None = None) -> dict[str, Any]:
    """Run multi-task training as configured; returns the final metrics (and writes them,
    the config, ``metrics.csv``, ``gate_weights.csv``, checkpoints and
    ``model.safetensors`` to ``cfg.out``).

    ``data``: a :class:`~compactnn.data.multitask.MultiTaskData` of your own, used instead
    of ``cfg.data`` (its tasks are still filtered by ``cfg.data.tasks``).
    """
    cfg.validate()
    info = dist_info or init_distributed(cfg.device)
    out = Path(cfg.out)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    seed_everything(cfg.seed)

    if data is None:
        data = load_mtl_data(cfg.data, cfg.seed)
    else:
        data = data.select_tasks(cfg.data.tasks).limit(cfg.data.max_train, cfg.data.max_eval)
    data.validate()
    ntask = len(data.tasks)
    weights_cfg = list(cfg.loss.weights) or [1.0] * ntask
    if len(weights_cfg) != ntask:
        raise ConfigError(f"loss.weights has {len(weights_cfg)} entries for {ntask} tasks "
                          f"({', '.join(data.task_names[:8])})")
    n_train = len(data.train)
    batch = cfg.optim.batch_size
    if batch % info.world_size:
        raise ConfigError(f"optim.batch_size={batch} must be divisible by the "
                          f"{info.world_size} processes")
    steps_per_epoch = n_train // batch
    if steps_per_epoch < 1:
        raise ConfigError(f"optim.batch_size={batch} exceeds the {n_train} training examples")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)

    model = MTLModel(data.input_shape, data.tasks, data.cat_cardinalities, cfg.experts,
                     cfg.gate, cfg.towers, execution=cfg.execution).to(info.device)
    o = cfg.optim
    gate_ids = {id(p) for p in model.moe.gates.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in gate_ids]},
              {"params": list(model.moe.gates.parameters()),
               "lr": o.gate_lr if o.gate_lr is not None else o.lr}]
    if o.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum,
                                                     weight_decay=o.weight_decay, foreach=True)
    elif o.name == "adamw":
        opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
    else:
        opt = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(o.schedule, o.epochs * steps_per_epoch))

    ckpt = out / "checkpoint.safetensors"
    epoch, batch_in_epoch, step = 0, 0, 0
    running = [0.0, 0] + [0.0] * ntask  # loss sum, rows, per-task loss sums
    resumed: dict[str, Any] | None = None
    config_json = config_to_dict(cfg)
    if cfg.resume and ckpt.exists():
        check_same_config(ckpt, config_json, _RUN_KEYS)
        state, _ = load_checkpoint(ckpt, model, opt, sched, map_location=info.device)
        epoch, batch_in_epoch, step = state["epoch"], state["batch"], state["step"]
        running = state["running"]
        resumed = state
    elif info.is_main:
        (out / "config.json").write_text(json.dumps(config_json, indent=2))

    logger = MetricLogger(out, enabled=info.is_main, tensorboard=False)
    logger.truncate_after(step)
    ddp_model = _wrap(model, info, cfg.execution)

    def save(reason: str) -> None:
        if info.is_main:
            save_checkpoint(ckpt, model, opt, sched, state={
                "epoch": epoch, "batch": batch_in_epoch, "step": step, "running": running,
                "config": config_json, "reason": reason, "seconds": elapsed()})

    bar = None
    if cfg.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=o.epochs * steps_per_epoch, initial=step, desc="mtl", unit="step")
    elapsed = RunClock(resumed)
    stopped = False
    with StopFlag() as flag:
        while epoch < o.epochs:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(n_train, generator=gen)
            ddp_model.train()
            while batch_in_epoch < steps_per_epoch:
                idx = shard(perm[batch_in_epoch * batch:(batch_in_epoch + 1) * batch], info)
                xb, cb, ys = _to(data.train, idx, info.device)
                outputs, aux = ddp_model(xb, cb)
                losses = [task_loss(spec, out_t, y)
                          for spec, out_t, y in zip(data.tasks, outputs, ys, strict=True)]
                loss = sum(w * lt for w, lt in zip(weights_cfg, losses, strict=True))
                full = loss + aux
                opt.zero_grad(set_to_none=True)
                full.backward()
                opt.step()
                sched.step()
                n = len(idx)
                running[0] += float(loss.detach()) * n
                running[1] += n
                for t, lt in enumerate(losses):
                    running[2 + t] += float(lt.detach()) * n
                batch_in_epoch += 1
                step += 1
                if bar is not None:
                    bar.update()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running[0] / running[1]:.4f}")
                if flag.raised or (cfg.stop_after_steps is not None
                                   and step >= cfg.stop_after_steps):
                    stopped = True
                    break
            if stopped:
                save("stopped")
                break
            val = evaluate_part(model, data.val, cfg.eval_batch_size, info.device)
            row: dict[str, Any] = {"epoch": epoch + 1, "step": step,
                                   "lr": sched.get_last_lr()[0],
                                   "train_loss": running[0] / max(running[1], 1)}
            row.update({f"train_{s.name}_loss": running[2 + t] / max(running[1], 1)
                        for t, s in enumerate(data.tasks)})
            row.update(_flat("val", val))
            row["seconds"] = elapsed()
            logger.log(row)
            epoch, batch_in_epoch, running = epoch + 1, 0, [0.0, 0] + [0.0] * ntask
            if epoch % cfg.checkpoint_every == 0 or epoch == o.epochs:
                save("epoch")
    if bar is not None:
        bar.close()
    logger.close()
    train_seconds = elapsed()
    result: dict[str, Any] = {"finished": not stopped, "epoch": epoch, "step": step,
                              "params": sum(p.numel() for p in model.parameters()),
                              "tasks": data.task_names}
    if not stopped:
        test = evaluate_part(model, data.test, cfg.eval_batch_size, info.device)
        val = evaluate_part(model, data.val, cfg.eval_batch_size, info.device)
        result.update(_flat("test", test))
        result.update(_flat("val", val))
        result.update(test=test, val=val, train_seconds=train_seconds)
        result.update(gate_report(model, data, cfg.eval_batch_size, info.device))
        if info.is_main:
            _write_outputs(out, model, result, data, cfg.save_model)
    result["model"] = model
    return result


def _write_outputs(out: Path, model: MTLModel, result: dict[str, Any], data: MultiTaskData,
                   save_model: bool) -> None:
    import csv

    with open(out / "gate_weights.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", *[f"expert_{e}" for e in range(model.moe.num_experts)]])
        for name, row in zip(data.task_names, result["expert_weights"], strict=True):
            w.writerow([name, *row])
    if save_model:
        from compactnn.io import save_model as save

        save(model, out / "model.safetensors")
    (out / "result.json").write_text(json.dumps(result, indent=2))
