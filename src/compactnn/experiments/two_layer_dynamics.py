"""Training dynamics of wide two-layer networks [Montanari & Urbani, *Dynamical
Decoupling of Generalization and Overfitting in Large Two-Layer Networks*]: full-batch
gradient descent on a noisy single-index teacher with Gaussian inputs, logged on a
logarithmic time axis.

Teacher: ``y = relu(w* . x) + noise * eps`` with ``|w*| = 1``, ``x ~ N(0, I_d)``; test
error is the mean squared error against the noiseless teacher. Students:
:class:`compactnn.models.two_layer.TwoLayerNets` (mean-field, each step ``lr * m`` times
the gradient), every seed its own teacher, data and initialization. Logged: train and
test error, the complexity (path norm), the alignment of the first layer with ``w*``,
and the distance of the features from their initialization.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.reporting import markdown_table, mean_std, new_figure, write_csv
from compactnn.experiments.stats import holm, paired_comparison
from compactnn.models.two_layer import TwoLayerNets

COLUMNS = ("step", "train", "test", "complexity", "alignment", "feature_move")


@dataclass(frozen=True)
class Setting:
    dim: int
    samples: int
    widths: tuple[int, ...]
    scales: tuple[float, ...]  # init scale of the second layer
    seeds: int
    steps: int
    lr: float = 0.2
    noise: float = 0.5
    test_samples: int = 2000
    marks: int = 40  # log-spaced logging points


QUICK = Setting(10, 100, (32, 128), (0.01, 1.0), 5, 2000)
FULL = Setting(20, 200, (32, 128, 512), (0.01, 1.0, 4.0), 5, 4000)


def train(s: Setting, width: int, scale: float, seed: int) -> list[list[list[float]]]:
    """Per seed, the logged rows ``COLUMNS`` at log-spaced steps."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(s.seeds, s.dim, generator=g)
    w_star = w_star / w_star.norm(dim=1, keepdim=True)
    x = torch.randn(s.seeds, s.samples, s.dim, generator=g)
    xt = torch.randn(s.seeds, s.test_samples, s.dim, generator=g)

    def teacher(z):
        return torch.relu(torch.einsum("snd,sd->sn", z, w_star))

    y = teacher(x) + s.noise * torch.randn(s.seeds, s.samples, generator=g)
    yt = teacher(xt)
    net = TwoLayerNets(s.dim, width, s.seeds, scale, generator=g)
    w0 = net.w.detach().clone()
    marks = {0, *(int(round(v)) for v in torch.logspace(0, math.log10(s.steps), s.marks).tolist())}
    logs: list[list[list[float]]] = [[] for _ in range(s.seeds)]
    for t in range(s.steps + 1):
        if t in marks:
            with torch.no_grad():
                cols = [((net(x) - y) ** 2).mean(1), ((net(xt) - yt) ** 2).mean(1),
                        net.complexity(), net.alignment(w_star),
                        (net.w - w0).pow(2).sum(-1).mean(-1).sqrt()]
            for i in range(s.seeds):
                logs[i].append([t, *(float(c[i]) for c in cols)])
        if t == s.steps:
            break
        loss = ((net(x) - y) ** 2).mean(1).sum() / 2
        gw, ga = torch.autograd.grad(loss, [net.w, net.a])
        with torch.no_grad():  # mean-field: every parameter's step is m times its gradient
            net.w -= s.lr * width * gw
            net.a -= s.lr * width * ga
    return logs


def seed_summary(rows: list[list[float]]) -> dict[str, float]:
    """Times and values of one seed's run (steps, not log steps)."""
    step, test = [r[0] for r in rows], [r[2] for r in rows]
    comp, align = [r[3] for r in rows], [r[4] for r in rows]
    best = min(range(len(rows)), key=test.__getitem__)
    peak = max(range(len(rows)), key=align.__getitem__)
    rise = test[-1] - test[best]
    over = next((step[i] for i in range(best, len(rows))
                 if test[i] >= test[best] + rise / 2), step[-1]) if rise > 0 else math.inf
    half_c = comp[0] + (comp[-1] - comp[0]) / 2
    t_c = next(step[i] for i in range(len(rows)) if comp[i] >= half_c) \
        if comp[-1] > comp[0] else math.inf
    return {"t_align": step[peak], "align_peak": align[peak], "align_final": align[-1],
            "t_best": step[best], "test_best": test[best], "test_final": test[-1],
            "train_final": rows[-1][1], "c_best": comp[best], "c_final": comp[-1],
            "t_overfit": over, "t_complexity": t_c}


@register("two_layer_dynamics", "Two-layer nets on a noisy teacher: complexity, feature "
          "learning and overfitting on a log time axis, by width and init scale")
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    torch.set_num_threads(1)
    s = QUICK if quick else FULL
    logs = {(m, a): train(s, m, a, seed) for m in s.widths for a in s.scales}
    return summarize(out_dir, s, logs)


def summarize(out_dir: Path, s: Setting, logs) -> ExperimentResult:
    rows = [[m, a, i, *r] for (m, a), per in logs.items() for i, seq in enumerate(per)
            for r in seq]
    csv_path = write_csv(out_dir / "two_layer_dynamics.csv", ["width", "init_scale", "seed",
                                                               *COLUMNS], rows)
    sums = {k: [seed_summary(seq) for seq in per] for k, per in logs.items()}

    def col(k, key):
        return [d[key] for d in sums[k]]

    def ms(k, key, fmt="{:.3g}"):
        v = col(k, key)
        return mean_std(v, fmt) if all(math.isfinite(x) for x in v) else "inf in some seeds"

    table = [[m, a, ms(k, "t_align"), ms(k, "align_peak", "{:.2f}"),
              ms(k, "align_final", "{:.2f}"), ms(k, "t_best"),
              ms(k, "test_best", "{:.4f}"), ms(k, "t_overfit"), ms(k, "test_final", "{:.4f}"),
              ms(k, "c_best", "{:.2f}"), ms(k, "c_final", "{:.2f}"), ms(k, "t_complexity")]
             for k in sums for m, a in [k]]

    # (iv) non-monotone test error: final - best > 0, Holm over the settings
    comps = {k: paired_comparison(col(k, "test_final"), col(k, "test_best")) for k in sums}
    adj = holm([c.p_t for c in comps.values()])
    nonmono = [[m, a, f"{c.mean_diff:+.4f}", f"[{c.ci_t[0]:+.4f}, {c.ci_t[1]:+.4f}]",
                f"{q:.3g}"] for ((m, a), c), q in zip(comps.items(), adj, strict=True)]
    # (ii) the smallest init scale against each larger one at the same width
    small = s.scales[0]
    pairs = [(m, a) for m in s.widths for a in s.scales[1:]]
    bias = [paired_comparison(col((m, small), "c_best"), col((m, a), "c_best"))
            for m, a in pairs]
    bias_t = [paired_comparison(col((m, small), "test_best"), col((m, a), "test_best"))
              for m, a in pairs]
    adj_c, adj_t = holm([c.p_t for c in bias]), holm([c.p_t for c in bias_t])
    bias_rows = [[m, f"{small} vs {a}", f"{c.mean_diff:+.3f} (p Holm {q:.3g})",
                  f"{t.mean_diff:+.4f} [{t.ci_t[0]:+.4f}, {t.ci_t[1]:+.4f}] (p Holm {qt:.3g})"]
                 for (m, a), c, q, t, qt in zip(pairs, bias, adj_c, bias_t, adj_t, strict=True)]
    # (iii) and (i): time-scale ratios per seed
    order = [d["t_align"] < d["t_overfit"] for k in sums for d in sums[k]]
    slow = [d["t_complexity"] > 10 * d["t_align"] for k in sums for d in sums[k]]

    png = _plot(out_dir, s, logs)
    md = (
        f"Teacher relu(w* . x) + {s.noise} N(0,1), x ~ N(0, I_{s.dim}), {s.samples} training "
        f"samples, test error against the noiseless teacher on {s.test_samples}. Mean-field "
        f"two-layer ReLU nets, first layer N(0, I/d), second N(0, scale^2); full-batch GD, "
        f"step {s.lr} x width, {s.steps} steps; {s.seeds} seeds per setting (own teacher, "
        "data, init). Complexity: path norm (1/m) sum |a_j||w_j|; alignment: path-norm "
        "weighted |cos(w_j, w*)|. t_align: step of peak alignment; t_best: of the lowest "
        "test error; t_overfit: first step after t_best where the test error has made half "
        "its rise to the final value; t_complexity: step where the complexity has made half "
        "its total change.\n\n"
        + markdown_table(["width", "init scale", "t_align", "peak align", "final align", "t_best",
                          "best test", "t_overfit", "final test", "complexity at t_best",
                          "final complexity", "t_complexity"], table)
        + "\n\n(iv) Final minus best test error (paired over seeds, Holm over settings):\n\n"
        + markdown_table(["width", "init scale", "final - best", "95% CI", "p Holm"], nonmono)
        + "\n\n(ii) Smallest init scale minus larger: complexity at t_best, best test "
        "error (paired over seeds, Holm over comparisons):\n\n"
        + markdown_table(["width", "scales", "complexity diff", "best test diff [95% CI]"],
                         bias_rows)
        + f"\n\n(iii) t_align < t_overfit in {sum(order)}/{len(order)} runs; (i) t_complexity "
        f"> 10 t_align in {sum(slow)}/{len(slow)} runs.\n\n![two_layer_dynamics]({png.name})\n"
    )
    return ExperimentResult("two_layer_dynamics", md, [csv_path, png])


def _plot(out_dir: Path, s: Setting, logs) -> Path:
    fig, axes = new_figure(ncols=4, figsize=(20, 4), squeeze=False)
    ax1, ax2, ax3, ax4 = axes[0]
    m = s.widths[-1]

    def mean_curve(k, c):
        per = logs[k]
        x = [max(r[0], 0.5) for r in per[0]]
        return x, [sum(seq[j][c] for seq in per) / len(per) for j in range(len(per[0]))]

    for i, (w, a) in enumerate(logs):
        x, y = mean_curve((w, a), 3)
        ax1.plot(x, y, color=f"C{i}", label=f"m={w}, scale={a}")
    ax1.set_yscale("log")
    ax1.set_title("(i) complexity (path norm)")
    for i, a in enumerate(s.scales):
        x, y = mean_curve((m, a), 2)
        ax2.plot(x, y, color=f"C{i}", label=f"test, scale={a}")
        x, y = mean_curve((m, a), 3)
        ax2.plot(x, [v / 10 for v in y], color=f"C{i}", ls=":", label=f"complexity/10, {a}")
    ax2.set_title(f"(ii) init scale, m={m}")
    k = (m, s.scales[0])
    for c, name, st in ((4, "alignment", "-"), (5, "feature move", "--"), (2, "test error", ":")):
        x, y = mean_curve(k, c)
        ax3.plot(x, y, ls=st, label=name)
    ax3.set_title(f"(iii) m={m}, scale={s.scales[0]}")
    for i, a in enumerate(s.scales):
        for c, st in ((1, "--"), (2, "-")):
            x, y = mean_curve((m, a), c)
            ax4.plot(x, y, color=f"C{i}", ls=st,
                     label=f"{'train' if c == 1 else 'test'}, scale={a}")
    ax4.set_yscale("log")
    ax4.set_title(f"(iv) train (dashed) and test error, m={m}")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("GD step")
        ax.legend(fontsize=6)
    fig.tight_layout()
    png = out_dir / "two_layer_dynamics.png"
    fig.savefig(png, dpi=110)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compactnn.experiments.two_layer_dynamics",
                                description="two_layer_dynamics at a chosen budget (the full "
                                            "mode's setting with these changes)")
    p.add_argument("--out", required=True)
    p.add_argument("--widths", type=int, nargs="+", default=list(FULL.widths))
    p.add_argument("--scales", type=float, nargs="+", default=list(FULL.scales))
    p.add_argument("--steps", type=int, default=FULL.steps)
    p.add_argument("--seeds", type=int, default=FULL.seeds)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if min(a.widths) < 1 or a.steps < 1 or a.seeds < 2 or min(a.scales) < 0:
        p.error("widths and steps must be >= 1, seeds >= 2, scales >= 0")
    torch.set_num_threads(1)
    s = replace(FULL, widths=tuple(a.widths), scales=tuple(a.scales), steps=a.steps,
                seeds=a.seeds)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = {(m, sc): train(s, m, sc, a.seed) for m in s.widths for sc in s.scales}
    result = summarize(out, s, logs)
    (out / "two_layer_dynamics.md").write_text(result.markdown)
    print(result.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
