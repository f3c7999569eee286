"""Depth-aware initialization [DAI] against Kaiming/He, Xavier/Glorot and
orthogonal initialization on deep plain networks (no normalization, no skip
connections): trainability and accuracy after a fixed budget, and the
per-layer pre-activation variance at initialization.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Training helpers in one place (the engine's home may move).
from compactnn.engine import FitConfig, TensorBatches, evaluate, fit, seed_everything
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import (
    markdown_table,
    mean_std,
    new_figure,
    paired_summary,
    write_csv,
)
from compactnn.init import depth_aware_

INITS = ("kaiming", "xavier", "orthogonal", "depth-aware r=2", "depth-aware r=8")


@dataclass
class Setting:
    data: str
    archs: tuple[tuple[str, int], ...]  # (mlp | cnn, number of weight layers)
    width: int
    channels: int
    seeds: int
    train_size: int
    epochs: int
    lr: float = 0.01


QUICK = Setting("digits", (("mlp", 10), ("mlp", 20)), 64, 8, 1, 0, 5)
FULL = Setting("fashion_mnist", (("mlp", 10), ("mlp", 20), ("mlp", 50), ("cnn", 10),
                                 ("cnn", 20)), 128, 8, 2, 1000, 5)


def _data(s: Setting, seed: int):
    """Images ``(N, 1, H, W)`` and labels for train and test."""
    if s.data == "digits":
        from compactnn.data import load_digits_split

        d = load_digits_split(seed=seed)
        return (d.x_train.reshape(-1, 1, 8, 8), d.y_train, d.x_test.reshape(-1, 1, 8, 8),
                d.y_test)
    from compactnn.data import load_fashion_mnist

    d = load_fashion_mnist(seed=seed)
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(d.y_train), generator=g)[: s.train_size]
    te = torch.randperm(len(d.y_test), generator=g)[:2000]
    return (F.avg_pool2d(d.x_train[tr], 2), d.y_train[tr], F.avg_pool2d(d.x_test[te], 2),
            d.y_test[te])


def plain_net(kind: str, depth: int, s: Setting, image: int) -> nn.Sequential:
    """Plain ReLU nets with ``depth`` weight layers (the last is the classifier)."""
    layers: list[nn.Module] = []
    if kind == "mlp":
        dims = [image * image] + [s.width] * (depth - 1)
        layers.append(nn.Flatten())
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], 10))
    else:
        c = [1] + [s.channels] * (depth - 1)
        for a, b in zip(c[:-1], c[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU()]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c[-1], 10)]
    return nn.Sequential(*layers)


@torch.no_grad()
def init_model(model: nn.Module, name: str) -> None:
    if name.startswith("depth-aware"):
        depth_aware_(model, ratio=float(name.split("r=")[1]))
        return
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            if name == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif name == "xavier":
                nn.init.xavier_normal_(m.weight)
            else:
                nn.init.orthogonal_(m.weight, gain=math.sqrt(2.0))
            nn.init.zeros_(m.bias)


@torch.no_grad()
def preactivation_profile(model: nn.Sequential, x: Tensor) -> list[float]:
    """Mean squared pre-activation of every weight layer on ``x``."""
    out = []
    for m in model:
        x = m(x)
        if isinstance(m, nn.Linear | nn.Conv2d):
            out.append(float(x.pow(2).mean()))
    return out


def _log(partial: str | None, record: dict) -> None:
    """Append one JSON line to ``partial`` (a finished row survives an interrupted run)."""
    if partial is not None:
        import json

        with open(partial, "a") as f:
            f.write(json.dumps(record) + "\n")


def seed_rows(s: Setting, seed: int, threads: int | None = None,
              partial: str | None = None) -> tuple[list, list]:
    if threads is not None:
        torch.set_num_threads(threads)
    xtr, ytr, xte, yte = _data(s, seed)
    image = xtr.shape[-1]
    rows, profiles = [], []
    for kind, depth in s.archs:
        for name in INITS:
            seed_everything(seed)
            model = plain_net(kind, depth, s, image)
            init_model(model, name)
            prof = preactivation_profile(model, xtr[:256])
            profiles.append([seed, kind, depth, name, *prof])
            fit(model, TensorBatches(xtr, ytr, 64, seed),
                FitConfig(epochs=s.epochs, lr=s.lr, optimizer="sgd", weight_decay=0.0))
            train_loss = evaluate(model, TensorBatches(xtr, ytr, 1024, None))["loss"]
            acc = evaluate(model, TensorBatches(xte, yte, 1024, None))["accuracy"]
            if not math.isfinite(train_loss):
                acc = 0.1  # diverged: chance level
            rows.append([seed, kind, depth, name, train_loss, acc,
                         prof[-1] / prof[0] if prof[0] > 0 else float("nan")])
            _log(partial, {"row": rows[-1], "profile": profiles[-1]})
    return rows, profiles


def _paired(rows, other: str):
    acc = {(r[0], r[1], r[2], r[3]): r[5] for r in rows}
    pairs = [(v, acc[(sd, k, d, other)]) for (sd, k, d, n), v in acc.items()
             if n == "depth-aware r=2" and (sd, k, d, other) in acc]
    return paired_summary(pairs)


@register("depth_aware", "Depth-aware init vs Kaiming, Xavier, orthogonal on deep plain nets",
          parallel=True)
def run(out_dir: Path, quick: bool, seed: int, jobs: int = 1) -> ExperimentResult:
    s = QUICK if quick else FULL
    seeds = list(range(seed, seed + s.seeds))
    partial = [str(out_dir / f"partial_seed{sd}.jsonl") for sd in seeds]
    for path in partial:
        Path(path).unlink(missing_ok=True)
    if jobs > 1 and len(seeds) > 1:
        from compactnn.experiments.workers import worker_pool

        with worker_pool(min(jobs, len(seeds))) as p:
            parts = list(p.map(seed_rows, [s] * len(seeds), seeds, [1] * len(seeds), partial))
    else:
        parts = [seed_rows(s, sd, None, pp) for sd, pp in zip(seeds, partial, strict=True)]
    rows = [r for part in parts for r in part[0]]
    profiles = [p for part in parts for p in part[1]]
    return summarize(out_dir, s, rows, profiles, seeds)


def summarize(out_dir: Path, s: Setting, rows: list, profiles: list,
              seeds: list[int]) -> ExperimentResult:
    """Tables, tests and the figure from the rows (also usable on the partial
    rows of an interrupted run)."""
    archs = tuple(a for a in s.archs
                  if all(any((r[1], r[2], r[3]) == (*a, n) for r in rows) for n in INITS))
    s = Setting(**{**s.__dict__, "archs": archs})
    csv_path = write_csv(out_dir / "depth_aware.csv",
                         ["seed", "arch", "depth", "init", "train_loss", "test_accuracy",
                          "last_over_first_preact_var"], rows)
    prof_csv = write_csv(out_dir / "depth_aware_profiles.csv",
                         ["seed", "arch", "depth", "init", "preact_var_per_layer..."], profiles)

    def col(kind, depth, name, c):
        return [r[c] for r in rows if r[1] == kind and r[2] == depth and r[3] == name]

    table = [[f"{kind}-{depth}", name, mean_std(col(kind, depth, name, 5), "{:.3f}"),
              mean_std(col(kind, depth, name, 4), "{:.3f}"),
              f"{statistics.fmean(col(kind, depth, name, 6)):.3g}"]
             for kind, depth in s.archs for name in INITS]
    tests = [[f"depth-aware r=2 - {m}", f"{d:+.4f}", f"{w}/{n}", pt, pw]
             for m in INITS if m != "depth-aware r=2" for d, w, n, pt, pw in [_paired(rows, m)]]

    shown = [a for a in s.archs if a[0] == "mlp"][-1:] + [a for a in s.archs if a[0] == "cnn"][-1:]
    fig, axes = new_figure(ncols=len(shown), figsize=(5.2 * len(shown), 3.8), squeeze=False)
    for ax, (kind, depth) in zip(axes[0], shown, strict=True):
        for name in INITS:
            p = next(p for p in profiles if p[0] == seeds[0] and p[1] == kind and p[2] == depth
                     and p[3] == name)[4:]
            (line,) = ax.plot(range(1, len(p) + 1), p, marker=".", label=name)
            if name.startswith("depth-aware"):
                from compactnn.init import depth_aware_schedule

                v = depth_aware_schedule(len(p), float(name.split("r=")[1]))
                ax.plot(range(1, len(p) + 1), [p[0] * vi for vi in v], ls=":",
                        color=line.get_color())
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(f"{kind.upper()}, {depth} layers, at init (dotted: schedule)")
    axes[0][0].set_ylabel("mean squared pre-activation")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "depth_aware_variance.png"
    fig.savefig(png, dpi=120)

    what = "scikit-learn digits (8x8)" if s.data == "digits" else \
        f"Fashion-MNIST at 14x14 ({s.train_size} training images)"
    md = (
        f"Plain ReLU networks without normalization on {what}: MLPs of width {s.width}, "
        f"CNNs of {s.channels} channels (3x3, then global average pooling and a linear "
        "classifier); depth counts weight layers. Every init zeroes the biases. Training: SGD "
        f"(momentum 0.9, lr {s.lr}, cosine) for {s.epochs} epochs. Seeds {seeds}. "
        "Depth-aware: ratio r of last to first layer pre-activation variance, power 1.\n\n"
        + markdown_table(["net", "init", "test acc", "train loss", "var last / first at init"],
                         table)
        + "\n\nPaired over (net, seed): test accuracy difference, wins, t-test and Wilcoxon "
        "p-values.\n\n"
        + markdown_table(["comparison", "mean diff", "wins", "t p", "Wilcoxon p"], tests)
        + f"\n\n![depth_aware_variance]({png.name})\n"
    )
    return ExperimentResult("depth_aware", md, [csv_path, prof_csv, png])
