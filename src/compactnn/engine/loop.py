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

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.engine.checkpoint import check_same_config, load_checkpoint, save_checkpoint
from compactnn.engine.checkpoint_checks import check_loop_state
from compactnn.engine.control import RunClock, StopFlag, TrainingDiverged, seed_everything
from compactnn.engine.distributed import (
    DistInfo,
    init_distributed,
    wrap_model,
)
from compactnn.engine.early_stop import EarlyStopConfig, EarlyStopping
from compactnn.engine.logger import MetricLogger
from compactnn.engine.run_folder import RunFolder, RunFolderError
from compactnn.engine.task import Task

__all__ = ["LoopConfig", "Run", "run"]


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
    # called with each epoch's row (after it is logged): e.g. a tuner's report/prune hook
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None
    config: dict[str, Any] = field(default_factory=dict)  # saved and checked on resume
    run_keys: frozenset[str] = frozenset()  # config keys a resume may change


@dataclass
class Run:
    """What :func:`run` returns: the final ``metrics`` (JSON-serializable, also in
    ``result.json``), the trained ``model`` and one ``history`` row per epoch."""

    metrics: dict[str, Any]
    model: nn.Module
    history: list[dict[str, Any]]


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def _progress(cfg: LoopConfig, info: DistInfo, total: int, initial: int):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=cfg.desc, unit="step")


def run(task: Task, cfg: LoopConfig, info: DistInfo | None = None) -> Run:
    """Train ``task`` as configured (see the module doc); returns a :class:`Run`.

    Raises :class:`~compactnn.engine.run_folder.RunFolderError` before any work
    when ``out`` cannot be used (or another run holds it), and
    :class:`~compactnn.engine.control.TrainingDiverged` when the loss becomes
    NaN or infinite (the last checkpoint written before it is kept)."""
    info = info or init_distributed(cfg.device)
    folder = RunFolder(cfg.out, info.is_main) if cfg.out is not None else None
    with folder if folder is not None else contextlib.nullcontext():
        return _Loop(task, cfg, info, folder).run()


class _Loop:
    """One call of :func:`run`: the position in training and what is saved."""

    def __init__(self, task: Task, cfg: LoopConfig, info: DistInfo,
                 folder: RunFolder | None) -> None:
        self.task, self.cfg, self.info, self.folder = task, cfg, info, folder
        self.ckpt = folder.path / "checkpoint.safetensors" if folder is not None else None
        self.epoch = self.batch = self.step = 0
        self.saved_step: int | None = None
        self.running: dict[str, Any] = {"count": 0, "sums": {}}
        self.early: EarlyStopping | None = None  # made after setup: the task names its metric
        self.stopped_early = False

    def run(self) -> Run:
        task, cfg, info = self.task, self.cfg, self.info
        if cfg.deterministic is not None:
            torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        task.setup(info)
        self.steps_per_epoch = task.steps_per_epoch(cfg.batch_size, info)
        self.model, self.opt, self.sched = task.build(info, self.steps_per_epoch)
        self.early = _early_stopping(task, cfg.early_stop)
        resumed = self._resume()
        logger = None
        if self.folder is not None:
            logger = MetricLogger(self.folder.path, enabled=info.is_main,
                                  tensorboard=cfg.tensorboard)
            logger.truncate_after(self.step)
        self.clock = RunClock(resumed)
        bar = _progress(cfg, info, cfg.epochs * self.steps_per_epoch, self.step)
        try:
            history, signum = self._train(logger, bar)
        finally:
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
        return self._finish(history, signum)

    def _resume(self) -> dict[str, Any] | None:
        """Load the checkpoint of an interrupted run, or start a fresh one."""
        task, cfg, info, ckpt = self.task, self.cfg, self.info, self.ckpt
        if ckpt is None:
            return None
        if not (cfg.resume and ckpt.exists()):
            if info.is_main:
                self.folder.write_json("config.json", cfg.config)
                task.on_new_run(self.folder.path)
            return None
        check_same_config(ckpt, cfg.config, set(cfg.run_keys))
        state, extra = load_checkpoint(ckpt, self.model, self.opt, self.sched,
                                       map_location=info.device)
        where = f"checkpoint {ckpt}"
        check_loop_state(state, where)
        if state["batch"] > self.steps_per_epoch or state["epoch"] > cfg.epochs:
            raise ValueError(f"{where}: its position (epoch {state['epoch']}, batch "
                             f"{state['batch']}) is outside this run")
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.running, self.saved_step = state["running"], self.step
        if info.is_main:  # say so: a resumed run otherwise looks like a fresh one
            print(f"resuming from epoch {self.epoch + 1} (step {self.step}) of "
                  f"{self.folder.path}", file=sys.stderr, flush=True)
        try:
            task.load_state_dict(extra.get("task", {}))
            if self.early is not None:
                if "early_stop" not in extra:
                    raise ValueError("the early stopping state is missing")
                self.early.load_state_dict(extra["early_stop"], self.model)
                self.stopped_early = bool(state.get("stopped_early", False))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
        return state

    def _save(self, reason: str) -> None:
        if self.ckpt is None:
            return
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()
                   if p.is_floating_point()):
            # a checkpoint of NaN weights would replace the last good one
            raise TrainingDiverged(
                f"the weights became non-finite by step {self.step} (epoch {self.epoch}); "
                f"training stopped and {self._last_checkpoint()}. Lower optim.lr or check "
                "the data and the config, then start again in another out folder")
        if not self.info.is_main:  # every process checks (the same weights); one writes
            return
        state = {"epoch": self.epoch, "batch": self.batch, "step": self.step,
                 "running": self.running, "config": self.cfg.config, "reason": reason,
                 "seconds": self.clock(), "stopped_early": self.stopped_early}
        extra = {"task": self.task.state_dict()}
        if self.early is not None:
            extra["early_stop"] = self.early.state_dict()
        try:
            save_checkpoint(self.ckpt, self.model, self.opt, self.sched, state=state,
                            extra=extra)
        except OSError as e:
            raise RunFolderError(
                f"cannot write the checkpoint {self.ckpt} at step {self.step}: "
                f"{e.strerror or e}; {self._last_checkpoint()}") from None
        self.saved_step = self.step

    def _last_checkpoint(self) -> str:
        if self.saved_step is None:
            return "no checkpoint of this run was written"
        return f"the last checkpoint kept is the one of step {self.saved_step}"

    def _check_finite(self, objective: Tensor) -> None:
        ok = torch.isfinite(objective.detach()).to(torch.int32)
        if self.info.enabled:  # every process must take the same branch
            import torch.distributed as dist

            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if not bool(ok):
            raise TrainingDiverged(
                f"the training loss became {float(objective.detach())} at step {self.step + 1} "
                f"(epoch {self.epoch + 1}); training stopped and "
                f"{self._last_checkpoint()}. Lower optim.lr or check the data and the "
                "config, then start again in another out folder (or with resume=false)")

    def _train(self, logger: MetricLogger | None, bar) -> tuple[list[dict[str, Any]], int | None]:
        task, cfg, info = self.task, self.cfg, self.info
        ddp_model = wrap_model(self.model, info, task.find_unused_parameters)
        history: list[dict[str, Any]] = []
        with StopFlag(enabled=self.folder is not None) as flag:
            while self.epoch < cfg.epochs and not self.stopped_early:
                if self.batch == 0:
                    task.on_epoch_start(self.epoch)
                ddp_model.train()
                for batch in task.batches(self.epoch, self.batch, cfg.batch_size,
                                          cfg.seed or 0, info):
                    objective, sums, n = task.train_step(ddp_model, batch)
                    self._check_finite(objective)
                    self.opt.zero_grad(set_to_none=True)
                    objective.backward()
                    self.opt.step()
                    if self.sched is not None:
                        self.sched.step()
                    task.after_step()
                    for k, v in sums.items():
                        self.running["sums"][k] = self.running["sums"].get(k, 0.0) + v
                    self.running["count"] += n
                    self.batch += 1
                    self.step += 1
                    if bar is not None:
                        bar.update()
                        loss = self.running["sums"].get("loss", 0.0) / max(
                            self.running["count"], 1)
                        bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}")
                    if flag.raised or (cfg.stop_after_steps is not None
                                       and self.step >= cfg.stop_after_steps):
                        self._save("stopped")
                        return history, (flag.signum if flag.raised else 0)
                self._end_epoch(logger, history)
        return history, None

    def _end_epoch(self, logger: MetricLogger | None, history: list[dict[str, Any]]) -> None:
        row = _epoch_row(self.task, self.epoch, self.step, _lr(self.opt), self.running)
        row["seconds"] = self.clock()
        if logger is not None:
            logger.log(row)
        history.append(row)
        if self.cfg.on_epoch_end is not None:
            self.cfg.on_epoch_end(row)
        if self.early is not None and self.epoch >= self.task.early_stop_from():
            self.stopped_early = self.early.update(row, self.epoch + 1, self.model)
        self.epoch, self.batch = self.epoch + 1, 0
        self.running = {"count": 0, "sums": {}}
        if self.stopped_early or self.epoch % self.cfg.checkpoint_every == 0 \
                or self.epoch == self.cfg.epochs:
            self._save("early_stop" if self.stopped_early else "epoch")

    def _finish(self, history: list[dict[str, Any]], signum: int | None) -> Run:
        """``signum``: None when training ran to its end, 0 when ``stop_after_steps``
        stopped it, else the signal that did."""
        stopped = signum is not None
        metrics: dict[str, Any] = {"finished": not stopped, "epoch": self.epoch,
                                   "step": self.step, **self.task.summary()}
        if signum:
            metrics["signal"] = signum
        if self.early is not None:
            metrics.update(early_stopped=self.stopped_early, **self.early.summary())
        if not stopped:
            if self.early is not None and self.cfg.early_stop.restore_best:
                self.early.restore(self.model)
            metrics.update(self.task.final_metrics())
            metrics["train_seconds"] = self.clock()
            if self.folder is not None and self.info.is_main:
                self._write_outputs(metrics)
        return Run(metrics=metrics, model=self.model, history=history)

    def _write_outputs(self, metrics: dict[str, Any]) -> None:
        out = self.folder.path
        self.task.write_outputs(out, metrics)
        if self.cfg.save_model:
            from compactnn.io import save_model

            try:
                save_model(self.model, out / "model.safetensors")
            except OSError as e:
                raise RunFolderError(f"cannot write {out / 'model.safetensors'}: "
                                     f"{e.strerror or e}") from None
        self.folder.write_json("result.json", metrics)


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
