"""The training loop shared by every task: resumable, DDP-aware, logged.

A :class:`Task` says *what* is trained (data, model, optimizer, the loss of a
batch, the metrics of a split); :func:`run` does the rest the same way for all:

- One global batch per step, drawn from a permutation that depends only on
  ``(seed, epoch)``; under ``torchrun`` each process takes an equal shard of it
  and DDP averages the gradients, so N processes take the same steps as one.
- Checkpoints (safetensors, atomic) hold the model, optimizer, scheduler, random
  generators, the position inside the epoch and the task's own state, so a run
  stopped at any step (SIGINT/SIGTERM, or ``stop_after_steps``) resumes to the
  same final weights; a checkpoint written with another config is refused.
- One CSV row per epoch (``metrics.csv``), the final metrics in ``result.json``
  and the model in ``model.safetensors``.
- Optional early stopping on a validation column of that row, ending with the
  best epoch's weights (:mod:`compactnn.engine.early_stop`).

With ``out=None`` nothing is written and signals keep their usual effect: the
loop then just trains (see :func:`compactnn.engine.fit`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.config import ConfigError
from compactnn.engine.checkpoint import check_same_config, load_checkpoint, save_checkpoint
from compactnn.engine.control import RunClock, StopFlag, seed_everything
from compactnn.engine.distributed import (
    DistInfo,
    epoch_indices,
    init_distributed,
    shard,
    wrap_model,
)
from compactnn.engine.early_stop import EarlyStopConfig, EarlyStopping
from compactnn.engine.logger import MetricLogger

__all__ = ["LoopConfig", "Run", "Task", "run"]


@dataclass
class LoopConfig:
    """How :func:`run` drives a task (the task-independent part of a config)."""

    epochs: int
    batch_size: int  # global batch (split over processes)
    seed: int | None = 0  # None: leave the random generators as they are
    out: str | None = None  # run folder; None: write nothing, no checkpoints
    resume: bool = True  # continue from out/checkpoint.safetensors when present
    checkpoint_every: int = 1  # epochs
    stop_after_steps: int | None = None  # save and stop early (to test resuming)
    progress: bool = False
    desc: str = "train"  # progress bar label
    device: str = "auto"
    deterministic: bool | None = True  # None: leave torch's setting as it is
    tensorboard: bool = True  # also log to TensorBoard when it is installed
    save_model: bool = True  # write out/model.safetensors at the end
    early_stop: EarlyStopConfig | None = None
    config: dict[str, Any] = field(default_factory=dict)  # saved and checked on resume
    run_keys: frozenset[str] = frozenset()  # config keys a resume may change


@dataclass
class Run:
    """What :func:`run` returns: the final ``metrics`` (JSON-serializable, also in
    ``result.json``), the trained ``model`` and one ``history`` row per epoch."""

    metrics: dict[str, Any]
    model: nn.Module
    history: list[dict[str, Any]]


class Task:
    """What the loop trains. Override :meth:`setup`, :meth:`build`,
    :meth:`train_step` and (for validation rows and final metrics)
    :meth:`evaluate`; the other hooks default to doing nothing."""

    find_unused_parameters = False  # DDP: some steps leave parameters without gradients
    num_train = 0  # training examples (set by setup; the default batches permute them)
    monitor = "val_loss"  # the column early stopping watches when its metric is "auto"

    def setup(self, info: DistInfo) -> None:
        """Load the data (and set :attr:`num_train`)."""
        raise NotImplementedError

    def steps_per_epoch(self, batch_size: int, info: DistInfo) -> int:
        """Optimizer steps per epoch: whole global batches of the training set."""
        if batch_size % info.world_size:
            raise ConfigError(f"optim.batch_size={batch_size} must be divisible by the "
                              f"{info.world_size} processes")
        steps = self.num_train // batch_size
        if steps < 1:
            raise ConfigError(f"optim.batch_size={batch_size} exceeds the {self.num_train} "
                              "training examples")
        return steps

    def build(self, info: DistInfo, steps_per_epoch: int
              ) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        """The model (on ``info.device``), its optimizer and a per-step LR scheduler
        (or ``None``)."""
        raise NotImplementedError

    def batches(self, epoch: int, start: int, batch_size: int, seed: int,
                info: DistInfo) -> Iterator[Any]:
        """This process's batches of ``epoch`` from batch number ``start`` on: by
        default index tensors, shards of a ``(seed, epoch)`` permutation."""
        perm = epoch_indices(self.num_train, seed, epoch)
        for b in range(start, len(perm) // batch_size):
            yield shard(perm[b * batch_size:(b + 1) * batch_size], info)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float], int]:
        """Forward one batch through ``model`` (possibly DDP-wrapped): returns the
        objective to minimize, sums of per-example statistics to average over the
        epoch (``{"loss": ...}`` is shown in the progress bar), and the batch size."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch."""

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Flat metrics of the model on ``split`` (``"val"`` each epoch)."""
        return {}

    def early_stop_from(self) -> int:
        """The first epoch (0-based) whose validation result early stopping may use
        (later than 0 when earlier weights are not valid final weights, e.g. before
        pruning reaches its budget)."""
        return 0

    def epoch_extras(self) -> dict[str, Any]:
        """More columns of the epoch's CSV row."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Entries of the result of every run, finished or not."""
        return {}

    def final_metrics(self) -> dict[str, Any]:
        """Entries of the result of a finished run (test metrics...)."""
        return {}

    def on_new_run(self, out: Path) -> None:
        """Write files of a fresh run (main process only)."""

    def write_outputs(self, out: Path, metrics: dict[str, Any]) -> None:
        """Write more files at the end of a finished run (main process only)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint besides the model, optimizer and scheduler."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _progress(cfg: LoopConfig, info: DistInfo, total: int, initial: int):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=cfg.desc, unit="step")


def run(task: Task, cfg: LoopConfig, info: DistInfo | None = None) -> Run:
    """Train ``task`` as configured (see the module doc); returns a :class:`Run`."""
    info = info or init_distributed(cfg.device)
    if cfg.deterministic is not None:
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    if cfg.seed is not None:
        seed_everything(cfg.seed)
    task.setup(info)
    steps_per_epoch = task.steps_per_epoch(cfg.batch_size, info)
    out = Path(cfg.out) if cfg.out is not None else None
    if out is not None and info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    model, opt, sched = task.build(info, steps_per_epoch)

    ckpt = out / "checkpoint.safetensors" if out is not None else None
    epoch, batch_in_epoch, step = 0, 0, 0
    running: dict[str, Any] = {"count": 0, "sums": {}}
    resumed: dict[str, Any] | None = None
    early = _early_stopping(task, cfg.early_stop)
    stopped_early = False
    if ckpt is not None and cfg.resume and ckpt.exists():
        check_same_config(ckpt, cfg.config, set(cfg.run_keys))
        state, extra = load_checkpoint(ckpt, model, opt, sched, map_location=info.device)
        epoch, batch_in_epoch, step = state["epoch"], state["batch"], state["step"]
        running, resumed = state["running"], state
        task.load_state_dict(extra.get("task", {}))
        if early is not None:
            early.load_state_dict(extra["early_stop"])
            stopped_early = bool(state.get("stopped_early", False))
    elif out is not None and info.is_main:
        (out / "config.json").write_text(json.dumps(cfg.config, indent=2))
        task.on_new_run(out)

    logger = MetricLogger(out, enabled=info.is_main, tensorboard=cfg.tensorboard) \
        if out is not None else None
    if logger is not None:
        logger.truncate_after(step)
    ddp_model = wrap_model(model, info, task.find_unused_parameters)
    clock = RunClock(resumed)

    def save(reason: str) -> None:
        if ckpt is None or not info.is_main:
            return
        save_checkpoint(ckpt, model, opt, sched, state={
            "epoch": epoch, "batch": batch_in_epoch, "step": step, "running": running,
            "config": cfg.config, "reason": reason, "seconds": clock(),
            "stopped_early": stopped_early},
            extra={"task": task.state_dict(),
                   **({"early_stop": early.state_dict()} if early is not None else {})})

    bar = _progress(cfg, info, cfg.epochs * steps_per_epoch, step)
    history: list[dict[str, Any]] = []
    stopped = False
    with StopFlag(enabled=out is not None) as flag:
        while epoch < cfg.epochs and not stopped_early:
            if batch_in_epoch == 0:
                task.on_epoch_start(epoch)
            ddp_model.train()
            for batch in task.batches(epoch, batch_in_epoch, cfg.batch_size,
                                      cfg.seed or 0, info):
                objective, sums, n = task.train_step(ddp_model, batch)
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                task.after_step()
                for k, v in sums.items():
                    running["sums"][k] = running["sums"].get(k, 0.0) + v
                running["count"] += n
                batch_in_epoch += 1
                step += 1
                if bar is not None:
                    bar.update()
                    loss = running["sums"].get("loss", 0.0) / max(running["count"], 1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4f}")
                if flag.raised or (cfg.stop_after_steps is not None
                                   and step >= cfg.stop_after_steps):
                    stopped = True
                    break
            if stopped:
                save("stopped")
                break
            row = _epoch_row(task, epoch, step, _lr(opt), running)
            row["seconds"] = clock()
            if logger is not None:
                logger.log(row)
            history.append(row)
            if early is not None and epoch >= task.early_stop_from():
                stopped_early = early.update(row, epoch + 1, model)
            epoch, batch_in_epoch, running = epoch + 1, 0, {"count": 0, "sums": {}}
            if stopped_early or epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
                save("early_stop" if stopped_early else "epoch")
    if bar is not None:
        bar.close()
    if logger is not None:
        logger.close()
    metrics: dict[str, Any] = {"finished": not stopped, "epoch": epoch, "step": step,
                               **task.summary()}
    if early is not None:
        metrics.update(early_stopped=stopped_early, **early.summary())
    if not stopped:
        if early is not None and cfg.early_stop.restore_best:
            early.restore(model)
        metrics.update(task.final_metrics())
        metrics["train_seconds"] = clock()
        if out is not None and info.is_main:
            _write_outputs(task, out, model, metrics, cfg.save_model)
    return Run(metrics=metrics, model=model, history=history)


def _early_stopping(task: Task, cfg: EarlyStopConfig | None) -> EarlyStopping | None:
    if cfg is None or not cfg.enabled:
        return None
    metric = task.monitor if cfg.metric == "auto" else cfg.metric
    return EarlyStopping(metric, cfg.patience, cfg.mode, cfg.min_delta)


def _epoch_row(task: Task, epoch: int, step: int, lr: float,
               running: dict[str, Any]) -> dict[str, Any]:
    count = max(running["count"], 1)
    row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": lr}
    row.update({f"train_{k}": v / count for k, v in running["sums"].items()})
    row.update({f"val_{k}": v for k, v in task.evaluate("val").items()})
    row.update(task.epoch_extras())
    return row


def _write_outputs(task: Task, out: Path, model: nn.Module, metrics: dict[str, Any],
                   save_model: bool) -> None:
    task.write_outputs(out, metrics)
    if save_model:
        from compactnn.io import save_model as save

        save(model, out / "model.safetensors")
    (out / "result.json").write_text(json.dumps(metrics, indent=2))
