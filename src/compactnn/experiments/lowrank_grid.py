"""Low-rank training from scratch on Fashion-MNIST: initialization x Frobenius
decay x parameter budget, against dense and sparse baselines at equal
parameter count.

Claims tested: spectral init and Frobenius decay together let low-rank
networks approach dense ones at a fraction of the parameters and beat
unstructured sparsity at equal memory [FNL]; nonlinear init trains better than
spectral init, most at low rank [LR-NL].

Every arm is one ``compactnn train`` run (same code path as the command line);
seeds pair the arms (same data order), so differences are tested with a paired
t-test across seeds against spectral + FD.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.train.config import build_config
from compactnn.train.trainer import TrainConfig, train

FRACTIONS = (0.02, 0.05, 0.10, 0.25)
LOWRANK_ARMS = [(init, fd) for init in ("default", "spectral", "nonlinear") for fd in (False, True)]
REFERENCE = "spectral + FD"


@dataclass(frozen=True)
class Scale:
    models: tuple[str, ...]
    seeds: int
    epochs: int
    max_train: int | None
    fractions: tuple[float, ...] = FRACTIONS


QUICK = Scale(models=("mlp",), seeds=1, epochs=3, max_train=8000)
FULL = Scale(models=("mlp", "resnet20"), seeds=3, epochs=15, max_train=None)


def arm_label(init: str, fd: bool) -> str:
    return f"{init}{' + FD' if fd else ''}"


def _config(model: str, epochs: int, max_train: int | None, seed: int, out: Path,
            **sections: dict) -> TrainConfig:
    mlp = model == "mlp"
    data = {"name": "fashion_mnist", "max_train": max_train}
    base = {
        "data": data,
        "model": {"name": model, "hidden": [512, 512]},
        # SGD + Nesterov, cosine; [FNL]'s weight decay 5e-4 on CIFAR ResNets is used here
        # as both the dense weight decay and the Frobenius-decay coefficient.
        "optim": {"name": "sgd", "lr": 0.05 if mlp else 0.1, "epochs": epochs,
                  "batch_size": 128, "weight_decay": 5e-4},
        "seed": seed, "out": str(out), "progress": False, "resume": True,
    }
    for key, value in sections.items():
        base[key] = value
    return build_config(TrainConfig, base)


def _arms(model: str, fraction: float) -> list[tuple[str, dict]]:
    # The MLP's first layer holds most of its weights, so only its head stays dense;
    # the ResNet keeps its stem convolution and classifier dense, as is customary.
    keep_fl = model != "mlp"
    exclude = [] if keep_fl else ["head"]
    arms = []
    for init, fd in LOWRANK_ARMS:
        arms.append((arm_label(init, fd), {"lowrank": {
            "param_ratio": fraction, "init": init, "frobenius_decay": 5e-4 if fd else 0.0,
            "keep_first_last": keep_fl, "exclude": exclude}}))
    for method, name in (("imp", "magnitude pruning"), ("iht", "IHT")):
        sparse = {"method": method, "param_ratio": fraction}
        if method == "imp":
            sparse["rounds"] = 2
        arms.append((name, {"sparse": sparse, "lowrank": {"keep_first_last": keep_fl,
                                                          "exclude": exclude}}))
    return arms


def paired_pvalue(a: list[float], b: list[float]) -> str:
    """Two-sided paired t-test p-value across seeds (``"-"`` with fewer than 2)."""
    if len(a) < 2:
        return "-"
    if all(x == y for x, y in zip(a, b, strict=True)):
        return "1.000"
    from scipy.stats import ttest_rel

    return f"{ttest_rel(a, b).pvalue:.3f}"


@register("lowrank_grid", "Fashion-MNIST: init x Frobenius decay x budget vs dense/sparse")
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    from tqdm.auto import tqdm

    scale = QUICK if quick else FULL
    seeds = list(range(seed, seed + scale.seeds))
    jobs = []
    for model in scale.models:
        for s in seeds:
            jobs.append((model, "dense", 1.0, s, {}))
            for frac in scale.fractions:
                for label, sections in _arms(model, frac):
                    jobs.append((model, label, frac, s, sections))
    rows = []
    for model, label, frac, s, sections in tqdm(jobs, desc="lowrank_grid", unit="run"):
        tag = f"{model}-{label.replace(' ', '').replace('+', '_')}-{frac}-s{s}"
        cfg = _config(model, scale.epochs, scale.max_train, s, out_dir / "runs" / tag,
                      **sections)
        res = train(cfg)
        rows.append([model, label, frac, s, res["nonzero_params"], res["dense_params"],
                     res["test_accuracy"], res["train_seconds"]])
    header = ["model", "method", "param_fraction", "seed", "params", "dense_params",
              "test_accuracy", "train_seconds"]
    files = [write_csv(out_dir / "lowrank_grid.csv", header, rows)]

    def acc(model, label, frac):
        return [r[6] for r in sorted(rows, key=lambda r: r[3])
                if r[0] == model and r[1] == label and r[2] == frac]

    labels = [arm_label(i, f) for i, f in LOWRANK_ARMS] + ["magnitude pruning", "IHT"]
    sections_md = []
    for model in scale.models:
        table = []
        for frac in scale.fractions:
            ref = acc(model, REFERENCE, frac)
            for label in labels:
                vals = acc(model, label, frac)
                params = next(r[4] for r in rows if r[0] == model and r[1] == label
                              and r[2] == frac)
                p = "ref" if label == REFERENCE else paired_pvalue(vals, ref)
                table.append([f"{frac:.0%}", label, f"{params:,}", mean_std(vals, "{:.4f}"), p])
        dense = acc(model, "dense", 1.0)
        dense_params = next(r[5] for r in rows if r[0] == model)
        table.append(["100%", "dense", f"{dense_params:,}", mean_std(dense, "{:.4f}"), "-"])
        fig, ax = new_figure(figsize=(6.6, 4.4))
        for label in labels:
            xs = [next(r[4] for r in rows if r[0] == model and r[1] == label and r[2] == f)
                  for f in scale.fractions]
            ys = [statistics.fmean(acc(model, label, f)) for f in scale.fractions]
            style = "--" if label in ("magnitude pruning", "IHT") else "-"
            ax.plot(xs, ys, style, marker="o", label=label)
        ax.axhline(statistics.fmean(dense), color="k", ls=":", label="dense")
        ax.set_xscale("log")
        ax.set_xlabel("parameters (nonzero)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{model} on Fashion-MNIST ({len(seeds)} seed(s), {scale.epochs} epochs)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        png = out_dir / f"lowrank_grid_{model}.png"
        fig.savefig(png, dpi=120)
        files.append(png)
        sections_md.append(
            f"### {model}\n\n"
            + markdown_table(["budget", "method", "params", "test accuracy",
                              f"p vs {REFERENCE}"], table)
            + f"\n\n![{model}]({png.name})\n")
    train_note = (f"first {scale.max_train} training images" if scale.max_train
                  else "all 55,000 training images")
    md = (f"Fashion-MNIST ({train_note}, 5,000 validation, 10,000 test), {scale.epochs} "
          f"epochs of SGD (Nesterov, cosine, batch 128) per arm, seeds {seeds}. Budgets are "
          "whole-model parameter fractions; sparse baselines count nonzero weights. "
          "p: two-sided paired t-test across seeds against spectral + FD ('-' with one "
          "seed).\n\n" + "\n".join(sections_md))
    return ExperimentResult("lowrank_grid", md, files)
