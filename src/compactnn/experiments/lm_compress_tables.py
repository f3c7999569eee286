"""The tables and the plot of the lm_compress study
(:mod:`compactnn.experiments.lm_compress`): the published ratios beside ours, the paired
comparisons against SVD-LLM, the fine-tunes and their summary over seeds."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from compactnn.experiments.reporting import geometric_mean_ci, markdown_table, new_figure
from compactnn.experiments.stats import holm, paired_difference

__all__ = ["FINETUNE_SEEDS", "PUBLISHED", "PUBLISHED_DENSE", "RATIOS", "comparisons",
           "finetune_table", "methods", "plot", "published"]

RATIOS = (0.2, 0.4, 0.6)
# Published LLaMA-7B WikiText-2 perplexities at 20 / 40 / 60% removed (dense 5.68):
# SVD-LLM's tables; the comparison is of orderings and ratios to dense, not values.
PUBLISHED_DENSE = 5.68
PUBLISHED = {"svd": (20061, 52589, 105474), "fwsvd": (1727, 18156, 32194),
             "asvd": (11.14, 1407, 57057), "svd_llm": (7.94, 13.11, 53.74)}

#: the methods fine-tuned at every calibration seed (the others at the first only): the
#: best of compactnn's and the best published one
FINETUNE_SEEDS = ("nonlinear", "svd_llm")


def methods() -> list[str]:
    from compactnn.lm.compress import METHODS

    return list(METHODS)


def published(cells: dict[tuple[str, float, int], dict[str, Any]],
               dense: dict[str, Any]) -> str:
    """Ratios to dense beside the published LLaMA-7B WikiText-2 ones (the scales differ:
    orderings and ratios are compared, not values)."""
    rows = []
    for method, pub in PUBLISHED.items():
        for i, ratio in enumerate(RATIOS):
            vals = [c["ppl"]["shakespeare"] for (m, r, _), c in cells.items()
                    if m == method and r == ratio]
            ours = (f"{statistics.fmean(vals) / dense['ppl']['shakespeare']:.2f}" if vals
                    else "not run")
            rows.append([method, f"{int(ratio * 100)}%", f"{pub[i] / PUBLISHED_DENSE:.3g}",
                         ours])
    return ("Ratio of perplexity to dense, beside the published LLaMA-7B WikiText-2 "
            f"ratios (dense {PUBLISHED_DENSE}; FWSVD is not implemented here):\n\n"
            + markdown_table(["method", "removed", "LLaMA-7B published", "SmolLM2 here "
                              "(Shakespeare)"], rows))


def comparisons(s: dict[str, Any], cells: dict[tuple[str, float, int], dict[str, Any]]) -> str:
    """Paired by calibration seed: each data-aware method against SVD-LLM, log
    perplexity on Shakespeare, Holm-corrected over all comparisons."""
    tests = []
    for ratio in s["ratios"]:
        for method in methods():
            if method in ("svd", "svd_llm"):
                continue
            pairs = [(math.log(cells[(method, ratio, sd)]["ppl"]["shakespeare"]),
                      math.log(cells[("svd_llm", ratio, sd)]["ppl"]["shakespeare"]))
                     for sd in s["seeds"] if (method, ratio, sd) in cells
                     and ("svd_llm", ratio, sd) in cells]
            if len(pairs) >= 2:
                d, lo, hi, p = paired_difference([a for a, _ in pairs], [b for _, b in pairs])
                tests.append([method, f"{int(ratio * 100)}%", len(pairs), d, lo, hi, p])
    if not tests:
        return "(paired comparisons need at least 2 seeds per method)"
    adj = holm([t[-1] if not math.isnan(t[-1]) else 1.0 for t in tests])
    rows = [[m, r, n, f"{d:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]", f"{p:.3g}", f"{a:.3g}"]
            for (m, r, n, d, lo, hi, p), a in zip(tests, adj, strict=True)]
    return ("Against SVD-LLM (difference of log perplexity on Shakespeare, paired by "
            "calibration seed; negative is better):\n\n"
            + markdown_table(["method", "removed", "pairs", "mean diff", "95% CI", "p",
                              "p (Holm)"], rows))


def finetune_table(s: dict[str, Any], cells: dict[tuple[str, float, int], dict[str, Any]],
              dense: dict[str, Any]) -> str:
    rows = []
    order = {m: i for i, m in enumerate(methods())}
    for (m, r, sd), c in sorted(cells.items(), key=lambda kv: (order.get(kv[0][0], 99),
                                                               *kv[0][1:])):
        if "ppl_finetuned" in c:
            rows.append([m, f"{int(r * 100)}%", sd, f"{c['ppl']['shakespeare']:.2f}",
                         f"{c['ppl_finetuned']['shakespeare']:.2f}", f"{c['ppl']['kjv']:.2f}",
                         f"{c['ppl_finetuned']['kjv']:.2f}", f"{c['finetune_s']:.0f}"])
    if not rows:
        return "Fine-tuning: not run at this scale (the full mode fine-tunes at 40% removed)."
    return (f"Fine-tuning the factors only (AdamW lr 1e-4, {s['finetune_steps']} steps of 2 x "
            f"{s['seq_len']} calibration-play tokens, no adapters):\n\n"
            + markdown_table(["method", "removed", "seed", "Shakespeare before", "after",
                              "KJV before", "after", "seconds"], rows)
            + _finetune_summary(cells, dense))


def _finetune_summary(cells: dict[tuple[str, float, int], dict[str, Any]],
                      dense: dict[str, Any]) -> str:
    """Over the seeds fine-tuned for every one of :data:`FINETUNE_SEEDS`: geometric mean
    perplexity after the fine-tune with its interval and ratio to dense, and the first
    method against the second paired by seed (log perplexity)."""
    ratios = {r for (m, r, _), c in cells.items() if "ppl_finetuned" in c}
    out = []
    for ratio in sorted(ratios):
        seeds = sorted(set.intersection(*[{sd for (m, r, sd), c in cells.items()
                                           if m == method and r == ratio
                                           and "ppl_finetuned" in c}
                                          for method in FINETUNE_SEEDS]))
        if len(seeds) < 2:
            continue
        rows = []
        for method in FINETUNE_SEEDS:
            row: list[Any] = [method, f"{int(ratio * 100)}%", len(seeds)]
            for task in ("shakespeare", "kjv"):
                vals = [cells[(method, ratio, sd)]["ppl_finetuned"][task] for sd in seeds]
                gm = math.exp(statistics.fmean(math.log(v) for v in vals))
                row += [geometric_mean_ci(vals), f"{gm / dense['ppl'][task]:.2f}"]
            rows.append(row)
        diffs = []
        for task in ("shakespeare", "kjv"):
            a, b = ([math.log(cells[(m, ratio, sd)]["ppl_finetuned"][task]) for sd in seeds]
                    for m in FINETUNE_SEEDS)
            d, lo, hi, p = paired_difference(a, b)
            diffs.append(f"{task} {d:+.3f} [{lo:+.3f}, {hi:+.3f}], p {p:.3g}")
        out.append(markdown_table(["method", "removed", "seeds", "Shakespeare after [95% CI]",
                                   "x dense", "KJV after [95% CI]", "x dense"], rows)
                   + f"\n\n{FINETUNE_SEEDS[0]} - {FINETUNE_SEEDS[1]} after the fine-tune "
                   "(log perplexity, paired by seed; negative: the first is better): "
                   + "; ".join(diffs) + ".")
    if not out:
        return ""
    return "\n\nOver calibration seeds, after the fine-tune:\n\n" + "\n\n".join(out)


def plot(out_dir: Path, s: dict[str, Any], cells: dict[tuple[str, float, int], dict[str, Any]],
          dense: dict[str, Any]) -> Path | None:
    if len(s["ratios"]) < 2:
        return None
    fig, ax = new_figure(figsize=(6, 4))
    for method in methods():
        xs, ys = [], []
        for ratio in s["ratios"]:
            vals = [c["ppl"]["shakespeare"] for (m, r, _), c in cells.items()
                    if m == method and r == ratio]
            if vals:
                xs.append(ratio * 100)
                ys.append(statistics.fmean(vals) / dense["ppl"]["shakespeare"])
        if xs:
            ax.plot(xs, ys, marker="o", label=method)
    ax.set_yscale("log")
    ax.set_xlabel("linear-layer parameters removed (%)")
    ax.set_ylabel("perplexity / dense (Shakespeare)")
    ax.legend(fontsize=8)
    path = out_dir / "lm_compress.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
