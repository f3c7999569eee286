"""``compactnn train``: supervised training of dense, low-rank and sparse
classifiers with a typed config (:mod:`compactnn.tasks.classify_config`),
exact resume and DDP, as a task of the engine's loop
(:func:`compactnn.engine.run`).

The model is built dense, then factorized (``lowrank``) or driven by a sparse
baseline (``sparse``); the loss of a step is the cross-entropy (with label
smoothing) plus the Frobenius decay of the low-rank factors when its
coefficient is positive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._modules import unwrap
from compactnn.config import ConfigError
from compactnn.engine import (
    DistInfo,
    Run,
    Task,
    batched,
    evaluate,
    lr_scheduler,
    run,
)
from compactnn.engine.settings import RUN_KEYS, loop_config
from compactnn.regularize import frobenius_decay, param_groups
from compactnn.surgery import dense_first_last_exclude, factorize
from compactnn.tasks.classify_config import (
    DataConfig,
    LowRankConfig,
    ModelConfig,
    OptimConfig,
    SparseConfig,
    TrainConfig,
)

__all__ = ["RUN_KEYS", "ClassifyTask", "DataConfig", "LowRankConfig", "ModelConfig",
           "OptimConfig", "SparseConfig", "TrainConfig", "build_model", "count_nonzero_params",
           "load_data", "train"]


def load_data(cfg: DataConfig, seed: int):
    """The configured data set as a :class:`~compactnn.data.TensorSplit`."""
    if cfg.name == "digits":
        from compactnn.data import load_digits_split

        split = load_digits_split(seed=seed)
        for part in ("train", "val", "test"):  # images, as the ResNet expects
            x = getattr(split, f"x_{part}")
            setattr(split, f"x_{part}", x.reshape(-1, 1, 8, 8))
    else:
        from compactnn.data.fashion_mnist import load_fashion_mnist

        split = load_fashion_mnist(root=cfg.root, val_size=cfg.val_size, seed=seed)
    if cfg.max_train is not None:
        split.x_train, split.y_train = split.x_train[:cfg.max_train], split.y_train[:cfg.max_train]
    return split


def build_model(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The dense model named by ``cfg``."""
    if cfg.name == "mlp":
        from compactnn.models import MLP, MLPConfig

        return MLP(MLPConfig(in_features=math.prod(image_shape), hidden=tuple(cfg.hidden),
                             num_classes=num_classes))
    from compactnn.models.resnet import ResNet, ResNetConfig

    return ResNet(ResNetConfig(depth=cfg.depth, in_channels=image_shape[0],
                               num_classes=num_classes))


class _Sparsity:
    """Drives a sparse baseline from the loop: iterative hard thresholding after
    every step [IHT], or iterative magnitude pruning at the start of each of
    ``rounds`` equal phases (optimizer state cleared and the learning-rate
    schedule restarted per phase; weights rewound to their initial values when
    ``rewind``)."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, exclude: list[str],
                 steps_per_epoch: int) -> None:
        from compactnn import sparse

        sp = cfg.sparse
        keep = sparse.target_keep_for_param_ratio(model, sp.param_ratio,
                                                  exclude=exclude or None)
        self.phases = [0]
        self.settled_from = sp.warmup_epochs  # first epoch trained at the budget
        if sp.method == "iht":
            self.impl = sparse.IterativeHardThresholding(
                model, keep, exclude=exclude or None,
                warmup_steps=sp.warmup_epochs * steps_per_epoch,
                scope="layer" if sp.scope == "auto" else sp.scope)
        else:
            per = cfg.optim.epochs // (sp.rounds + 1)
            if per < 1:
                raise ConfigError(f"sparse.rounds={sp.rounds} needs optim.epochs >= "
                                  f"{sp.rounds + 1} (one phase of training per round)")
            self.phases = [k * per for k in range(sp.rounds + 1)]
            self.settled_from = self.phases[-1]
            self.impl = sparse.IterativeMagnitudePruning(model, keep, rounds=sp.rounds,
                                                         exclude=exclude or None,
                                                         rewind=sp.rewind,
                                                         scope="global" if sp.scope == "auto"
                                                         else sp.scope)

    def on_epoch_start(self, model: nn.Module, epoch: int, opt: torch.optim.Optimizer) -> None:
        if epoch in self.phases[1:]:
            self.impl.prune(model)
            opt.state.clear()  # momentum of pruned weights must not revive them

    def after_step(self, model: nn.Module) -> None:
        self.impl.after_step(model)

    def state_dict(self) -> dict[str, Any]:
        return self.impl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.impl.load_state_dict(state)


def count_nonzero_params(model: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in unwrap(model).parameters()))


class ClassifyTask(Task):
    """The classification task of ``compactnn train`` (see the module doc)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.sparsifier: _Sparsity | None = None
        self.report = None

    def setup(self, info: DistInfo) -> None:
        self.info = info
        self.data = load_data(self.cfg.data, self.cfg.seed)
        self.num_train = len(self.data.x_train)

    def build(self, info: DistInfo, steps_per_epoch: int) -> tuple[nn.Module, Any, Any]:
        cfg, data = self.cfg, self.data
        model = build_model(cfg.model, tuple(data.x_train.shape[1:]), data.num_classes)
        self.dense_params = sum(p.numel() for p in model.parameters())
        exclude = list(cfg.lowrank.exclude)
        if cfg.lowrank.keep_first_last:
            exclude += dense_first_last_exclude(model)
        if cfg.lowrank.enabled:
            lr_cfg = cfg.lowrank
            model, self.report = factorize(model, rank=lr_cfg.rank,
                                           param_ratio=lr_cfg.param_ratio,
                                           exclude=exclude or None, init=lr_cfg.init,
                                           conv_scheme=lr_cfg.conv_scheme, inplace=True)
        model.to(info.device)
        if cfg.sparse.method != "none":
            self.sparsifier = _Sparsity(cfg, model, exclude, steps_per_epoch)
        o = cfg.optim
        fwd = o.factor_weight_decay
        if fwd is None:
            fwd = 0.0 if cfg.lowrank.frobenius_decay > 0 else o.weight_decay
        groups = param_groups(model, o.weight_decay, fwd)
        if o.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
        else:
            opt = torch.optim.AdamW(groups, lr=o.lr)
        phases = self.sparsifier.phases if self.sparsifier is not None else [0]
        sched = lr_scheduler(opt, o.schedule, o.epochs * steps_per_epoch,
                             o.warmup_epochs * steps_per_epoch,
                             [p * steps_per_epoch for p in phases])
        self.model, self.opt = model, opt
        return model, opt, sched

    def on_epoch_start(self, epoch: int) -> None:
        if self.sparsifier is not None:
            self.sparsifier.on_epoch_start(self.model, epoch, self.opt)

    def train_step(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float], int]:
        cfg, device = self.cfg, self.info.device
        xb, yb = self.data.x_train[batch].to(device), self.data.y_train[batch].to(device)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb, label_smoothing=cfg.optim.label_smoothing)
        full = loss
        if cfg.lowrank.frobenius_decay > 0:
            full = loss + frobenius_decay(self.model, cfg.lowrank.frobenius_decay)
        sums = {"loss": float(loss.detach()) * len(yb),
                "accuracy": float(int((logits.argmax(-1) == yb).sum()))}
        return full, sums, len(yb)

    def after_step(self) -> None:
        if self.sparsifier is not None:
            self.sparsifier.after_step(self.model)

    def evaluate(self, split: str) -> dict[str, float]:
        x, y = getattr(self.data, f"x_{split}"), getattr(self.data, f"y_{split}")
        return evaluate(self.model, batched(x, y, batch_size=self.cfg.eval_batch_size),
                        device=self.info.device)

    def early_stop_from(self) -> int:
        # weights from before the sparse budget is reached are not valid final weights
        return self.sparsifier.settled_from if self.sparsifier is not None else 0

    def epoch_extras(self) -> dict[str, Any]:
        return {"nonzero_params": count_nonzero_params(self.model)}

    def summary(self) -> dict[str, Any]:
        return {"params": sum(p.numel() for p in self.model.parameters()),
                "nonzero_params": count_nonzero_params(self.model),
                "dense_params": self.dense_params}

    def final_metrics(self) -> dict[str, Any]:
        test, val = self.evaluate("test"), self.evaluate("val")
        return {"test_accuracy": test["accuracy"], "test_loss": test["loss"],
                "val_accuracy": val["accuracy"]}

    def on_new_run(self, out: Path) -> None:
        if self.report is not None:
            (out / "factorize_report.md").write_text(self.report.to_markdown() + "\n")

    def write_outputs(self, out: Path, metrics: dict[str, Any]) -> None:
        from compactnn.tasks.classify_report import write_run_report

        write_run_report(out, metrics, self.report)

    def state_dict(self) -> dict[str, Any]:
        return {"sparsity": self.sparsifier.state_dict()} if self.sparsifier is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.sparsifier is not None:
            self.sparsifier.load_state_dict(state["sparsity"])


def train(cfg: TrainConfig, dist_info: DistInfo | None = None,
          on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> Run:
    """Run ``compactnn train`` as configured: returns a :class:`~compactnn.engine.Run`
    (``.metrics``, ``.model``, ``.history``) and writes the config, ``metrics.csv``,
    checkpoints, ``model.safetensors`` and ``result.json`` to ``cfg.out``.
    ``on_epoch_end(row)`` sees each epoch's metrics row (e.g. to report to a tuner)."""
    cfg.validate()
    loop = loop_config(cfg, epochs=cfg.optim.epochs, batch_size=cfg.optim.batch_size,
                       desc="train", on_epoch_end=on_epoch_end)
    return run(ClassifyTask(cfg), loop, dist_info)
