"""Typed configuration of ``compactnn train`` (filled by
:func:`compactnn.config.build_config` from a TOML/JSON file and
``section.key=value`` overrides; unknown keys, wrong types and impossible
combinations are one-line :class:`~compactnn.config.ConfigError` s before any
work starts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from compactnn.config import finite, require
from compactnn.engine.settings import RunConfig

__all__ = ["DataConfig", "LowRankConfig", "ModelConfig", "OptimConfig", "SparseConfig",
           "TrainConfig"]


@dataclass
class DataConfig:
    name: Literal["fashion_mnist", "digits"] = "fashion_mnist"
    root: str | None = None  # Fashion-MNIST folder (default: the Debian package's)
    val_size: int = 5000
    max_train: int | None = None  # use only the first N training examples


@dataclass
class ModelConfig:
    name: Literal["mlp", "resnet20"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [512, 512])  # MLP widths
    depth: int = 20  # ResNet depth (6n + 2)


@dataclass
class LowRankConfig:
    rank: int | float | None = None  # per-layer rank or fraction of full rank
    param_ratio: float | None = None  # or: whole-model parameter budget
    init: Literal["default", "kaiming_factors", "spectral", "nonlinear"] = "spectral"
    conv_scheme: Literal["channel", "spatial"] = "channel"
    frobenius_decay: float = 0.0  # coefficient; factors then get no weight decay
    keep_first_last: bool = True  # first and last layers stay dense
    exclude: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.rank is not None or self.param_ratio is not None


@dataclass
class SparseConfig:
    method: Literal["none", "imp", "iht"] = "none"
    param_ratio: float = 1.0  # nonzero parameters after / dense parameters
    rounds: int = 3  # iterative magnitude pruning rounds
    rewind: bool = False  # IMP: rewind to the initial weights each round (else fine-tune)
    warmup_epochs: int = 0  # IHT: dense epochs before thresholding starts
    # which weights compete for the budget: "global" (all layers together), "layer" (the
    # same fraction per layer), "auto" (layer for IHT from scratch, global for IMP)
    scope: Literal["auto", "global", "layer"] = "auto"


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True  # SGD: Nesterov momentum ([FNL]'s recipe uses plain momentum)
    weight_decay: float = 5e-4
    factor_weight_decay: float | None = None  # None: 0 with Frobenius decay, else weight_decay
    schedule: Literal["cosine", "constant", "step"] = "cosine"  # step: x0.1 at 50%, 75%
    warmup_epochs: int = 0
    epochs: int = 10
    batch_size: int = 128  # global batch (split over processes)
    label_smoothing: float = 0.0


@dataclass
class TrainConfig(RunConfig):
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lowrank: LowRankConfig = field(default_factory=LowRankConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out: str = "runs/train"

    def validate(self) -> None:
        self.validate_run()
        o, lr, sp, m, d = self.optim, self.lowrank, self.sparse, self.model, self.data
        rank_ok = lr.rank is None or (lr.rank >= 1 if isinstance(lr.rank, int)
                                      else finite(lr.rank, 0, 1, low_open=True))
        require([
            (o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}"),
            (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
            (finite(o.lr, 0, low_open=True), f"optim.lr must be finite and > 0, got {o.lr}"),
            (finite(o.momentum, 0, 1, high_open=True),
             f"optim.momentum must be in [0, 1), got {o.momentum}"),
            (finite(o.weight_decay, 0),
             f"optim.weight_decay must be finite and >= 0, got {o.weight_decay}"),
            (o.factor_weight_decay is None or finite(o.factor_weight_decay, 0),
             f"optim.factor_weight_decay must be finite and >= 0, got "
             f"{o.factor_weight_decay}"),
            (finite(o.label_smoothing, 0, 1, high_open=True),
             f"optim.label_smoothing must be in [0, 1), got {o.label_smoothing}"),
            (0 <= o.warmup_epochs < o.epochs,
             f"optim.warmup_epochs must be in [0, epochs), got {o.warmup_epochs}"),
            (len(m.hidden) >= 1 and all(h >= 1 for h in m.hidden),
             f"model.hidden must be a non-empty list of widths >= 1, got {m.hidden}"),
            (m.depth >= 8 and (m.depth - 2) % 6 == 0,
             f"model.depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {m.depth}"),
            (d.val_size >= 0, f"data.val_size must be >= 0, got {d.val_size}"),
            (d.max_train is None or d.max_train >= 1,
             f"data.max_train must be >= 1, got {d.max_train}"),
            (rank_ok, f"lowrank.rank must be an int >= 1 or a fraction in (0, 1], got "
                      f"{lr.rank}"),
            (finite(lr.frobenius_decay, 0),
             f"lowrank.frobenius_decay must be finite and >= 0, got {lr.frobenius_decay}"),
            (not (lr.rank is not None and lr.param_ratio is not None),
             "give lowrank.rank or lowrank.param_ratio, not both"),
            (lr.param_ratio is None or finite(lr.param_ratio, 0, 1, low_open=True),
             f"lowrank.param_ratio must be in (0, 1], got {lr.param_ratio}"),
            (finite(sp.param_ratio, 0, 1, low_open=True),
             f"sparse.param_ratio must be in (0, 1], got {sp.param_ratio}"),
            (not (lr.enabled and sp.method != "none"),
             "low-rank and sparse training are separate methods: set one of them"),
            (sp.rounds >= 1, f"sparse.rounds must be >= 1, got {sp.rounds}"),
            (0 <= sp.warmup_epochs < o.epochs,
             f"sparse.warmup_epochs must be in [0, optim.epochs), got {sp.warmup_epochs}"),
            (not self.early_stop.enabled or d.name != "fashion_mnist" or d.val_size >= 1,
             "early stopping needs a validation split: data.val_size must be >= 1"),
            (d.max_train is None or d.max_train >= o.batch_size,
             f"data.max_train={d.max_train} is smaller than one batch"),
        ])
