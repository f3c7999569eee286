"""``compactnn train``: supervised training of dense, low-rank and sparse
classifiers with a typed config, exact resume and DDP.

One global batch is drawn per step from a permutation that depends only on
``(seed, epoch)``; under ``torchrun`` each process takes an equal shard of it
and DDP averages the gradients, so N processes compute the same steps as one.
Checkpoints (safetensors) hold the model, optimizer, scheduler, random
generators and the position inside the epoch, so a run stopped at any step
(SIGINT/SIGTERM, or ``stop_after_steps``) resumes to the same final weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn.models import dense_first_last_exclude
from compactnn.regularize import frobenius_decay, param_groups
from compactnn.surgery import factorize
from compactnn.train.checkpoint import (
    RunClock,
    StopFlag,
    check_same_config,
    load_checkpoint,
    save_checkpoint,
    unwrap,
)
from compactnn.train.config import ConfigError, config_to_dict
from compactnn.train.distributed import DistInfo, init_distributed, shard, wrap_model
from compactnn.train.logger import MetricLogger
from compactnn.train.loop import seed_everything

__all__ = ["TrainConfig", "train", "build_model", "load_data"]


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
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lowrank: LowRankConfig = field(default_factory=LowRankConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = "runs/train"
    resume: bool = True  # continue from out/checkpoint.safetensors when present
    checkpoint_every: int = 1  # epochs
    stop_after_steps: int | None = None  # save and stop early (to test resuming)
    eval_batch_size: int = 1000
    deterministic: bool = True
    progress: bool = True

    def validate(self) -> None:
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
            (self.checkpoint_every >= 1,
             f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.data.max_train is None or self.data.max_train >= o.batch_size,
             f"data.max_train={self.data.max_train} is smaller than one batch"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)


# -- data and model -------------------------------------------------------------------
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


def _lr_lambda(cfg: OptimConfig, steps_per_epoch: int, phases: list[int]):
    """Linear warm-up then cosine (or constant) within each phase; phases start at
    the given epochs (one phase unless iterative pruning restarts the schedule)."""
    starts = [p * steps_per_epoch for p in phases]
    ends = starts[1:] + [cfg.epochs * steps_per_epoch]
    warm = cfg.warmup_epochs * steps_per_epoch

    def f(step: int) -> float:
        start, end = next((a, b) for a, b in zip(starts[::-1], ends[::-1], strict=True)
                          if step >= a)
        local = step - start
        if local < warm:
            return (local + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (local - warm) / max(end - start - warm, 1)))

    return f


@torch.no_grad()
def evaluate_split(model: nn.Module, x: Tensor, y: Tensor, batch_size: int,
                   device: torch.device) -> dict[str, float]:
    """Loss and accuracy over a whole split (eval mode)."""
    was = model.training
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(-1) == yb).sum())
    model.train(was)
    return {"loss": loss / len(x), "accuracy": correct / len(x)}


def count_nonzero_params(model: nn.Module) -> int:
    return int(sum(int((p != 0).sum()) for p in unwrap(model).parameters()))


# -- the loop -----------------------------------------------------------------------------
def train(cfg: TrainConfig, dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Run training as configured; returns the final metrics (and writes them,
    the config, ``metrics.csv``, checkpoints and ``model.safetensors`` to
    ``cfg.out``)."""
    cfg.validate()
    info = dist_info or init_distributed(cfg.device)
    out = Path(cfg.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    seed_everything(cfg.seed)

    data = load_data(cfg.data, cfg.seed)
    n_train = len(data.x_train)
    batch = cfg.optim.batch_size
    if batch % info.world_size:
        raise ConfigError(f"optim.batch_size={batch} must be divisible by the "
                          f"{info.world_size} processes")
    steps_per_epoch = n_train // batch
    if steps_per_epoch < 1:
        raise ConfigError(f"optim.batch_size={batch} exceeds the {n_train} training examples")

    model = build_model(cfg.model, tuple(data.x_train.shape[1:]), data.num_classes)
    dense_params = sum(p.numel() for p in model.parameters())
    exclude = list(cfg.lowrank.exclude)
    if cfg.lowrank.keep_first_last:
        exclude += dense_first_last_exclude(model)
    report = None
    if cfg.lowrank.enabled:
        lr_cfg = cfg.lowrank
        model, report = factorize(model, rank=lr_cfg.rank, param_ratio=lr_cfg.param_ratio,
                                  exclude=exclude or None, init=lr_cfg.init,
                                  conv_scheme=lr_cfg.conv_scheme, inplace=True)
    model.to(info.device)
    sparsifier = (_Sparsity(cfg, model, exclude, steps_per_epoch)
                  if cfg.sparse.method != "none" else None)

    o = cfg.optim
    fwd = o.factor_weight_decay
    if fwd is None:
        fwd = 0.0 if cfg.lowrank.frobenius_decay > 0 else o.weight_decay
    groups = param_groups(model, o.weight_decay, fwd)
    if o.name == "sgd":
        opt = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)
    else:
        opt = torch.optim.AdamW(groups, lr=o.lr)
    phases = sparsifier.phases if sparsifier is not None else [0]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(o, steps_per_epoch, phases))

    ckpt = out / "checkpoint.safetensors"
    epoch, batch_in_epoch, step = 0, 0, 0
    running = [0.0, 0, 0]  # loss sum, correct, count within the epoch
    resumed: dict[str, Any] | None = None
    config_json = config_to_dict(cfg)
    if cfg.resume and ckpt.exists():
        check_same_config(ckpt, config_json, RUN_KEYS)
        state, extra = load_checkpoint(ckpt, model, opt, sched, map_location=info.device)
        resumed = state
        epoch, batch_in_epoch, step = state["epoch"], state["batch"], state["step"]
        running = state["running"]
        if sparsifier is not None:
            sparsifier.load_state_dict(extra["sparsity"])
    elif info.is_main:
        (out / "config.json").write_text(json.dumps(config_json, indent=2))
        if report is not None:
            (out / "factorize_report.md").write_text(report.to_markdown() + "\n")

    logger = MetricLogger(out, enabled=info.is_main)
    logger.truncate_after(step)
    ddp_model = wrap_model(model, info)

    def save(reason: str) -> None:
        if not info.is_main:
            return
        extra = {"sparsity": sparsifier.state_dict()} if sparsifier is not None else {}
        save_checkpoint(ckpt, model, opt, sched, state={
            "epoch": epoch, "batch": batch_in_epoch, "step": step, "running": running,
            "config": config_json, "reason": reason, "seconds": elapsed()}, extra=extra)

    bar = None
    if cfg.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=o.epochs * steps_per_epoch, initial=step, desc="train", unit="step")
    elapsed = RunClock(resumed)
    stopped = False
    with StopFlag() as flag:
        while epoch < o.epochs:
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm = torch.randperm(n_train, generator=gen)
            if sparsifier is not None and batch_in_epoch == 0:
                sparsifier.on_epoch_start(model, epoch, opt)
            ddp_model.train()
            while batch_in_epoch < steps_per_epoch:
                idx = shard(perm[batch_in_epoch * batch:(batch_in_epoch + 1) * batch], info)
                xb, yb = data.x_train[idx].to(info.device), data.y_train[idx].to(info.device)
                logits = ddp_model(xb)
                loss = F.cross_entropy(logits, yb, label_smoothing=o.label_smoothing)
                full = loss
                if cfg.lowrank.frobenius_decay > 0:
                    full = loss + frobenius_decay(model, cfg.lowrank.frobenius_decay)
                opt.zero_grad(set_to_none=True)
                full.backward()
                opt.step()
                sched.step()
                if sparsifier is not None:
                    sparsifier.after_step(model)
                running[0] += float(loss.detach()) * len(yb)
                running[1] += int((logits.argmax(-1) == yb).sum())
                running[2] += len(yb)
                batch_in_epoch += 1
                step += 1
                if bar is not None:
                    bar.update()
                    bar.set_postfix(epoch=epoch + 1, loss=f"{running[0] / running[2]:.3f}")
                if flag.raised or (cfg.stop_after_steps is not None
                                   and step >= cfg.stop_after_steps):
                    stopped = True
                    break
            if stopped:
                save("stopped")
                break
            val = evaluate_split(model, data.x_val, data.y_val, cfg.eval_batch_size,
                                 info.device)
            logger.log({"epoch": epoch + 1, "step": step, "lr": sched.get_last_lr()[0],
                        "train_loss": running[0] / max(running[2], 1),
                        "train_accuracy": running[1] / max(running[2], 1),
                        "val_loss": val["loss"], "val_accuracy": val["accuracy"],
                        "nonzero_params": count_nonzero_params(model),
                        "seconds": elapsed()})
            epoch, batch_in_epoch, running = epoch + 1, 0, [0.0, 0, 0]
            if epoch % cfg.checkpoint_every == 0 or epoch == o.epochs:
                save("epoch")
    if bar is not None:
        bar.close()
    logger.close()
    result: dict[str, Any] = {"finished": not stopped, "epoch": epoch, "step": step,
                              "params": sum(p.numel() for p in model.parameters()),
                              "nonzero_params": count_nonzero_params(model),
                              "dense_params": dense_params}
    if not stopped:
        test = evaluate_split(model, data.x_test, data.y_test, cfg.eval_batch_size,
                              info.device)
        val = evaluate_split(model, data.x_val, data.y_val, cfg.eval_batch_size, info.device)
        result.update(test_accuracy=test["accuracy"], test_loss=test["loss"],
                      val_accuracy=val["accuracy"],
                      train_seconds=elapsed())
        if info.is_main:
            from compactnn.io import save_model

            save_model(model, out / "model.safetensors")
            (out / "result.json").write_text(json.dumps(result, indent=2))
    result["model"] = model
    return result


# Keys that may change between an interrupted run and its resume.
RUN_KEYS = {"resume", "stop_after_steps", "progress", "out", "device"}
