"""Layer pruning of a ResNet by two-stage regularization [TRSP] against simpler
ways of choosing which residual blocks to remove.

Per seed a ResNet is trained, then four arms get the same number of further
epochs and remove ``k`` blocks each:

* ``TRSP``: stage 1 (L1 on the block scales), the ``k`` smallest scales chosen,
  stage 2 (L1 + the output-input difference penalty on the chosen blocks);
* ``scale, no stage 2``: stage 1 for all the epochs, the ``k`` smallest scales;
* ``similarity``: plain training, the ``k`` blocks whose output is most similar
  to their removal path (smallest ``1 - cos``);
* ``random``: plain training, ``k`` blocks drawn at random.

Each pruned model is evaluated as it is ("no retraining", the paper's claim)
and after a short fine-tune; forward latency is measured against the unpruned
model in the same run. TRSP is compared with each baseline by paired tests over
(seed, k).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from compactnn.depth import LayerScales, io_similarity_scores, prune_layers

# Training helpers in one place (the engine's home may move).
from compactnn.engine import FitConfig, evaluate, fit, measure_latency, seed_everything
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.models import ResNet, ResNetConfig

ARMS = ("TRSP", "scale, no stage 2", "similarity", "random")


@dataclass
class Setting:
    data: str
    depth: int
    widths: tuple[int, int, int]
    seeds: int
    ks: tuple[int, ...]
    train_size: int
    test_size: int
    base_epochs: int
    stage1_epochs: int
    stage2_epochs: int
    ft_epochs: int
    l1: float = 5e-3  # stage-1 coefficient (per block scale, on the mean batch loss)
    diff: float = 10.0  # stage-2 coefficient (mean squared output-input difference)
    lr: float = 2e-3
    scale_lr: float = 2e-2
    batch: int = 128


QUICK = Setting("digits", 14, (8, 8, 8), 1, (2,), 0, 0, 6, 2, 2, 1, lr=3e-3, batch=32)
# The papers' scale needs a GPU; this fits shared CPUs: ResNet-20's depth (9 blocks) at
# half width on 14x14 Fashion-MNIST with 1,200 training images. Mini-batches of 32 give
# stage 2 about 110 optimizer steps: the difference penalty needs on the order of a
# hundred steps to move the chosen blocks' work into the kept ones.
FULL = Setting("fashion_mnist", 20, (8, 16, 32), 3, (2, 4, 6), 1200, 1000, 6, 2, 3, 1,
               batch=32)


def _data(s: Setting, seed: int):
    """(train loader, test loader, latency batch, input channels)."""
    from torch.utils.data import DataLoader, TensorDataset

    if s.data == "digits":
        from compactnn.data import load_digits_split

        d = load_digits_split(seed=seed)
        xtr, ytr = d.x_train.reshape(-1, 1, 8, 8), d.y_train
        xte, yte = d.x_test.reshape(-1, 1, 8, 8), d.y_test
    else:
        from compactnn.data import load_fashion_mnist

        d = load_fashion_mnist(seed=seed)
        g = torch.Generator().manual_seed(seed)
        tr = torch.randperm(len(d.y_train), generator=g)[: s.train_size]
        te = torch.randperm(len(d.y_test), generator=g)[: s.test_size]
        # 14x14 (2x2 average pooling) keeps a ResNet-20 trainable on shared CPUs
        xtr, ytr = F.avg_pool2d(d.x_train[tr], 2), d.y_train[tr]
        xte, yte = F.avg_pool2d(d.x_test[te], 2), d.y_test[te]
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(xtr, ytr), batch_size=s.batch, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(xte, yte), batch_size=512)
    return train, test, xte[:256]


def _train_scaled(model, scales: LayerScales, train, epochs: int, s: Setting,
                  diff: float = 0.0) -> None:
    """Cross-entropy + L1 on the scales (+ the difference penalty on the tracked
    blocks when ``diff > 0``), AdamW, constant learning rate."""
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": s.lr, "weight_decay": 1e-4},
                             {"params": scales.parameters(), "lr": s.scale_lr,
                              "weight_decay": 0.0}])
    model.train()
    for _ in range(epochs):
        for x, y in train:
            loss = F.cross_entropy(model(x), y) + scales.l1_penalty(s.l1)
            if diff > 0:
                loss = loss + scales.difference_penalty(diff)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _log(partial: str | None, record: dict) -> None:
    """Append one JSON line to ``partial`` (a finished row survives an interrupted run)."""
    if partial is not None:
        import json

        with open(partial, "a") as f:
            f.write(json.dumps(record) + "\n")


def seed_rows(s: Setting, seed: int, threads: int | None = None,
              partial: str | None = None) -> tuple[list, dict]:
    if threads is not None:
        torch.set_num_threads(threads)
    train, test, example = _data(s, seed)
    seed_everything(seed)
    base = ResNet(ResNetConfig(depth=s.depth, widths=s.widths, in_channels=1))
    fit(base, train, FitConfig(epochs=s.base_epochs, lr=s.lr))
    base_acc = evaluate(base, test)["accuracy"]
    base_lat = measure_latency(base, example)
    _log(partial, {"base": {"seed": seed, "base_acc": base_acc,
                            "extra_epochs": s.stage1_epochs + s.stage2_epochs}})
    extra = s.stage1_epochs + s.stage2_epochs

    # stage 1, shared by TRSP and the no-stage-2 arm
    stage1 = _copy(base)
    sc1 = LayerScales(stage1)
    _train_scaled(stage1, sc1, train, s.stage1_epochs, s)
    w1 = sc1.weight.detach().clone()
    sc1.remove(fold=False)  # models are copied without hooks; each copy gets its own scales
    # no stage 2: L1 only for the remaining epochs
    l1_only = _copy(stage1)
    sc_l1 = LayerScales(l1_only)
    with torch.no_grad():
        sc_l1.weight.copy_(w1)
    _train_scaled(l1_only, sc_l1, train, s.stage2_epochs, s)
    l1_scales = sc_l1.values()
    sc_l1.remove(fold=True)
    # plain training for similarity and random
    plain = _copy(base)
    fit(plain, train, FitConfig(epochs=extra, lr=s.lr, cosine=False))
    sims = io_similarity_scores(plain, (x for x, _ in train))
    names = list(sims)

    unpruned = {"scale, no stage 2": evaluate(l1_only, test)["accuracy"],
                "similarity": evaluate(plain, test)["accuracy"]}
    unpruned["random"] = unpruned["similarity"]
    rows = []
    rng = random.Random(seed)
    for k in s.ks:
        # TRSP: choose by stage-1 scales, then stage 2 on the chosen blocks
        trsp = _copy(stage1)
        sc = LayerScales(trsp)
        with torch.no_grad():
            sc.weight.copy_(w1)
        chosen = sc.smallest(k)
        sc.track(chosen)
        _train_scaled(trsp, sc, train, s.stage2_epochs, s, diff=s.diff)
        sc.remove(fold=True)
        unpruned["TRSP"] = evaluate(trsp, test)["accuracy"]
        picks = {
            "TRSP": (trsp, {"names": chosen}),
            "scale, no stage 2": (l1_only, {"scores": {n: abs(v) for n, v in l1_scales.items()},
                                            "num_layers": k}),
            "similarity": (plain, {"scores": sims, "num_layers": k}),
            "random": (plain, {"names": rng.sample(names, k)}),
        }
        for arm in ARMS:
            model, how = picks[arm]
            pruned, report = prune_layers(model, **how)
            before = evaluate(pruned, test)["accuracy"]
            lat = measure_latency(pruned, example) / base_lat
            fit(pruned, train, FitConfig(epochs=s.ft_epochs, lr=s.lr / 2))
            after = evaluate(pruned, test)["accuracy"]
            rows.append([seed, k, arm, unpruned[arm], before, after, report.param_ratio, lat,
                         " ".join(report.removed)])
            _log(partial, {"row": rows[-1]})
    return rows, {"seed": seed, "base_acc": base_acc, "extra_epochs": extra}


def _paired(rows, col: int, a: str, b: str) -> tuple[float, str, str]:
    from scipy.stats import ttest_rel, wilcoxon

    key = {(r[0], r[1], r[2]): r[col] for r in rows}
    pairs = [(key[(sd, k, a)], key[(sd, k, b)]) for (sd, k, arm) in key
             if arm == a and (sd, k, b) in key]
    xa, xb = [p[0] for p in pairs], [p[1] for p in pairs]
    diff = statistics.fmean(x - y for x, y in pairs)
    if len(pairs) < 3 or all(x == y for x, y in pairs):
        return diff, "-", "-"
    t = ttest_rel(xa, xb).pvalue
    try:
        w = wilcoxon(xa, xb).pvalue
    except ValueError:
        w = float("nan")
    return diff, f"{t:.3g}", f"{w:.3g}"


def _all_seeds(s: Setting, seeds: list[int], jobs: int, out_dir: Path
               ) -> list[tuple[list, dict]]:
    """One process per seed when ``jobs > 1`` (seeds are independent)."""
    partial = [str(out_dir / f"partial_seed{sd}.jsonl") for sd in seeds]
    for path in partial:
        Path(path).unlink(missing_ok=True)
    if jobs <= 1 or len(seeds) == 1:
        return [seed_rows(s, sd, None, p) for sd, p in zip(seeds, partial, strict=True)]
    from compactnn.experiments.workers import worker_pool

    with worker_pool(min(jobs, len(seeds))) as pool:
        return list(pool.map(seed_rows, [s] * len(seeds), seeds, [1] * len(seeds), partial))


@register("layer_pruning", "ResNet block removal: TRSP vs smallest scale, similarity, random",
          parallel=True)
def run(out_dir: Path, quick: bool, seed: int, jobs: int = 1) -> ExperimentResult:
    s = QUICK if quick else FULL
    rows, bases = [], []
    for r, b in _all_seeds(s, list(range(seed, seed + s.seeds)), jobs, out_dir):
        rows += r
        bases.append(b)
    return summarize(out_dir, s, rows, bases)


def summarize(out_dir: Path, s: Setting, rows: list, bases: list[dict]) -> ExperimentResult:
    """Tables, tests and the figure from the rows (also usable on the partial
    rows of an interrupted run)."""
    s_ks = sorted(k for k in {r[1] for r in rows}
                  if all(any(r[1] == k and r[2] == a for r in rows) for a in ARMS))
    s = Setting(**{**s.__dict__, "ks": tuple(s_ks)})
    header = ["seed", "k", "arm", "acc_unpruned", "acc_pruned", "acc_finetuned", "param_ratio",
              "latency_vs_unpruned", "removed"]
    csv_path = write_csv(out_dir / "layer_pruning.csv", header, rows)

    def pick(k, arm, col):
        return [r[col] for r in rows if r[1] == k and r[2] == arm]

    table = [[k, arm, mean_std(pick(k, arm, 3), "{:.3f}"), mean_std(pick(k, arm, 4), "{:.3f}"),
              mean_std(pick(k, arm, 5), "{:.3f}"), f"{statistics.fmean(pick(k, arm, 6)):.3f}",
              f"{statistics.median(pick(k, arm, 7)):.2f}x"] for k in s.ks for arm in ARMS]
    tests = []
    for other in ARMS[1:]:
        for col, what in ((4, "pruned, no fine-tune"), (5, "after fine-tune")):
            d, pt, pw = _paired(rows, col, "TRSP", other)
            tests.append([f"TRSP - {other}", what, f"{d:+.4f}", pt, pw])

    fig, axes = new_figure(ncols=2, figsize=(10, 4), sharey=True)
    for ax, col, title in ((axes[0], 4, "removed, no fine-tune"), (axes[1], 5, "after fine-tune")):
        for arm in ARMS:
            ax.plot(s.ks, [statistics.fmean(pick(k, arm, col)) for k in s.ks], marker="o",
                    label=arm)
        ax.axhline(statistics.fmean(b["base_acc"] for b in bases), color="k", ls="--",
                   label="unpruned base")
        ax.set_xlabel("blocks removed")
        ax.set_title(title)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "layer_pruning.png"
    fig.savefig(png, dpi=120)

    nblocks = 3 * ((s.depth - 2) // 6)
    md = (
        f"ResNet-{s.depth} (widths {s.widths}, {nblocks} BasicBlocks, option-A shortcuts) on "
        f"{'scikit-learn digits (8x8)' if s.data == 'digits' else 'Fashion-MNIST at 14x14'}"
        + (f", {s.train_size} training / {s.test_size} test images" if s.train_size else "")
        + f". Base training {s.base_epochs} epochs (AdamW, lr {s.lr}); then every arm gets "
        f"{s.stage1_epochs + s.stage2_epochs} more epochs (TRSP: {s.stage1_epochs} stage 1 + "
        f"{s.stage2_epochs} stage 2, L1 {s.l1}, difference {s.diff}, scale lr {s.scale_lr}); "
        f"fine-tune {s.ft_epochs} epoch(s). Seeds {[b['seed'] for b in bases]}; base accuracy "
        f"{mean_std([b['base_acc'] for b in bases], '{:.3f}')}. Latency: median forward time "
        "of a 256-image batch relative to the unpruned base, same run.\n\n"
        + markdown_table(["k", "arm", "acc before removal", "acc removed (no FT)",
                          "acc after FT", "params x", "latency"], table)
        + "\n\nPaired over (seed, k): mean accuracy difference, t-test and Wilcoxon p-values.\n\n"
        + markdown_table(["comparison", "when", "mean diff", "t p", "Wilcoxon p"], tests)
        + f"\n\n![layer_pruning]({png.name})\n"
    )
    return ExperimentResult("layer_pruning", md, [csv_path, png])
