"""Low-rank training from scratch on Fashion-MNIST: initialization x Frobenius
decay x parameter budget, against dense and sparse baselines at equal
parameter count.

Claims tested: spectral init and Frobenius decay together let low-rank
networks approach dense ones at a fraction of the parameters and beat
unstructured sparsity at equal memory [FNL]; nonlinear init trains better than
spectral init, most at low rank [LR-NL].

Every arm is one ``compactnn train`` run (same code path as the command line);
seeds pair the arms (same data order), so differences are tested with a paired
t-test across seeds against spectral + FD, Holm-corrected across the table.
Arms are independent, so ``jobs`` worker processes (one thread each) run them
side by side; every run resumes from its own folder, so an interrupted grid
continues where it stopped. The training recipe follows [FNL] (see ``DECAY``).

``lowrank_grid`` is the MLP (quick and full scale); ``lowrank_grid_resnet`` is
ResNet-20, registered separately because its full scale (about 2 CPU-hours per
run here, 155 runs) needs a GPU.
"""

from __future__ import annotations

import math
import signal
import statistics
from dataclasses import dataclass
from pathlib import Path

from compactnn.config import build_config
from compactnn.engine import RunInterrupted
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.experiments.stats import holm, paired_difference
from compactnn.tasks.classify import TrainConfig, train

FRACTIONS = (0.02, 0.05, 0.10, 0.25)
# [FNL]'s recipe: weight decay = Frobenius-decay coefficient = 1e-4 (factors get no
# weight decay when Frobenius decay is on), SGD with plain momentum 0.9, step decay
# x0.1 at 50% and 75% of training, no warm-up.
DECAY = 1e-4
# (init, Frobenius decay): "kaiming_factors" is [FNL]'s no-spectral-init baseline,
# "default" the variance-matched random baseline.
LOWRANK_ARMS = [("kaiming_factors", False), ("kaiming_factors", True), ("default", False),
                ("spectral", False), ("spectral", True), ("nonlinear", False),
                ("nonlinear", True)]
SPARSE_ARMS = ("magnitude pruning", "IHT")
REFERENCE = "spectral + FD"
CHANNEL_ARM = "spectral + FD (channel)"  # ResNet only: the second conv scheme
CHANCE = 0.1  # accuracy of a diverged run (10 balanced classes)


@dataclass(frozen=True)
class Scale:
    model: str
    seeds: int
    epochs: int
    max_train: int | None
    fractions: tuple[float, ...] = FRACTIONS
    data: str = "fashion_mnist"
    arms: tuple[str, ...] | None = None  # labels to run (None: all)


SCALES = {  # (model, quick)
    # quick: the recipe's shape at a size that fits ``make reproduce`` (two budgets,
    # two seeds, the four arms the claims turn on)
    ("mlp", True): Scale("mlp", seeds=2, epochs=2, max_train=4000, fractions=(0.05, 0.25),
                         arms=("kaiming_factors", "default", "spectral", "spectral + FD",
                               "IHT")),
    ("mlp", False): Scale("mlp", seeds=5, epochs=15, max_train=None),
    # ResNet-20 with its stem and classifier dense cannot go below 3.1% of its
    # parameters (every conv at rank 1), so its grid starts at 5%.
    ("resnet20", True): Scale("resnet20", seeds=2, epochs=3, max_train=4000,
                              fractions=(0.05, 0.10, 0.25)),
    ("resnet20", False): Scale("resnet20", seeds=5, epochs=15, max_train=None,
                               fractions=(0.05, 0.10, 0.25)),
}


def arm_label(init: str, fd: bool) -> str:
    return f"{init}{' + FD' if fd else ''}"


def _config(scale: Scale, seed: int, out: Path, **sections: dict) -> TrainConfig:
    model = scale.model
    mlp = model == "mlp"
    data = {"name": scale.data, "max_train": scale.max_train}
    base = {
        "data": data,
        "model": {"name": model, "hidden": [512, 512]},
        "optim": {"name": "sgd", "lr": 0.05 if mlp else 0.1, "momentum": 0.9, "nesterov": False,
                  "epochs": scale.epochs, "batch_size": 128, "weight_decay": DECAY,
                  "factor_weight_decay": None, "schedule": "step", "warmup_epochs": 0},
        "seed": seed, "out": str(out), "progress": False, "resume": True,
    }
    for key, value in sections.items():
        base[key] = value
    return build_config(TrainConfig, base)


def _arms(model: str, fraction: float, only: tuple[str, ...] | None = None
          ) -> list[tuple[str, dict]]:
    """``(label, config sections)`` of every compared arm at ``fraction``. The
    ResNet keeps its stem convolution and classifier dense and factorizes its
    convolutions with [FNL]'s spatial scheme (plus one channel-scheme arm; the
    nonlinear arms are channel-scheme, as function matching needs); the
    MLP's first layer holds most of its weights, so only its head stays dense."""
    keep_fl = model != "mlp"
    exclude = [] if keep_fl else ["head"]
    scheme = "channel" if model == "mlp" else "spatial"
    arms = []

    def lowrank(init: str, fd: bool, conv_scheme: str) -> dict:
        return {"lowrank": {"param_ratio": fraction, "init": init,
                            "frobenius_decay": DECAY if fd else 0.0,
                            "conv_scheme": conv_scheme, "keep_first_last": keep_fl,
                            "exclude": exclude}}

    for init, fd in LOWRANK_ARMS:
        # function matching through a ReLU needs output channels as the matrix rows,
        # which only the channel scheme has
        arms.append((arm_label(init, fd),
                     lowrank(init, fd, "channel" if init == "nonlinear" else scheme)))
    if model != "mlp":
        arms.append((CHANNEL_ARM, lowrank("spectral", True, "channel")))
    for method, name in (("imp", SPARSE_ARMS[0]), ("iht", SPARSE_ARMS[1])):
        sparse = {"method": method, "param_ratio": fraction}
        if method == "imp":
            sparse["rounds"] = 2
        arms.append((name, {"sparse": sparse, "lowrank": {"keep_first_last": keep_fl,
                                                          "exclude": exclude}}))
    return [a for a in arms if only is None or a[0] in only]


_STOP: list[int] = []  # in a worker: the signal received between runs


def _note_stop(signum, frame) -> None:
    _STOP.append(signum)


def _worker_init() -> None:
    """A worker outlives SIGINT/SIGTERM between runs (dying would break the pool):
    it notes the signal and starts no further run (see :func:`_train_job`)."""
    import signal

    signal.signal(signal.SIGINT, _note_stop)
    signal.signal(signal.SIGTERM, _note_stop)


def _pool(workers: int):
    """Worker processes for the grid's runs (spawned: no state forked from the parent;
    they die with it)."""
    from compactnn.experiments.workers import worker_pool

    return worker_pool(workers, initializer=_worker_init)


def _train_job(cfg: TrainConfig, threads: int | None) -> dict:
    """One arm (in a worker process when ``threads`` is set). A run that already
    finished in ``cfg.out`` with the same config is read back, not re-evaluated."""
    if _STOP:  # a signal arrived between runs: start nothing, report the stop
        return {"finished": False, "signal": _STOP[0]}
    out = Path(cfg.out)
    if cfg.resume and (out / "result.json").exists():
        import json

        from compactnn.config import config_to_dict
        from compactnn.engine import check_same_config
        from compactnn.tasks.classify import RUN_KEYS

        check_same_config(out / "checkpoint.safetensors", config_to_dict(cfg), RUN_KEYS)
        return json.loads((out / "result.json").read_text())
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    from compactnn.engine import TrainingDiverged

    try:
        return {**train(cfg).metrics, "diverged": False}
    except TrainingDiverged:
        # A diverged arm is a result of the comparison, not a failure of the grid: it
        # scores chance accuracy (its logits are NaN) and is flagged in the CSV.
        return {"finished": True, "diverged": True, "test_accuracy": CHANCE,
                "nonzero_params": None, "dense_params": None, "train_seconds": math.nan}


def _finished(res: dict) -> dict:
    # A run stopped by SIGINT/SIGTERM saved its checkpoint: stop the grid too (a
    # re-run of the same command resumes every run from its folder).
    if not res["finished"]:
        raise RunInterrupted(res.get("signal") or signal.SIGINT)
    return res


def check_budgets(configs: list[TrainConfig]) -> None:
    """Raise before any training if some arm's low-rank budget cannot be met."""
    from compactnn.surgery import dense_first_last_exclude, factorize
    from compactnn.tasks.classify import build_model, load_data

    seen = set()
    for cfg in configs:
        lr = cfg.lowrank
        key = (cfg.model.name, lr.param_ratio, lr.rank, tuple(lr.exclude), lr.keep_first_last,
               lr.conv_scheme)
        if not lr.enabled or key in seen:
            continue
        seen.add(key)
        data = load_data(cfg.data, cfg.seed)
        model = build_model(cfg.model, tuple(data.x_train.shape[1:]), data.num_classes)
        exclude = list(lr.exclude) + (dense_first_last_exclude(model) if lr.keep_first_last
                                      else [])
        factorize(model, rank=lr.rank, param_ratio=lr.param_ratio, exclude=exclude or None,
                  init="default", conv_scheme=lr.conv_scheme, inplace=True)


def _run_jobs(configs: list[TrainConfig], workers: int) -> list[dict]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(configs), desc="lowrank_grid", unit="run")
    try:
        if workers <= 1:
            results = []
            for cfg in configs:
                results.append(_finished(_train_job(cfg, None)))
                bar.update()
            return results
        from concurrent.futures import as_completed

        out: list[dict | None] = [None] * len(configs)
        pool = _pool(workers)
        try:
            futures = {pool.submit(_train_job, cfg, 1): i for i, cfg in enumerate(configs)}
            for fut in as_completed(futures):
                out[futures[fut]] = _finished(fut.result())
                bar.update()
        finally:  # on an interrupt, start no queued run
            pool.shutdown(wait=True, cancel_futures=True)
        return out  # type: ignore[return-value]
    finally:
        bar.close()


def _comparisons(labels: list[str], frac: float, acc, params) -> list[list]:
    """One table row per arm at ``frac``: its accuracy and its paired difference to
    the reference arm (raw p in column 5; :func:`_holm_column` adds the adjusted)."""
    ref = acc(REFERENCE, frac)
    rows = []
    for label in labels:
        vals = acc(label, frac)
        if label == REFERENCE or not ref:
            diff, p = ("ref" if label == REFERENCE else "-"), math.nan
        else:
            d, lo, hi, p = paired_difference(vals, ref)
            diff = f"{d:+.4f}" + ("" if math.isnan(lo) else f" [{lo:+.4f}, {hi:+.4f}]")
        rows.append([f"{frac:.0%}", label, f"{params(label, frac):,}",
                     mean_std(vals, "{:.4f}"), diff, p])
    return rows


def _holm_column(table: list[list]) -> list[list]:
    """``table`` with its raw p column formatted and the Holm-adjusted one added."""
    raw = [r[5] if isinstance(r[5], float) else math.nan for r in table]
    adj = holm(raw)

    def fmt(p: float) -> str:
        return "-" if math.isnan(p) else f"{p:.3f}"

    return [r[:5] + [fmt(p), fmt(q)] for r, p, q in zip(table, raw, adj, strict=True)]


def run_grid(out_dir: Path, scale: Scale, seed: int, jobs: int = 1) -> ExperimentResult:
    """Train every arm of ``scale`` and write the table, CSV and plot."""
    model = scale.model
    seeds = list(range(seed, seed + scale.seeds))
    jobs_list = []
    for s in seeds:
        jobs_list.append((model, "dense", 1.0, s, {}))
        for frac in scale.fractions:
            for label, sections in _arms(model, frac, scale.arms):
                jobs_list.append((model, label, frac, s, sections))
    configs = []
    for model_, label, frac, s, sections in jobs_list:
        tag = f"{model_}-{label.replace(' ', '').replace('+', '_')}-{frac}-s{s}"
        configs.append(_config(scale, s, out_dir / "runs" / tag, **sections))
    check_budgets(configs)
    results = _run_jobs(configs, jobs)
    rows = [[m, label, frac, s, res["nonzero_params"], res["dense_params"],
             res["test_accuracy"], res["train_seconds"], bool(res.get("diverged", False))]
            for (m, label, frac, s, _), res in zip(jobs_list, results, strict=True)]
    header = ["model", "method", "param_fraction", "seed", "params", "dense_params",
              "test_accuracy", "train_seconds", "diverged"]
    files = [write_csv(out_dir / f"lowrank_grid_{model}.csv", header, rows)]

    def acc(label, frac):
        return [r[6] for r in sorted(rows, key=lambda r: r[3]) if r[1] == label and r[2] == frac]

    def params(label, frac):
        # an arm whose every run diverged has no count of its own: the low-rank arms
        # at one budget share their layers' ranks, so the reference arm's count is its
        found = [r[4] for r in rows if r[1] == label and r[2] == frac and r[4]]
        if not found and label not in SPARSE_ARMS:
            found = [r[4] for r in rows if r[1] == REFERENCE and r[2] == frac and r[4]]
        return found[0] if found else 0

    labels = list(dict.fromkeys(r[1] for r in rows if r[1] != "dense"))
    diverged = sorted({(r[1], r[2]) for r in rows if r[8]})
    table = []
    for frac in scale.fractions:
        table += _comparisons(labels, frac, acc, params)
    dense = acc("dense", 1.0)
    dense_params = rows[0][5]
    table.append(["100%", "dense", f"{dense_params:,}", mean_std(dense, "{:.4f}"), "-", "-",
                  "-"])
    dense_mean = statistics.fmean(dense)
    series = {}
    for label in labels:
        xs = [params(label, f) for f in scale.fractions]
        ys = [statistics.fmean(acc(label, f)) for f in scale.fractions]
        errs = [statistics.stdev(acc(label, f)) if len(seeds) > 1 else 0.0
                for f in scale.fractions]
        series[label] = (xs, ys, errs)
    # Arms that failed to train (chance accuracy) would flatten every other curve:
    # the axis covers the arms within 25 points of dense, the rest sit on its floor.
    near = [y for _, ys, _ in series.values() for y in ys if y >= dense_mean - 0.25]
    floor = min(near + [dense_mean]) - 0.01
    fig, ax = new_figure(figsize=(6.6, 4.4))
    for label, (xs, ys, errs) in series.items():
        style = "--" if label in ("magnitude pruning", "IHT") else "-"
        shown = [max(y, floor) for y in ys]
        line = ax.errorbar(xs, shown, yerr=[e if y >= floor else 0 for y, e in zip(ys, errs,
                                                                                  strict=True)],
                           fmt=style, marker="o", capsize=2, label=label)
        low = [(x, floor) for x, y in zip(xs, ys, strict=True) if y < floor]
        if low:
            ax.plot(*zip(*low, strict=True), "v", ms=9, color=line[0].get_color())
    ax.axhline(dense_mean, color="k", ls=":", label="dense")
    ax.set_ylim(floor - 0.005, max(max(near), dense_mean) + 0.01)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (nonzero)")
    ax.set_ylabel("test accuracy (mean +- std over seeds)")
    data_label = "Fashion-MNIST" if scale.data == "fashion_mnist" else scale.data
    title = f"{model} on {data_label} ({len(seeds)} seed(s), {scale.epochs} epochs)"
    if any(y < floor for _, ys, _ in series.values() for y in ys):
        title += "\nv: below the axis (see the table)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    png = out_dir / f"lowrank_grid_{model}.png"
    fig.savefig(png, dpi=120)
    files.append(png)
    train_note = (f"first {scale.max_train} training images" if scale.max_train
                  else "all 55,000 training images")
    data_note = (f"Fashion-MNIST ({train_note}, 5,000 validation, 10,000 test)"
                 if scale.data == "fashion_mnist" else scale.data)
    md = (f"{model} on {data_note}, {scale.epochs} epochs of SGD per arm ([FNL]'s recipe: "
          f"momentum 0.9 (not Nesterov), batch 128, weight decay = Frobenius decay = {DECAY:g} "
          "with no weight decay on the factors under Frobenius decay, lr x0.1 at 50% and "
          f"75% of training, no warm-up), seeds {seeds}. Budgets are whole-model "
          "parameter fractions; sparse baselines count nonzero weights. Test accuracy is "
          f"mean +- std over seeds; diff: mean paired difference to {REFERENCE} at the "
          "same budget with its 95% t interval; p: two-sided paired t-test, Holm-corrected "
          "across the comparisons of this table ('-' with one seed).\n\n"
          + markdown_table(["budget", "method", "params", "test accuracy",
                            f"diff vs {REFERENCE} [95% CI]", "p", "p (Holm)"],
                           _holm_column(table))
          + (("\n\nDiverged (loss NaN; scored at chance, "
              f"{CHANCE}): " + "; ".join(
                  f"{lab} at {fr:.0%}: {sum(r[8] for r in rows if (r[1], r[2]) == (lab, fr))}"
                  f"/{len(seeds)} seeds" for lab, fr in diverged)) if diverged else "")
          + f"\n\n![{model}]({png.name})\n")
    return ExperimentResult(f"lowrank_grid_{model}", md, files)


@register("lowrank_grid", "Fashion-MNIST MLP: init x Frobenius decay x budget vs dense/sparse",
          parallel=True, data=("fashion_mnist",))
def run(out_dir: Path, quick: bool, seed: int, jobs: int = 1) -> ExperimentResult:
    return run_grid(out_dir, SCALES["mlp", quick], seed, jobs)


# Not in the default quick run: even its quick scale (4,000 images, 3 epochs, 2 seeds,
# 10 arms) takes about an hour with --jobs 2 on 2 CPU cores; the full scale needs a GPU.
@register("lowrank_grid_resnet",
          "Fashion-MNIST ResNet-20: init x Frobenius decay x budget vs dense/sparse",
          in_quick=False, parallel=True, data=("fashion_mnist",))
def run_resnet(out_dir: Path, quick: bool, seed: int, jobs: int = 1) -> ExperimentResult:
    return run_grid(out_dir, SCALES["resnet20", quick], seed, jobs)
