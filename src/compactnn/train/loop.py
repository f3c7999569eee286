"""A small, deterministic supervised training loop with Frobenius decay."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn.regularize import frobenius_decay, param_groups

__all__ = ["FitConfig", "fit", "evaluate", "measure_latency", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (seeds code that uses the legacy global RNG)
    torch.manual_seed(seed)


@dataclass
class FitConfig:
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adamw"  # "adamw" or "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4  # on every parameter but the low-rank factors
    factor_weight_decay: float = 0.0
    frobenius_decay: float = 0.0  # coefficient of compactnn.frobenius_decay
    cosine: bool = True  # cosine learning-rate schedule over all steps
    progress: bool = False
    desc: str = "train"


def _optimizer(model: nn.Module, cfg: FitConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, cfg.factor_weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {cfg.optimizer!r}")


def fit(model: nn.Module, train: Iterable[tuple[Tensor, Tensor]], cfg: FitConfig) -> list[dict]:
    """Train ``model`` with cross-entropy (+ Frobenius decay when its coefficient
    is positive); returns one dict of metrics per epoch."""
    opt = _optimizer(model, cfg)
    steps = cfg.epochs * len(train)  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1)) if cfg.cosine else None
    history = []
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=cfg.desc, unit="step", leave=False)
    for epoch in range(cfg.epochs):
        model.train()
        total, count = 0.0, 0
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            if cfg.frobenius_decay > 0:
                loss = loss + frobenius_decay(model, cfg.frobenius_decay)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
            if bar is not None:
                bar.update()
        history.append({"epoch": epoch + 1, "train_loss": total / max(count, 1)})
    if bar is not None:
        bar.close()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    was_training = model.training
    model.eval()
    loss, correct, count = 0.0, 0, 0
    for x, y in data:
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        count += len(y)
    model.train(was_training)
    return {"loss": loss / max(count, 1), "accuracy": correct / max(count, 1)}


@torch.no_grad()
def measure_latency(model: nn.Module, example: Tensor, repeats: int = 30,
                    warmup: int = 5) -> float:
    """Median wall-clock seconds of one forward pass of ``example`` (eval mode)."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(example)
        times.append(time.perf_counter() - t0)
    model.train(was_training)
    return statistics.median(times)
