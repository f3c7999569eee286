"""The lm_compress study's answer to its speed finding: some projections kept dense.

At a mild budget the factorized grouped-query key/value projections (192 x 576 in
SmolLM2) are slower than the dense ones, and at two threads with one row so are the
query/output ones (benchmarks/bench_lm_layer_shapes.py), so a model compressed in every
linear layer can be slower than dense. The fixes the layers allow keep those
projections dense and take the same share of all linear layers' parameters from the
others (``budget_over="linear"``):

* ``attention``: every attention projection dense, the feed-forward layers taking the
  budget (``compress_lm(..., keep_attention_dense=True)``);
* ``kv``: only the key/value projections dense (``exclude=[...k_proj, ...v_proj]``).

This part of the study measures what each buys (prefill and generation speed beside the
every-layer model and dense, interleaved in one run) and what it costs (perplexity of
function matching at the same budget, against the every-layer cell of the same seed).

In quick mode only the first two blocks are compressed; the budget is then a share of
those blocks' linear layers (``budget_over="selected"`` at the equivalent fraction of
the layers compressed), in full mode of all of them (the library default).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from compactnn.experiments.reporting import markdown_table

__all__ = ["METHOD", "PARTS", "VARIANTS", "cell", "compress", "dense_layers", "report",
           "speed", "tasks"]

#: the method whose quality is measured with layers kept dense (the study's best)
METHOD = "nonlinear"
#: what each variant keeps dense
VARIANTS = {"attention": "attention dense", "kv": "k/v dense"}
#: the cell-store part of each variant's cells
PARTS = {"attention": "attention", "kv": "kv_dense"}


def dense_layers(model: torch.nn.Module, variant: str) -> list[str]:
    """The names of the layers ``variant`` keeps dense."""
    from compactnn._checks import check_choice
    from compactnn.lm.compress import attention_layers

    check_choice("variant", variant, tuple(VARIANTS))
    names = attention_layers(model)
    if variant == "kv":
        names = [n for n in names if n.rsplit(".", 1)[-1] in ("k_proj", "v_proj")]
    if not names:
        raise ValueError(f"variant={variant!r}: the model has no such layers")
    return names


def _share_removed(model: torch.nn.Module, removed: float, include: Any,
                   keep: list[str]) -> float:
    """The fraction of the selected layers outside ``keep`` to remove so that
    ``removed`` of all selected linear layers' weights goes."""
    from compactnn.surgery.select import select_layers

    sizes = {n: model.get_submodule(n).weight.numel()
             for n in select_layers(model, include, None, warn=False)}
    kept = set(keep)
    rest = sum(v for n, v in sizes.items() if n not in kept)
    return removed * sum(sizes.values()) / rest


def compress(model: torch.nn.Module, method: str, removed: float, calibration: Any,
             include: Any, variant: str = "attention") -> tuple[torch.nn.Module, Any]:
    """``model`` compressed with ``variant``'s layers dense, the others taking ``removed``
    of the (selected) linear layers' parameters."""
    from compactnn.lm.compress import compress_lm

    keep = dense_layers(model, variant)
    how: dict[str, Any] = ({"keep_attention_dense": True} if variant == "attention"
                           else {"exclude": keep})
    if include is None:
        return compress_lm(model, method, removed, calibration, **how)
    return compress_lm(model, method, _share_removed(model, removed, include, keep),
                       calibration, include=include, budget_over="selected", **how)


def tasks(seed: int, ratios: tuple[float, ...], first: bool) -> list[tuple[str, str, float, int]]:
    """The ``(variant, method, ratio, seed)`` cells of one calibration seed: at the first
    seed every variant with :data:`METHOD` and the k/v variant with SVD-LLM too (does the
    allocation help the baseline as well?); at the others the k/v variant with
    :data:`METHOD` (its paired comparison over seeds)."""
    if first:
        return ([(v, METHOD, r, seed) for v in VARIANTS for r in ratios]
                + [("kv", "svd_llm", r, seed) for r in ratios])
    return [("kv", METHOD, r, seed) for r in ratios]


def cell(setting: Any, variant: str, method: str, ratio: float, seed: int) -> dict[str, Any]:
    """Perplexity of ``method`` at ``ratio`` with ``variant``'s layers dense."""
    from compactnn.lm.compress import METHODS

    t0 = time.perf_counter()
    calib = setting.calibration(seed) if METHODS[method].data_aware else None
    model, rep = compress(setting.model, method, ratio, calib, setting.scale.get("include"),
                          variant)
    t_comp = time.perf_counter() - t0
    t0 = time.perf_counter()
    ppl = setting.perplexities(model)
    return {"ppl": ppl, "compress_s": t_comp, "eval_s": time.perf_counter() - t0,
            "selected_ratio": rep.selected_param_ratio, "linear_ratio": rep.linear_param_ratio,
            "model_ratio": rep.param_ratio}


def speed(setting: Any) -> list[list[Any]]:
    """Prefill and generation tokens/s of the dense model, and of the every-layer and
    each variant's model at each ratio, timed interleaved (``lm_compress.speed_rows``)."""
    from compactnn.experiments.lm_compress import speed_rows
    from compactnn.lm.compress import compress_lm

    s = setting.scale
    models = {"dense": setting.model}
    for r in s["attention_ratios"]:  # plain SVD: speed depends on the shapes alone
        models[f"{int(r * 100)}% every layer"] = compress_lm(
            setting.model, "svd", r, include=s.get("include"), budget_over="selected")[0]
        for variant, label in VARIANTS.items():
            models[f"{int(r * 100)}% {label}"] = compress(
                setting.model, "svd", r, None, s.get("include"), variant)[0]
    return speed_rows(setting, models)


Cells = dict[tuple[str, float, int], dict[str, Any]]


def report(cells: Cells, variants: dict[str, Cells], dense: dict[str, Any],
           speed_rows: list[list[Any]]) -> str:
    """The quality table (each variant against every layer, same method and seed), the
    k/v variant against every layer paired over seeds, and the speed table. ``variants``
    maps a variant to its cells by ``(method, ratio, seed)``."""
    keys = sorted({k for v in variants.values() for k in v})
    rows = []
    for key in keys:
        got = [cells.get(key)] + [variants.get(v, {}).get(key) for v in VARIANTS]
        row: list[Any] = [key[0], f"{int(key[1] * 100)}%", key[2]]
        for task in ("shakespeare", "kjv"):
            row += [f"{c['ppl'][task]:.2f}" if c else "not run" for c in got]
        row += [f"{c['linear_ratio']:.3f}" if c else "-" for c in got[1:]]
        rows.append(row)
    labels = ["every layer", *VARIANTS.values()]
    parts = []
    if rows:
        parts.append(f"Layers kept dense, the others taking the budget (dense "
                     f"{dense['ppl']['shakespeare']:.2f} / {dense['ppl']['kjv']:.2f}; "
                     "perplexity, then the linear-layer ratio of each variant):\n\n"
                     + markdown_table(["method", "removed", "seed",
                                       *[f"Shakespeare {v}" for v in labels],
                                       *[f"KJV {v}" for v in labels],
                                       *[f"ratio {v}" for v in VARIANTS.values()]], rows))
    paired = _paired(cells, variants.get("kv", {}))
    if paired:
        parts.append(paired)
    if speed_rows:
        parts.append("Speed with layers kept dense (tokens/s, interleaved in one run; "
                     "ideal = inverse MAC ratio):\n\n"
                     + markdown_table(["model", "threads", "batch", "prefill tok/s", "x dense",
                                       "generate tok/s", "x dense", "ideal"], speed_rows))
    return "\n\n".join(parts)


def _paired(cells: Cells, kv: Cells) -> str:
    """k/v dense minus every layer, log perplexity paired by calibration seed, per method
    and ratio with at least 2 seeds (Holm over the rows)."""
    import math

    from compactnn.experiments.stats import holm, paired_difference

    tests = []
    for method, ratio in sorted({(m, r) for m, r, _ in kv}):
        seeds = [sd for m, r, sd in kv if (m, r) == (method, ratio) and (m, r, sd) in cells]
        if len(seeds) < 2:
            continue
        for task in ("shakespeare", "kjv"):
            a = [math.log(kv[(method, ratio, sd)]["ppl"][task]) for sd in sorted(seeds)]
            b = [math.log(cells[(method, ratio, sd)]["ppl"][task]) for sd in sorted(seeds)]
            tests.append([method, f"{int(ratio * 100)}%", task, len(seeds),
                          *paired_difference(a, b)])
    if not tests:
        return ""
    adj = holm([t[-1] if not math.isnan(t[-1]) else 1.0 for t in tests])
    rows = [[m, r, t, n, f"{d:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]", f"{p:.3g}", f"{q:.3g}"]
            for (m, r, t, n, d, lo, hi, p), q in zip(tests, adj, strict=True)]
    return ("k/v dense minus every layer (log perplexity, paired by calibration seed; "
            "negative: keeping k/v dense is better):\n\n"
            + markdown_table(["method", "removed", "text", "seeds", "mean diff", "95% CI",
                              "p", "p (Holm)"], rows))
