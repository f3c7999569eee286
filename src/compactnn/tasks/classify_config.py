"""Typed configuration of ``compactnn train`` (filled by
:func:`compactnn.config.build_config` from a TOML/JSON file and
``section.key=value`` overrides; unknown keys, wrong types and impossible
combinations are one-line :class:`~compactnn.config.ConfigError` s before any
work starts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from compactnn.config import ConfigError
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
    init: Literal["default", "spectral", "nonlinear"] = "spectral"
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
    weight_decay: float = 5e-4
    factor_weight_decay: float | None = None  # None: 0 with Frobenius decay, else weight_decay
    schedule: Literal["cosine", "constant"] = "cosine"
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
        o, lr, sp = self.optim, self.lowrank, self.sparse
        checks = [
            (o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}"),
            (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
            (o.lr > 0, f"optim.lr must be positive, got {o.lr}"),
            (o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}"),
            (0 <= o.warmup_epochs < o.epochs,
             f"optim.warmup_epochs must be in [0, epochs), got {o.warmup_epochs}"),
            (lr.frobenius_decay >= 0,
             f"lowrank.frobenius_decay must be >= 0, got {lr.frobenius_decay}"),
            (not (lr.rank is not None and lr.param_ratio is not None),
             "give lowrank.rank or lowrank.param_ratio, not both"),
            (lr.param_ratio is None or 0 < lr.param_ratio <= 1,
             f"lowrank.param_ratio must be in (0, 1], got {lr.param_ratio}"),
            (0 < sp.param_ratio <= 1, f"sparse.param_ratio must be in (0, 1], got "
                                      f"{sp.param_ratio}"),
            (not (lr.enabled and sp.method != "none"),
             "low-rank and sparse training are separate methods: set one of them"),
            (sp.rounds >= 1, f"sparse.rounds must be >= 1, got {sp.rounds}"),
            (not self.early_stop.enabled or self.data.name != "fashion_mnist"
             or self.data.val_size >= 1,
             "early stopping needs a validation split: data.val_size must be >= 1"),
            (self.data.max_train is None or self.data.max_train >= o.batch_size,
             f"data.max_train={self.data.max_train} is smaller than one batch"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
