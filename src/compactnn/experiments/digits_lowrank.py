"""Low-rank MLPs on scikit-learn's digits: default vs spectral initialization
[FNL], with and without Frobenius decay, when compressing a trained network.

A dense ReLU MLP is trained, its hidden layers are factorized at several ranks
with each initialization, then fine-tuned. The table reports test accuracy
before and after fine-tuning, parameters, and measured CPU latency against the
dense model, as mean +- std over seeds.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from compactnn.data import load_digits_split
from compactnn.engine import FitConfig, evaluate, fit, measure_latency, seed_everything
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.models import MLP, MLPConfig
from compactnn.surgery import factorize

# (label, init, Frobenius decay coefficient)
ARMS = [("default", "default", 0.0), ("spectral", "spectral", 0.0),
        ("spectral + FD", "spectral", 1e-3)]


@register("digits_lowrank", "Low-rank MLP on digits: default vs spectral init, +FD")
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    seeds = [seed, seed + 1] if quick else list(range(seed, seed + 5))
    ranks = [2, 4, 8, 16, 32] if quick else [1, 2, 4, 8, 16, 32, 64]
    dense_epochs, ft_epochs = (30, 10) if quick else (60, 30)
    torch.set_num_threads(torch.get_num_threads())
    from tqdm.auto import tqdm

    rows = []  # seed, rank, arm, params, acc_before, acc_after, latency
    dense_rows = []
    bar = tqdm(total=len(seeds) * (1 + len(ranks) * len(ARMS)), desc="digits_lowrank",
               unit="run")
    for s in seeds:
        data = load_digits_split(seed=s)
        train = data.loader("train", 64, shuffle=True, seed=s)
        test = data.loader("test", 512)
        example = data.x_test[:256]
        seed_everything(s)
        dense = MLP(MLPConfig(in_features=64, hidden=(256, 256, 256), num_classes=10))
        fit(dense, train, FitConfig(epochs=dense_epochs, lr=2e-3))
        dense_acc = evaluate(dense, test)["accuracy"]
        dense_params = sum(p.numel() for p in dense.parameters())
        dense_lat = measure_latency(dense, example)
        dense_rows.append((s, dense_params, dense_acc, dense_lat))
        bar.update()
        for r in ranks:
            for label, init, fd in ARMS:
                seed_everything(s * 1000 + r)
                model, report = factorize(dense, rank=r, include=r"layers\.\d+", init=init)
                before = evaluate(model, test)["accuracy"]
                fit(model, train, FitConfig(epochs=ft_epochs, lr=1e-3, frobenius_decay=fd,
                                            weight_decay=1e-4))
                after = evaluate(model, test)["accuracy"]
                lat = measure_latency(model, example)
                rows.append((s, r, label, report.params_after, before, after, lat / dense_lat))
                bar.update()
    bar.close()

    header = ["seed", "rank", "init", "params", "acc_before_ft", "acc_after_ft",
              "latency_vs_dense"]
    csv_path = write_csv(out_dir / "digits_lowrank.csv", header, rows)

    def pick(r, label, col):
        return [row[col] for row in rows if row[1] == r and row[2] == label]

    table = []
    for r in ranks:
        for label, _, _ in ARMS:
            params = pick(r, label, 3)[0]
            table.append([r, f"{params:,}", f"{params / dense_rows[0][1]:.3f}", label,
                          mean_std(pick(r, label, 4), "{:.3f}"),
                          mean_std(pick(r, label, 5), "{:.3f}"),
                          f"{statistics.median(pick(r, label, 6)):.2f}x"])
    dense_acc = [d[2] for d in dense_rows]
    table.append(["dense", f"{dense_rows[0][1]:,}", "1.000", "-", mean_std(dense_acc, "{:.3f}"),
                  "-", "1.00x"])

    fig, ax = new_figure(figsize=(6.4, 4.2))
    for label, _, _ in ARMS:
        params = [pick(r, label, 3)[0] for r in ranks]
        after = [statistics.fmean(pick(r, label, 5)) for r in ranks]
        before = [statistics.fmean(pick(r, label, 4)) for r in ranks]
        (line,) = ax.plot(params, after, marker="o", label=f"{label}, fine-tuned")
        ax.plot(params, before, marker="x", ls=":", color=line.get_color(),
                label=f"{label}, before fine-tuning")
    ax.axhline(statistics.fmean(dense_acc), color="k", ls="--", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Low-rank MLP on digits (mean of {len(seeds)} seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "digits_lowrank.png"
    fig.savefig(png, dpi=120)

    md = (
        "Dense ReLU MLP 64-256-256-256-10 trained on scikit-learn digits "
        f"({dense_epochs} epochs), hidden layers factorized at each rank, then fine-tuned "
        f"{ft_epochs} epochs (AdamW, cosine). Seeds: {seeds}. Latency: median forward time "
        "of a 256-row batch, relative to the dense model, measured in the same run.\n\n"
        + markdown_table(["rank", "params", "x dense", "init", "acc before FT", "acc after FT",
                          "latency"], table)
        + f"\n\n![digits_lowrank]({png.name})\n"
    )
    return ExperimentResult("digits_lowrank", md, [csv_path, png])
