"""Typed configuration of ``compactnn mtl`` (filled by
:func:`compactnn.config.build_config` from a TOML/JSON file and ``section.key=value``
overrides; unknown keys, wrong types and impossible combinations are one-line
:class:`~compactnn.config.ConfigError` s before any work starts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from compactnn.config import ConfigError
from compactnn.engine.settings import RunConfig

__all__ = ["DataConfig", "ExpertConfig", "GateConfig", "LossConfig", "MTLConfig",
           "OptimConfig", "TowerConfig"]

DATASETS = ("synthetic", "clustered", "multi_fashion_mnist", "census", "movielens")


@dataclass
class DataConfig:
    name: Literal["synthetic", "clustered", "multi_fashion_mnist", "census",
                  "movielens"] = "synthetic"
    tasks: list[str] = field(default_factory=list)  # empty: every task of the data set
    root: str | None = None  # data folder (Fashion-MNIST idx files / census CSVs)
    seed: int | None = None  # data seed (synthetic draw, splits); None: the run's seed
    max_train: int | None = None  # keep the first N training rows (rows are shuffled)
    max_eval: int | None = None  # keep the first N validation and test rows
    # synthetic / clustered
    n_train: int = 10_000
    n_val: int = 1000
    n_test: int = 2000
    input_dim: int | None = None  # None: 100 (synthetic) / max(100, T + C) (clustered)
    correlation: float = 0.5  # cosine of task weight vectors (within a cluster)
    num_tasks: int = 16  # clustered
    num_clusters: int = 4  # clustered
    noise_std: float = 0.1
    # multi_fashion_mnist
    val_size: int = 5000
    # movielens
    negatives: int = 1
    rating_threshold: float | None = None


@dataclass
class ExpertConfig:
    num: int = 8
    arch: Literal["mlp", "conv"] = "mlp"  # conv: a small CNN (image data only)
    hidden: list[int] = field(default_factory=lambda: [64])  # MLP expert hidden widths
    out: int = 32  # expert output width (the towers' input)
    channels: list[int] = field(default_factory=lambda: [8, 16])  # conv expert channels
    embedding_dim: int = 8  # width of each categorical column's embedding
    dropout: float = 0.0


@dataclass
class GateConfig:
    name: Literal["dselect_k", "topk", "softmax"] = "dselect_k"
    per_example: bool = False  # False: one static gate per task (task-only routing)
    k: int = 2  # dselect_k and topk: max experts per task (per example)
    gamma: float = 1.0  # dselect_k smooth-step width
    entropy_reg: float = 0.0  # dselect_k entropy regularization coefficient
    reduction: Literal["sum", "mean"] = "mean"  # dselect_k per-example regularizer
    noisy: bool = True  # topk: noisy gating in training
    w_importance: float = 0.1  # topk importance (balancing) loss coefficient
    w_load: float = 0.0  # topk load loss coefficient


@dataclass
class TowerConfig:
    hidden: list[int] = field(default_factory=lambda: [16])  # tower hidden widths ([] linear)


@dataclass
class LossConfig:
    weights: list[float] = field(default_factory=list)  # per task (empty: 1 each)


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    gate_lr: float | None = None  # learning rate of the gates' parameters (None: lr)
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    epochs: int = 10
    batch_size: int = 128  # global batch (split over processes)


@dataclass
class MTLConfig(RunConfig):
    data: DataConfig = field(default_factory=DataConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    towers: TowerConfig = field(default_factory=TowerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    execution: Literal["dense", "sparse", "auto"] = "dense"  # how the experts run
    out: str = "runs/mtl"
    eval_batch_size: int = 2048

    def validate(self) -> None:
        self.validate_run()
        o, g, e, d = self.optim, self.gate, self.experts, self.data
        checks = [
            (o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}"),
            (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
            (o.lr > 0, f"optim.lr must be positive, got {o.lr}"),
            (o.gate_lr is None or o.gate_lr > 0,
             f"optim.gate_lr must be positive, got {o.gate_lr}"),
            (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
            (e.num >= 2, f"experts.num must be >= 2, got {e.num}"),
            (g.k >= 1, f"gate.k must be >= 1, got {g.k}"),
            (g.name == "softmax" or g.k <= e.num,
             f"gate.k={g.k} is larger than experts.num={e.num}"),
            (g.gamma > 0, f"gate.gamma must be positive, got {g.gamma}"),
            (g.entropy_reg >= 0, f"gate.entropy_reg must be >= 0, got {g.entropy_reg}"),
            (g.w_importance >= 0 and g.w_load >= 0, "gate.w_importance and gate.w_load must "
                                                    "be >= 0"),
            (e.out >= 1 and all(h >= 1 for h in e.hidden),
             "experts.out and experts.hidden must be positive"),
            (all(c >= 1 for c in e.channels) and len(e.channels) >= 1,
             "experts.channels must be a non-empty list of positive ints"),
            (e.embedding_dim >= 1, f"experts.embedding_dim must be >= 1, got "
                                   f"{e.embedding_dim}"),
            (0 <= e.dropout < 1, f"experts.dropout must be in [0, 1), got {e.dropout}"),
            (all(h >= 1 for h in self.towers.hidden), "towers.hidden must be positive"),
            (all(w >= 0 for w in self.loss.weights), "loss.weights must be >= 0"),
            (-1 <= d.correlation <= 1, f"data.correlation must be in [-1, 1], got "
                                       f"{d.correlation}"),
            (d.name != "clustered" or 0 <= d.correlation <= 1,
             f"data.correlation must be in [0, 1] for clustered data, got {d.correlation}"),
            (d.n_train >= 2 and d.n_val >= 1 and d.n_test >= 1,
             "data.n_train must be >= 2 and data.n_val, data.n_test >= 1"),
            (1 <= d.num_clusters <= d.num_tasks,
             f"data.num_clusters must be in [1, num_tasks], got {d.num_clusters}"),
            (d.max_train is None or d.max_train >= o.batch_size,
             f"data.max_train={d.max_train} is smaller than one batch"),
            (d.max_eval is None or d.max_eval >= 1, "data.max_eval must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
