"""Train a classifier on ready-made batches with the engine's loop: for
experiments that only need a model trained, without a run folder.

``fit(model, loader, FitConfig(...))`` runs :func:`compactnn.engine.run` with
a task whose batches come from ``loader`` (a DataLoader or any re-iterable of
``(x, y)`` batches), cross-entropy plus optional Frobenius decay, AdamW or
Nesterov SGD, and an optional cosine schedule over all steps. Nothing is
written and the random generators are not reseeded: seed before calling.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_bool, check_choice, check_float, check_int, check_module
from compactnn.engine.distributed import DistInfo
from compactnn.engine.loop import LoopConfig, Task, run
from compactnn.engine.schedules import lr_scheduler
from compactnn.regularize import frobenius_decay, param_groups

__all__ = ["FitConfig", "fit"]


@dataclass
class FitConfig:
    epochs: int = 10
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4  # on every parameter but the low-rank factors
    factor_weight_decay: float = 0.0
    frobenius_decay: float = 0.0  # coefficient of compactnn.frobenius_decay
    cosine: bool = True  # cosine learning-rate schedule over all steps
    progress: bool = False
    desc: str = "train"

    def validate(self) -> None:
        check_int("epochs", self.epochs, minimum=1)
        check_float("lr", self.lr, minimum=0.0, min_inclusive=False)
        check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        check_float("momentum", self.momentum, minimum=0.0, maximum=1.0, max_inclusive=False)
        check_float("weight_decay", self.weight_decay, minimum=0.0)
        check_float("factor_weight_decay", self.factor_weight_decay, minimum=0.0)
        check_float("frobenius_decay", self.frobenius_decay, minimum=0.0)
        check_bool("cosine", self.cosine)


class _FitTask(Task):
    def __init__(self, model: nn.Module, data: Iterable[tuple[Tensor, Tensor]],
                 cfg: FitConfig) -> None:
        self.model, self.data, self.cfg = model, data, cfg

    def setup(self, info: DistInfo) -> None:
        pass

    def steps_per_epoch(self, batch_size: int, info: DistInfo) -> int:
        steps = len(self.data)  # type: ignore[arg-type]
        if steps < 1:
            raise ValueError("fit: the training data has no batches")
        return steps

    def build(self, info: DistInfo, steps_per_epoch: int) -> tuple[nn.Module, Any, Any]:
        c = self.cfg
        groups = param_groups(self.model, c.weight_decay, c.factor_weight_decay)
        if c.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=c.lr)
        else:
            opt = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, nesterov=c.momentum > 0)
        sched = (lr_scheduler(opt, "cosine", c.epochs * steps_per_epoch) if c.cosine
                 else None)
        return self.model, opt, sched

    def batches(self, epoch: int, start: int, batch_size: int, seed: int,
                info: DistInfo) -> Iterator[Any]:
        for i, batch in enumerate(self.data):
            if i >= start:
                yield batch

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float], int]:
        x, y = batch
        loss = F.cross_entropy(model(x), y)
        if self.cfg.frobenius_decay > 0:
            loss = loss + frobenius_decay(self.model, self.cfg.frobenius_decay)
        return loss, {"loss": float(loss.detach()) * len(y)}, len(y)


def fit(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]],
        cfg: FitConfig | None = None) -> list[dict[str, Any]]:
    """Train ``model`` in place on ``data`` (see the module doc); returns one
    ``{"epoch", "step", "lr", "train_loss"}`` row per epoch (``train_loss``: the
    epoch's mean objective, Frobenius decay included)."""
    check_module("model", model)
    cfg = cfg or FitConfig()
    cfg.validate()
    loop = LoopConfig(epochs=cfg.epochs, batch_size=1, seed=None, out=None,
                      progress=cfg.progress, desc=cfg.desc, device="cpu",
                      deterministic=None)
    history = run(_FitTask(model, data, cfg), loop, DistInfo()).history
    return [{k: row[k] for k in ("epoch", "step", "lr", "train_loss")} for row in history]
