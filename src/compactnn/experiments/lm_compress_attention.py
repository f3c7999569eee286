"""The lm_compress study's answer to its speed finding: attention kept dense.

At a mild budget the factorized grouped-query key/value projections (192 x 576 in
SmolLM2) are slower than the dense ones (benchmarks/bench_lm_layer_shapes.py), so a
model compressed in every linear layer can be slower than dense. The fix the layers
allow: keep the attention projections dense and take the same share of the linear
layers' parameters from the feed-forward blocks alone
(``compress_lm(..., keep_attention_dense=True)``). This part of the study measures
what it buys (prefill and generation speed beside the every-layer model and dense,
interleaved in one run) and what it costs (perplexity of function matching at the
same budget, against the every-layer cell of the same seed).

In quick mode only the first two blocks are compressed; the budget is then a share
of those blocks' linear layers (``budget_over="selected"`` at the equivalent
feed-forward fraction), in full mode of all of them (the library default).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from compactnn.experiments.reporting import markdown_table

__all__ = ["METHOD", "cell", "report", "speed"]

#: the method whose quality is measured with the attention dense (the study's best)
METHOD = "nonlinear"


def _ffn_removed(model: torch.nn.Module, removed: float, include: Any) -> float:
    """The fraction of the selected feed-forward layers' weights to remove so that
    ``removed`` of all selected linear layers' weights goes."""
    from compactnn.lm.compress import attention_layers
    from compactnn.surgery.select import select_layers

    attention = set(attention_layers(model))
    sizes = {n: model.get_submodule(n).weight.numel()
             for n in select_layers(model, include, None, warn=False)}
    ffn = sum(v for n, v in sizes.items() if n not in attention)
    return removed * sum(sizes.values()) / ffn


def compress(model: torch.nn.Module, method: str, removed: float, calibration: Any,
             include: Any) -> tuple[torch.nn.Module, Any]:
    """``model`` compressed with its attention projections dense, the feed-forward
    layers taking ``removed`` of the (selected) linear layers' parameters."""
    from compactnn.lm.compress import compress_lm

    if include is None:
        return compress_lm(model, method, removed, calibration, keep_attention_dense=True)
    return compress_lm(model, method, _ffn_removed(model, removed, include), calibration,
                       include=include, keep_attention_dense=True, budget_over="selected")


def cell(setting: Any, ratio: float, seed: int) -> dict[str, Any]:
    """Perplexity of :data:`METHOD` at ``ratio`` with the attention dense."""
    from compactnn.lm.compress import METHODS

    t0 = time.perf_counter()
    calib = setting.calibration(seed) if METHODS[METHOD].data_aware else None
    model, rep = compress(setting.model, METHOD, ratio, calib, setting.scale.get("include"))
    t_comp = time.perf_counter() - t0
    t0 = time.perf_counter()
    ppl = setting.perplexities(model)
    return {"ppl": ppl, "compress_s": t_comp, "eval_s": time.perf_counter() - t0,
            "selected_ratio": rep.selected_param_ratio, "linear_ratio": rep.linear_param_ratio,
            "model_ratio": rep.param_ratio}


def speed(setting: Any) -> list[list[Any]]:
    """Prefill and generation tokens/s of dense, every-layer and attention-dense models
    at each ratio, timed interleaved (``lm_compress.speed_rows``)."""
    from compactnn.experiments.lm_compress import speed_rows
    from compactnn.lm.compress import compress_lm

    s = setting.scale
    models = {"dense": setting.model}
    for r in s["ratios"]:  # plain SVD: speed depends on the shapes alone
        models[f"{int(r * 100)}% every layer"] = compress_lm(
            setting.model, "svd", r, include=s.get("include"), budget_over="selected")[0]
        models[f"{int(r * 100)}% attention dense"] = compress(
            setting.model, "svd", r, None, s.get("include"))[0]
    return speed_rows(setting, models)


def report(cells: dict[tuple[str, float, int], dict[str, Any]],
           attn: dict[tuple[float, int], dict[str, Any]], dense: dict[str, Any],
           speed_rows: list[list[Any]]) -> str:
    """The quality table (attention dense against every layer, same method and seed)
    and the speed table."""
    rows = []
    for (ratio, seed), c in sorted(attn.items()):
        every = cells.get((METHOD, ratio, seed))
        fmt = (lambda d, k: f"{d['ppl'][k]:.2f}" if d else "not run")  # noqa: E731
        rows.append([f"{int(ratio * 100)}%", seed, fmt(every, "shakespeare"),
                     fmt(c, "shakespeare"), fmt(every, "kjv"), fmt(c, "kjv"),
                     f"{c['linear_ratio']:.3f}", f"{c['compress_s']:.0f}"])
    parts = []
    if rows:
        parts.append(f"Attention kept dense, the feed-forward layers taking the budget "
                     f"({METHOD}; dense {dense['ppl']['shakespeare']:.2f} / "
                     f"{dense['ppl']['kjv']:.2f}):\n\n"
                     + markdown_table(["removed", "seed", "Shakespeare every layer",
                                       "attention dense", "KJV every layer", "attention dense",
                                       "linear-layer ratio", "compress s"], rows))
    if speed_rows:
        parts.append("Speed with the attention dense (tokens/s, interleaved in one run; "
                     "ideal = inverse MAC ratio):\n\n"
                     + markdown_table(["model", "threads", "batch", "prefill tok/s", "x dense",
                                       "generate tok/s", "x dense", "ideal"], speed_rows))
    return "\n\n".join(parts)
