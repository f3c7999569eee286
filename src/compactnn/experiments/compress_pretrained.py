"""Post-training compression of a trained Fashion-MNIST network: plain SVD vs
activation-aware factorizations (whitened SVD, linear least squares) vs the
nonlinear, function-matching init of [LR-NL] on calibration data.

The dense network is trained once; each method then compresses it to a
whole-model parameter budget, layer by layer in forward order, each layer
fitted on the activations of the already-compressed layers before it. Test
accuracy is measured before any fine-tuning and after one short fine-tuning
epoch, with the CPU inference latency against the dense model, measured
side by side. Every seed trains its own dense network; nonlinear (function
matching) vs spectral (weight matching) is a paired comparison across seeds.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from compactnn.config import build_config
from compactnn.engine import FitConfig, batched, evaluate, fit, seed_everything
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.experiments.stats import holm, paired_difference
from compactnn.surgery import factorize
from compactnn.tasks.classify import TrainConfig, load_data, train
from compactnn.utils import interleaved_timings

METHODS = ("spectral", "whitened", "lstsq", "nonlinear")
FRACTIONS = (0.25, 0.5, 0.75)


SCALES = {  # (model, quick): the dense training and the calibration set
    # quick: three seeds of a smaller run, so the comparison is paired at all
    ("mlp", True): {"epochs": 3, "max_train": 3000, "calib": 256, "exclude": ["head"],
                    "keep_first_last": False, "seeds": 3},
    ("mlp", False): {"epochs": 15, "max_train": None, "calib": 512, "exclude": ["head"],
                     "keep_first_last": False, "seeds": 5},
    ("resnet20", True): {"epochs": 4, "max_train": 10000, "calib": 256, "exclude": [],
                         "keep_first_last": True, "seeds": 3},
    ("resnet20", False): {"epochs": 15, "max_train": None, "calib": 512, "exclude": [],
                          "keep_first_last": True, "seeds": 3},
}


@register("compress_pretrained",
          "Compress a trained Fashion-MNIST MLP: SVD vs whitened vs lstsq vs nonlinear",
          data=("fashion_mnist",))
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    return run_compression(out_dir, "mlp", quick, seed)


# Not in the default quick run: its quick scale trains a ResNet-20 on 10,000 images and
# fine-tunes it twelve times per seed (about 20 minutes a seed on 2 CPU cores); its full
# scale needs a GPU.
@register("compress_pretrained_resnet",
          "Compress a trained Fashion-MNIST ResNet-20: SVD vs whitened vs lstsq vs nonlinear",
          in_quick=False, data=("fashion_mnist",))
def run_resnet(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    return run_compression(out_dir, "resnet20", quick, seed)


def run_compression(out_dir: Path, model_name: str, quick: bool, seed: int,
                    scale: dict | None = None, data_name: str = "fashion_mnist"
                    ) -> ExperimentResult:
    """For each of ``scale["seeds"]`` seeds, train ``model_name`` densely once, then
    compress, fine-tune and time it with every method at every budget (``scale``
    overrides the registered sizes, its optional ``"fractions"`` the budgets).
    Function matching (``nonlinear``) is compared with weight matching
    (``spectral``) by paired differences across seeds."""
    sc = scale or SCALES[model_name, quick]
    seeds = list(range(seed, seed + sc.get("seeds", 3)))
    fractions = tuple(sc.get("fractions", FRACTIONS))
    rows, dense_accs = [], []
    for s in seeds:
        seed_rows, dense_acc = _one_seed(out_dir / f"seed{s}", model_name, s, sc, data_name,
                                         fractions)
        rows += [[s] + r for r in seed_rows]
        dense_accs.append(dense_acc)
    header = ["seed", "param_fraction", "method", "params", "dense_params", "acc_before_ft",
              "acc_after_ft", "latency_vs_dense"]
    files = [write_csv(out_dir / f"compress_pretrained_{model_name}.csv", header, rows)]

    def col(method, frac, c):
        return [r[c] for r in sorted(rows, key=lambda r: r[0]) if r[1:3] == [frac, method]]

    fig, axes = new_figure(ncols=2, figsize=(9.5, 3.8), sharey=True)
    for ax, c, title in ((axes[0], 5, "before fine-tuning"),
                         (axes[1], 6, "after one fine-tuning epoch")):
        for method in METHODS:
            ys = [statistics.fmean(col(method, f, c)) for f in fractions]
            errs = [statistics.stdev(col(method, f, c)) if len(seeds) > 1 else 0.0
                    for f in fractions]
            ax.errorbar(fractions, ys, yerr=errs, marker="o", capsize=2, label=method)
        ax.axhline(statistics.fmean(dense_accs), color="k", ls=":", label="dense")
        ax.set_xlabel("parameter fraction")
        ax.set_title(title)
    axes[0].set_ylabel(f"test accuracy (mean +- std, {len(seeds)} seeds)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    png = out_dir / f"compress_pretrained_{model_name}.png"
    fig.savefig(png, dpi=120)
    files.append(png)

    table = []
    for frac in fractions:
        for method in METHODS:
            table.append([f"{frac:.0%}", method, f"{col(method, frac, 3)[0]:,}",
                          mean_std(col(method, frac, 5), "{:.4f}"),
                          mean_std(col(method, frac, 6), "{:.4f}"),
                          f"{statistics.fmean(col(method, frac, 7)):.2f}x"])
    table.append(["100%", "dense", f"{rows[0][4]:,}", mean_std(dense_accs, "{:.4f}"), "-",
                  "1.00x"])
    tests = []
    for c, stage in ((5, "before FT"), (6, "after FT")):
        for frac in fractions:
            d, lo, hi, p = paired_difference(col("nonlinear", frac, c),
                                             col("spectral", frac, c))
            tests.append([f"{frac:.0%}", stage, f"{d:+.4f}",
                          "-" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]", p])
    adj = holm([t[4] for t in tests])
    tests = [t[:4] + [("-" if math.isnan(t[4]) else f"{t[4]:.3f}"),
                      ("-" if math.isnan(q) else f"{q:.3f}")] for t, q in zip(tests, adj,
                                                                                strict=True)]
    data_note = (f"first {sc['max_train']} training images" if sc["max_train"]
                 else "all 55,000 training images")
    data_label = "Fashion-MNIST" if data_name == "fashion_mnist" else data_name
    md = (f"Dense {model_name} trained {sc['epochs']} epochs on {data_label} ({data_note}) "
          f"once per seed (seeds {seeds}); compressed with {sc['calib']} calibration images "
          "(data-aware methods), "
          f"{'head kept dense' if not sc['keep_first_last'] else 'first and last layers dense'}"
          "; one fine-tuning epoch of SGD (lr 0.01). Accuracy: mean +- std over seeds. "
          "Latency: batch of 256, median of round-robin repeats against the dense model, "
          "mean over seeds.\n\n"
          + markdown_table(["budget", "method", "params", "acc before FT", "acc after FT",
                            "latency"], table)
          + "\n\nFunction matching (nonlinear) minus weight matching (spectral), paired "
          "by seed: mean difference with its 95% t interval; p: two-sided paired t-test, "
          "Holm-corrected across the rows.\n\n"
          + markdown_table(["budget", "stage", "diff", "95% CI", "p", "p (Holm)"], tests)
          + f"\n\n![compress_pretrained]({png.name})\n")
    return ExperimentResult(f"compress_pretrained_{model_name}", md, files)


def _one_seed(out_dir: Path, model_name: str, seed: int, sc: dict, data_name: str,
              fractions: tuple[float, ...]) -> tuple[list[list], float]:
    """Rows ``[fraction, method, params, dense params, acc before FT, acc after FT,
    latency ratio]`` of one dense training run, and the dense test accuracy."""
    from tqdm.auto import tqdm

    from compactnn.surgery import dense_first_last_exclude

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
    for frac in tqdm(fractions, desc=f"compress_pretrained seed {seed}", unit="budget"):
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
    return rows, dense_acc
