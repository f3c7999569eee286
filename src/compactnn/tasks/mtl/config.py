"""Typed configuration of ``compactnn mtl`` (filled by
:func:`compactnn.config.build_config` from a TOML/JSON file and ``section.key=value``
overrides; unknown keys, wrong types and impossible combinations are one-line
:class:`~compactnn.config.ConfigError` s before any work starts)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from compactnn.config import finite, require
from compactnn.engine.settings import RunConfig

__all__ = ["DATA_OPTIONS", "EXPERT_OPTIONS", "GATE_OPTIONS", "DataConfig", "ExpertConfig",
           "GateConfig", "LossConfig", "MTLConfig", "OptimConfig", "TowerConfig", "inapplicable"]

# The smooth-step widths DSelect-k can compute in float32: its cubic's
# coefficient 2/gamma^3 and the cube of its input overflow outside this range.
GAMMA_RANGE = (1e-4, 1e4)

DATASETS = ("synthetic", "clustered", "multi_fashion_mnist", "census", "movielens",
            "movielens_1m")

# Which options apply to which choice. An option listed under some choices of its
# section's selector (gate.name, data.name, experts.arch) must keep its default under the
# other choices: setting it there is an error naming it, never silently ignored. An
# option listed nowhere applies to every choice. A new option of one gate goes into
# GATE_OPTIONS under the gates that read it.
GATE_OPTIONS: dict[str, tuple[str, ...]] = {
    "dselect_k": ("k", "gamma", "entropy_reg", "reduction", "entropy_reg_start",
                  "gamma_start", "schedule_steps", "warmup_steps", "warmup_margin"),
    "topk": ("k", "noisy", "importance_reg", "load_reg"),
    "softmax": (),
}
_SYNTHETIC = ("n_train", "n_val", "n_test", "input_dim", "correlation", "noise_std")
DATA_OPTIONS: dict[str, tuple[str, ...]] = {
    "synthetic": _SYNTHETIC,
    "clustered": (*_SYNTHETIC, "num_tasks", "num_clusters"),
    "multi_fashion_mnist": ("root", "val_size"),
    "census": ("root",),
    "movielens": ("negatives", "rating_threshold"),
    "movielens_1m": ("negatives", "rating_threshold"),
}
EXPERT_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden", "dropout"),
    "conv": ("channels",),
    "lenet": ("channels", "hidden"),
}


@dataclass
class DataConfig:
    name: Literal["synthetic", "clustered", "multi_fashion_mnist", "census",
                  "movielens", "movielens_1m"] = "synthetic"
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
    # movielens (the 100k sample) and movielens_1m
    negatives: int = 1
    rating_threshold: float | None = None


@dataclass
class ExpertConfig:
    num: int = 8
    # conv / lenet: small CNNs (image data only); lenet is conv 5x5 + pool per channel
    # entry, then dense layers of the hidden widths (channels=[10,20], hidden=[50],
    # out=50 is the DSelect-k paper family's Multi-MNIST expert)
    arch: Literal["mlp", "conv", "lenet"] = "mlp"
    hidden: list[int] = field(default_factory=lambda: [64])  # MLP / lenet hidden widths
    out: int = 32  # expert output width (the towers' input)
    channels: list[int] = field(default_factory=lambda: [8, 16])  # conv / lenet channels
    embedding_dim: int = 8  # width of each categorical column's embedding
    dropout: float = 0.0


@dataclass
class GateConfig:
    # a gate-specific option is also listed in GATE_OPTIONS (the gates it applies to)
    name: Literal["dselect_k", "topk", "softmax"] = "dselect_k"
    per_example: bool = False  # False: one static gate per task (task-only routing)
    k: int = 2  # dselect_k and topk: max experts per task (per example)
    gamma: float = 1.0  # dselect_k smooth-step width
    entropy_reg: float = 0.0  # dselect_k entropy regularization coefficient
    reduction: Literal["sum", "mean"] = "mean"  # dselect_k per-example regularizer
    # dselect_k remedies of early saturation (compactnn.moe.gates.dselect_k_schedule):
    # entropy weight / gamma ramped from these starts over schedule_steps training steps;
    # static selector logits kept within warmup_margin * gamma / 2 for warmup_steps steps
    entropy_reg_start: float | None = None
    gamma_start: float | None = None
    schedule_steps: int = 0
    warmup_steps: int = 0
    warmup_margin: float = 0.5
    noisy: bool = True  # topk: noisy gating in training
    importance_reg: float = 0.1  # topk importance (balancing) loss coefficient
    load_reg: float = 0.0  # topk load loss coefficient


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
    # the gates' learning rate times gate_warmup_factor for the first epochs, so that the
    # routing does not settle (or saturate) before the experts have specialised
    gate_warmup_epochs: int = 0
    gate_warmup_factor: float = 0.1
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
        require([
            (o.epochs >= 1, f"optim.epochs must be >= 1, got {o.epochs}"),
            (o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}"),
            (finite(o.lr, 0, low_open=True), f"optim.lr must be finite and > 0, got {o.lr}"),
            (o.gate_lr is None or finite(o.gate_lr, 0, low_open=True),
             f"optim.gate_lr must be finite and > 0, got {o.gate_lr}"),
            (0 <= o.gate_warmup_epochs <= o.epochs,
             f"optim.gate_warmup_epochs must be in [0, optim.epochs={o.epochs}], got "
             f"{o.gate_warmup_epochs}"),
            (finite(o.gate_warmup_factor, 0, 1, low_open=True),
             f"optim.gate_warmup_factor must be in (0, 1], got {o.gate_warmup_factor}"),
            (finite(o.momentum, 0, 1, high_open=True),
             f"optim.momentum must be in [0, 1), got {o.momentum}"),
            (finite(o.weight_decay, 0),
             f"optim.weight_decay must be finite and >= 0, got {o.weight_decay}"),
            (e.num >= 2, f"experts.num must be >= 2, got {e.num}"),
            (g.k >= 1, f"gate.k must be >= 1, got {g.k}"),
            (g.name == "softmax" or g.k <= e.num,
             f"gate.k={g.k} is larger than experts.num={e.num}"),
            (finite(g.gamma, *GAMMA_RANGE),
             f"gate.gamma must be in [{GAMMA_RANGE[0]:g}, {GAMMA_RANGE[1]:g}], got {g.gamma}"),
            (finite(g.entropy_reg, 0),
             f"gate.entropy_reg must be finite and >= 0, got {g.entropy_reg}"),
            (finite(g.importance_reg, 0) and finite(g.load_reg, 0),
             "gate.importance_reg and gate.load_reg must be finite and >= 0"),
            (e.out >= 1 and all(h >= 1 for h in e.hidden),
             "experts.out and experts.hidden must be positive"),
            (all(c >= 1 for c in e.channels) and len(e.channels) >= 1,
             "experts.channels must be a non-empty list of positive ints"),
            (e.embedding_dim >= 1, f"experts.embedding_dim must be >= 1, got "
                                   f"{e.embedding_dim}"),
            (finite(e.dropout, 0, 1, high_open=True),
             f"experts.dropout must be in [0, 1), got {e.dropout}"),
            (all(h >= 1 for h in self.towers.hidden), "towers.hidden must be positive"),
            (all(finite(w, 0) for w in self.loss.weights),
             "loss.weights must be finite and >= 0"),
            (finite(d.correlation, -1, 1),
             f"data.correlation must be in [-1, 1], got {d.correlation}"),
            (d.name != "clustered" or 0 <= d.correlation <= 1,
             f"data.correlation must be in [0, 1] for clustered data, got {d.correlation}"),
            (finite(d.noise_std, 0), f"data.noise_std must be finite and >= 0, got "
                                     f"{d.noise_std}"),
            (d.input_dim is None or d.input_dim >= 1,
             f"data.input_dim must be >= 1, got {d.input_dim}"),
            (d.n_train >= 2 and d.n_val >= 1 and d.n_test >= 1,
             "data.n_train must be >= 2 and data.n_val, data.n_test >= 1"),
            (1 <= d.num_clusters <= d.num_tasks,
             f"data.num_clusters must be in [1, num_tasks], got {d.num_clusters}"),
            (d.val_size >= 1, f"data.val_size must be >= 1, got {d.val_size}"),
            (d.negatives >= 0, f"data.negatives must be >= 0, got {d.negatives}"),
            (d.rating_threshold is None or finite(d.rating_threshold),
             f"data.rating_threshold must be finite, got {d.rating_threshold}"),
            (d.max_train is None or d.max_train >= o.batch_size,
             f"data.max_train={d.max_train} is smaller than one batch"),
            (d.max_eval is None or d.max_eval >= 1, "data.max_eval must be >= 1"),
            (not self.loss.weights or any(w > 0 for w in self.loss.weights),
             f"loss.weights={self.loss.weights} are all 0: no task would be trained"),
            (g.schedule_steps >= 0 and g.warmup_steps >= 0,
             f"gate.schedule_steps and gate.warmup_steps must be >= 0, got "
             f"{g.schedule_steps} and {g.warmup_steps}"),
            (finite(g.warmup_margin, 0, 1, low_open=True, high_open=True),
             f"gate.warmup_margin must be in (0, 1), got {g.warmup_margin}"),
            (g.entropy_reg_start is None or finite(g.entropy_reg_start, 0),
             f"gate.entropy_reg_start must be finite and >= 0, got {g.entropy_reg_start}"),
            (g.gamma_start is None or finite(g.gamma_start, *GAMMA_RANGE),
             f"gate.gamma_start must be in [{GAMMA_RANGE[0]:g}, {GAMMA_RANGE[1]:g}], got "
             f"{g.gamma_start}"),
            (g.name != "dselect_k" or g.schedule_steps >= 1
             or (g.entropy_reg_start is None and g.gamma_start is None),
             "gate.entropy_reg_start / gate.gamma_start need gate.schedule_steps >= 1"),
            (g.name != "dselect_k" or g.schedule_steps == 0
             or g.entropy_reg_start is not None or g.gamma_start is not None,
             f"gate.schedule_steps={g.schedule_steps} schedules nothing: set "
             "gate.entropy_reg_start and/or gate.gamma_start"),
            (g.name != "dselect_k" or g.warmup_steps == 0 or not g.per_example,
             "gate.warmup_steps applies to static gates only (gate.per_example=false)"),
            (g.per_example or g.reduction == GateConfig.reduction,
             f"gate.reduction applies to per-example gates only, not gate.per_example=false "
             f"(got gate.reduction={g.reduction})"),
        ])
        require([*inapplicable("data", "name", d, DATA_OPTIONS, "data"),
                 *inapplicable("gate", "name", g, GATE_OPTIONS, "gates"),
                 *inapplicable("experts", "arch", e, EXPERT_OPTIONS, "experts")])


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def inapplicable(section: str, selector: str, cfg: Any,
                 table: Mapping[str, Sequence[str]], noun: str) -> list[tuple[bool, str]]:
    """``(ok, message)`` checks that each option of dataclass ``cfg`` that ``table`` gives
    to other choices than ``cfg.<selector>`` keeps its default (see GATE_OPTIONS)."""
    chosen = getattr(cfg, selector)
    default = type(cfg)()
    checks = []
    for f in fields(cfg):
        owners = [choice for choice, opts in table.items() if f.name in opts]
        if not owners or chosen in owners:
            continue
        value = getattr(cfg, f.name)
        checks.append((value == getattr(default, f.name),
                       f"{section}.{f.name} applies to {' and '.join(owners)} {noun} only, "
                       f"not {section}.{selector}={chosen} (got {section}.{f.name}="
                       f"{_show(value)})"))
    return checks
