"""Post-training compression of a trained Fashion-MNIST network: plain SVD vs
activation-aware factorizations (whitened SVD, linear least squares) vs the
nonlinear, function-matching init of [LR-NL] on calibration data.

The dense network is trained once; each method then compresses it to a
whole-model parameter budget, layer by layer in forward order, each layer
fitted on the activations of the already-compressed layers before it. Test
accuracy is measured before any fine-tuning and after one short fine-tuning
epoch, with the CPU inference latency against the dense model, measured
side by side.
"""

from __future__ import annotations

from pathlib import Path

import torch

from compactnn.config import build_config
from compactnn.engine import FitConfig, batched, evaluate, fit, seed_everything
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, new_figure, write_csv
from compactnn.surgery import factorize
from compactnn.tasks.classify import TrainConfig, load_data, train
from compactnn.utils import interleaved_timings

METHODS = ("spectral", "whitened", "lstsq", "nonlinear")
FRACTIONS = (0.25, 0.5, 0.75)


SCALES = {  # (model, quick): the dense training and the calibration set
    ("mlp", True): {"epochs": 4, "max_train": 8000, "calib": 256, "exclude": ["head"],
                    "keep_first_last": False},
    ("mlp", False): {"epochs": 15, "max_train": None, "calib": 512, "exclude": ["head"],
                     "keep_first_last": False},
    ("resnet20", True): {"epochs": 4, "max_train": 10000, "calib": 256, "exclude": [],
                         "keep_first_last": True},
    ("resnet20", False): {"epochs": 15, "max_train": None, "calib": 512, "exclude": [],
                          "keep_first_last": True},
}


@register("compress_pretrained",
          "Compress a trained Fashion-MNIST MLP: SVD vs whitened vs lstsq vs nonlinear")
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    return run_compression(out_dir, "mlp", quick, seed)


# Not in the default quick run: its quick scale trains a ResNet-20 on 10,000 images and
# fine-tunes it twelve times (about 20 minutes on 2 CPU cores); its full scale needs a GPU.
@register("compress_pretrained_resnet",
          "Compress a trained Fashion-MNIST ResNet-20: SVD vs whitened vs lstsq vs nonlinear",
          in_quick=False)
def run_resnet(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    return run_compression(out_dir, "resnet20", quick, seed)


def run_compression(out_dir: Path, model_name: str, quick: bool, seed: int,
                    scale: dict | None = None, data_name: str = "fashion_mnist"
                    ) -> ExperimentResult:
    """Train ``model_name`` densely once, then compress, fine-tune and time it with
    every method at every budget (``scale`` overrides the registered sizes)."""
    from tqdm.auto import tqdm

    from compactnn.surgery import dense_first_last_exclude

    sc = scale or SCALES[model_name, quick]
    cfg = build_config(TrainConfig, {
        "data": {"name": data_name, "max_train": sc["max_train"]},
        "model": {"name": model_name, "hidden": [512, 512]},
        "optim": {"name": "sgd", "lr": 0.05 if model_name == "mlp" else 0.1,
                  "epochs": sc["epochs"], "batch_size": 128, "weight_decay": 5e-4},
        "seed": seed, "out": str(out_dir / "dense"), "progress": False})
    dense = train(cfg).model.eval()
    data = load_data(cfg.data, seed)
    gen = torch.Generator().manual_seed(seed)
    calib = data.x_train[torch.randperm(len(data.x_train), generator=gen)[:sc["calib"]]]
    exclude = sc["exclude"] + (dense_first_last_exclude(dense) if sc["keep_first_last"] else [])

    def test_acc(model) -> float:
        return evaluate(model, batched(data.x_test, data.y_test, batch_size=1000))["accuracy"]

    dense_acc = test_acc(dense)
    ft_loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train, data.y_train),
        batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(seed))
    example = data.x_test[:256]
    rows = []
    for frac in tqdm(FRACTIONS, desc="compress_pretrained", unit="budget"):
        for method in METHODS:
            seed_everything(seed)
            kwargs = {"calibration": calib} if method != "spectral" else {}
            model, report = factorize(dense, param_ratio=frac, init=method,
                                      exclude=exclude or None, **kwargs)
            model.eval()
            before = test_acc(model)
            fit(model, ft_loader, FitConfig(epochs=1, optimizer="sgd", lr=0.01,
                                            weight_decay=5e-4))
            model.eval()
            after = test_acc(model)
            t = interleaved_timings({"dense": lambda: dense(example),
                                     "low": lambda m=model: m(example)}, repeats=15)
            rows.append([frac, method, report.params_after, report.params_before, before,
                         after, t["low"] / t["dense"]])
    header = ["param_fraction", "method", "params", "dense_params", "acc_before_ft",
              "acc_after_ft", "latency_vs_dense"]
    files = [write_csv(out_dir / f"compress_pretrained_{model_name}.csv", header, rows)]

    fig, axes = new_figure(ncols=2, figsize=(9.5, 3.8), sharey=True)
    for ax, col, title in ((axes[0], 4, "before fine-tuning"),
                           (axes[1], 5, "after one fine-tuning epoch")):
        for method in METHODS:
            pts = [(r[0], r[col]) for r in rows if r[1] == method]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.axhline(dense_acc, color="k", ls=":", label="dense")
        ax.set_xlabel("parameter fraction")
        ax.set_title(title)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / f"compress_pretrained_{model_name}.png"
    fig.savefig(png, dpi=120)
    files.append(png)

    table = [[f"{r[0]:.0%}", r[1], f"{r[2]:,}", f"{r[4]:.4f}", f"{r[5]:.4f}", f"{r[6]:.2f}x"]
             for r in rows]
    table.append(["100%", "dense", f"{rows[0][3]:,}", f"{dense_acc:.4f}", "-", "1.00x"])
    data_note = (f"first {sc['max_train']} training images" if sc["max_train"]
                 else "all 55,000 training images")
    data_label = "Fashion-MNIST" if data_name == "fashion_mnist" else data_name
    md = (f"Dense {model_name} trained {sc['epochs']} epochs on {data_label} ({data_note}); "
          f"compressed with {sc['calib']} calibration images (data-aware methods), "
          f"{'head kept dense' if not sc['keep_first_last'] else 'first and last layers dense'}"
          "; one fine-tuning epoch of SGD (lr 0.01). Latency: batch of 256, median of "
          "round-robin repeats against the dense model. Seed "
          f"{seed}.\n\n"
          + markdown_table(["budget", "method", "params", "acc before FT", "acc after FT",
                            "latency"], table)
          + f"\n\n![compress_pretrained]({png.name})\n")
    return ExperimentResult(f"compress_pretrained_{model_name}", md, files)
