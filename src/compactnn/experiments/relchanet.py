"""Feature selection with RelChaNet [RelChaNet] against random selection, a
variance filter, a mutual-information filter, L1-regularized logistic
regression, and the full feature set.

For each data set, seed and number of features ``k`` every method picks ``k``
columns from the training split; a fresh MLP is then trained on those columns
only and scored on the test split. RelChaNet is compared with each baseline by
paired tests over (data set, seed, k).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

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
from compactnn.features import RelChaNet
from compactnn.models import MLP, MLPConfig

METHODS = ("RelChaNet", "random", "variance", "mutual info", "L1 logistic")


@dataclass
class Setting:
    datasets: tuple[str, ...]
    ks: dict[str, tuple[int, ...]]
    seeds: int
    train_size: int  # rows used for selection and for the downstream model (0: all)
    select_epochs: int
    downstream_epochs: int


QUICK = Setting(("digits",), {"digits": (8, 16)}, 1, 0, 12, 20)
FULL = Setting(("digits", "fashion_mnist", "census_income"),
               {"digits": (4, 8, 16), "fashion_mnist": (25, 50, 100),
                "census_income": (5, 10, 20)}, 2, 1500, 10, 10)


def _data(name: str, seed: int, train_size: int):
    """(x_train, y_train, x_test, y_test, classes) as float32 / int64 tensors."""
    if name == "digits":
        from compactnn.data import load_digits_split

        d = load_digits_split(seed=seed)
        return d.x_train, d.y_train, d.x_test, d.y_test, 10
    if name == "fashion_mnist":
        from compactnn.data import load_fashion_mnist

        d = load_fashion_mnist(seed=seed, flatten=True)
        g = torch.Generator().manual_seed(seed)
        tr = torch.randperm(len(d.y_train), generator=g)[:train_size]
        te = torch.randperm(len(d.y_test), generator=g)[:3000]
        return d.x_train[tr], d.y_train[tr], d.x_test[te], d.y_test[te], 10
    from compactnn.data import load_census_income

    d = load_census_income(tasks=("income",), seed=seed, max_train=train_size, max_eval=3000)

    def rows(part):  # numeric columns, then every categorical column one-hot
        cats = [torch.nn.functional.one_hot(part.x_cat[:, j].long(), c).float()
                for j, c in enumerate(d.cat_cardinalities)]
        return torch.cat([part.x.float(), *cats], 1), part.targets[0].long()

    xtr, ytr = rows(d.train)
    xte, yte = rows(d.test)
    return xtr, ytr, xte, yte, 2


def _top(values: np.ndarray, k: int) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return sorted(order[:k])


def select_features(method: str, x: Tensor, y: Tensor, k: int, classes: int, seed: int,
            s: Setting) -> list[int]:
    d = x.shape[1]
    if method == "random":
        return sorted(np.random.default_rng(seed).choice(d, k, replace=False).tolist())
    if method == "variance":
        return _top(x.var(0).numpy(), k)
    if method == "mutual info":
        from sklearn.feature_selection import mutual_info_classif

        n = min(len(x), 1000)  # the k-NN estimator is quadratic-ish in rows
        return _top(mutual_info_classif(x[:n].numpy(), y[:n].numpy(), random_state=seed), k)
    if method == "L1 logistic":
        from sklearn.linear_model import LogisticRegression

        xs = x.numpy()
        xs = (xs - xs.mean(0)) / (xs.std(0) + 1e-8)
        lr = LogisticRegression(penalty="l1", C=0.1, solver="saga", max_iter=200, tol=1e-3,
                                random_state=seed)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # saga's ConvergenceWarning at max_iter
            lr.fit(xs, y.numpy())
        return _top(np.abs(lr.coef_).max(0), k)
    sel = RelChaNet(d, k, classes, hidden=(128,), seed=seed)
    sel.fit(x, y, epochs=s.select_epochs, batch_size=64, lr=1e-3)
    return sel.selected().tolist()


def _downstream(x, y, xt, yt, classes: int, seed: int, s: Setting) -> float:
    seed_everything(seed)
    model = MLP(MLPConfig(in_features=x.shape[1], hidden=(128,), num_classes=classes))
    fit(model, TensorBatches(x, y, 64, seed), FitConfig(epochs=s.downstream_epochs, lr=3e-3))
    return evaluate(model, TensorBatches(xt, yt, 1024, None))["accuracy"]


def _log(partial: str | None, record: dict) -> None:
    """Append one JSON line to ``partial`` (a finished row survives an interrupted run)."""
    if partial is not None:
        import json

        with open(partial, "a") as f:
            f.write(json.dumps(record) + "\n")


def dataset_rows(s: Setting, name: str, seed: int, threads: int | None = None,
                 partial: str | None = None) -> list:
    if threads is not None:
        torch.set_num_threads(threads)
    x, y, xt, yt, classes = _data(name, seed, s.train_size)
    rows = [[name, seed, "full set", x.shape[1], _downstream(x, y, xt, yt, classes, seed, s),
             ""]]
    _log(partial, {"row": rows[-1]})
    for k in s.ks[name]:
        for method in METHODS:
            cols = select_features(method, x, y, k, classes, seed, s)
            acc = _downstream(x[:, cols], y, xt[:, cols], yt, classes, seed, s)
            rows.append([name, seed, method, k, acc, " ".join(map(str, cols))])
            _log(partial, {"row": rows[-1]})
    return rows


def _paired(rows, other: str):
    acc = {(r[0], r[1], r[2], r[3]): r[4] for r in rows}
    pairs = [(v, acc[(d, sd, other, k)]) for (d, sd, m, k), v in acc.items()
             if m == "RelChaNet" and (d, sd, other, k) in acc]
    return paired_summary(pairs)


@register("relchanet", "Feature selection: RelChaNet vs random, variance, MI, L1 logistic",
          parallel=True)
def run(out_dir: Path, quick: bool, seed: int, jobs: int = 1) -> ExperimentResult:
    s = QUICK if quick else FULL
    tasks = [(name, sd) for name in s.datasets for sd in range(seed, seed + s.seeds)]
    partial = [str(out_dir / f"partial_{name}_{sd}.jsonl") for name, sd in tasks]
    for path in partial:
        Path(path).unlink(missing_ok=True)
    if jobs > 1 and len(tasks) > 1:
        from compactnn.experiments.workers import worker_pool

        with worker_pool(min(jobs, len(tasks))) as p:
            parts = list(p.map(dataset_rows, [s] * len(tasks), [t[0] for t in tasks],
                               [t[1] for t in tasks], [1] * len(tasks), partial))
    else:
        parts = [dataset_rows(s, name, sd, None, pp) for (name, sd), pp in
                 zip(tasks, partial, strict=True)]
    rows = [r for part in parts for r in part]
    return summarize(out_dir, s, rows, list(range(seed, seed + s.seeds)))


def summarize(out_dir: Path, s: Setting, rows: list, seeds: list[int]) -> ExperimentResult:
    """Tables, tests and the figure from the rows (also usable on the partial
    rows of an interrupted run)."""
    names = [n for n in s.datasets if any(r[0] == n and r[2] == "full set" for r in rows)]
    ks = {n: tuple(k for k in s.ks[n] if all(any(r[0] == n and r[2] == m and r[3] == k
                                                  for r in rows) for m in METHODS))
          for n in names}
    s = Setting(tuple(names), ks, s.seeds, s.train_size, s.select_epochs, s.downstream_epochs)
    csv_path = write_csv(out_dir / "relchanet.csv",
                         ["dataset", "seed", "method", "k", "test_accuracy", "selected"], rows)

    def accs(name, method, k=None):
        return [r[4] for r in rows if r[0] == name and r[2] == method and (k is None or r[3] == k)]

    table = []
    for name in s.datasets:
        full = accs(name, "full set")
        dim = next(r[3] for r in rows if r[0] == name and r[2] == "full set")
        for k in s.ks[name]:
            table.append([name, f"{k} / {dim}"] + [mean_std(accs(name, m, k), "{:.3f}")
                                                   for m in METHODS]
                         + [mean_std(full, "{:.3f}")])
    tests = [[f"RelChaNet - {m}", f"{d:+.4f}", f"{w}/{n}", pt, pw]
             for m in METHODS[1:] for d, w, n, pt, pw in [_paired(rows, m)]]

    fig, axes = new_figure(ncols=len(s.datasets), figsize=(4.2 * len(s.datasets), 3.6),
                           squeeze=False)
    for ax, name in zip(axes[0], s.datasets, strict=True):
        for m in METHODS:
            ax.plot(s.ks[name], [statistics.fmean(accs(name, m, k)) for k in s.ks[name]],
                    marker="o", label=m)
        ax.axhline(statistics.fmean(accs(name, "full set")), color="k", ls="--",
                   label="full set")
        ax.set_xscale("log")
        ax.set_xlabel("features selected (k)")
        ax.set_title(name)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "relchanet.png"
    fig.savefig(png, dpi=120)

    md = (
        f"Each method picks k columns on the training split (up to {s.train_size or 'all'} "
        "rows); a fresh MLP (one hidden layer of 128, AdamW lr 3e-3, "
        f"{s.downstream_epochs} epochs) is trained on them and scored on the test split. "
        f"RelChaNet: hidden 128, 2k candidates, a round every 10 mini-batches of 64, "
        f"{s.select_epochs} epochs. Mutual information on up to 1000 rows (scikit-learn's "
        "k-NN estimator); L1 logistic: saga, C=0.1 on standardized columns, ranked by the "
        "largest |coefficient| over classes. Census-Income: 7 numeric columns plus every "
        f"categorical column one-hot, task income. Seeds {seeds}.\n\n"
        + markdown_table(["data", "k / all", *METHODS, "full set"], table)
        + "\n\nPaired over (data set, seed, k): mean accuracy difference, wins, t-test and "
        "Wilcoxon p-values.\n\n"
        + markdown_table(["comparison", "mean diff", "RelChaNet wins", "t p", "Wilcoxon p"],
                         tests)
        + f"\n\n![relchanet]({png.name})\n"
    )
    return ExperimentResult("relchanet", md, [csv_path, png])
