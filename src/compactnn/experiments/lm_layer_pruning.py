"""Layer pruning of a pretrained LM (SmolLM2-135M, 30 decoder layers): TRSP against the
rankings LLM layer pruning is usually compared with.

Arms, each removing 25% and 40% of the decoder layers without retraining:

* ``TRSP``: learnable scales on every decoder layer's residual branch
  (:class:`~compactnn.depth.LayerScales`), stage 1 (LM loss + ``lam1 * sum |a|``) for
  ``stage1_steps``, the ``k`` smallest scales chosen, stage 2 (+ the penalty on the chosen
  layers' output minus input) for ``stage2_steps``, then the ``k`` smallest scales removed;
* ``scale, no stage 2``: stage 1 for ``stage1_steps + stage2_steps``, the ``k`` smallest;
* ``block influence`` (ShortGPT): the ``k`` layers with the smallest ``1 - cos(x, y)``;
* ``consecutive cosine``: the run of ``k`` consecutive layers whose input and output are
  closest in angle;
* ``random``: ``k`` layers drawn at random.

On CPU only the scales are trained (the model's weights stay frozen: the scales rank the
layers and the kept layers are restored to scale 1 when pruning), which is the part of
TRSP that chooses; the paper also trains the weights so that stage 2 moves the chosen
layers' work into the kept ones. The stage-2 coefficient is relative: ``lam2`` times the
LM loss over the penalty at the start of stage 2, so that it weighs ``lam2`` times the
loss whatever the scale of the hidden states. Seeds draw the calibration windows (and
the random layers). Perplexity on the Shakespeare test works and the KJV, and greedy
generation speed of the dense and pruned models side by side.

Resumable cell by cell (:class:`~compactnn.experiments.cells.CellStore`).
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compactnn.depth import (
    LayerScales,
    block_influence,
    consecutive_angular_distance,
    decoder_layers,
    prune_layers,
)
from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.cells import CellStore, study_main
from compactnn.experiments.reporting import geometric_mean_ci, markdown_table
from compactnn.experiments.stats import comparison_markdown

ARMS = ("TRSP", "scale, no stage 2", "block influence", "consecutive cosine", "random")
FRACTIONS = (0.25, 0.4)


@dataclass(frozen=True)
class Setting:
    calib_n: int
    calib_len: int
    batch: int
    stage1_steps: int
    stage2_steps: int
    lam1: float
    lam2: float
    scale_lr: float
    seeds: tuple[int, ...]
    seq_len: int
    eval_tokens: int
    speed_prompt: int
    speed_tokens: int
    speed_repeats: int


QUICK = Setting(4, 64, 2, 2, 2, 0.01, 1.0, 0.05, (0,), 64, 512, 16, 4, 1)
FULL = Setting(32, 128, 4, 40, 20, 0.01, 1.0, 0.05, (0, 1, 2), 256, 16_384, 64, 32, 3)
# one seed that two heavily shared cores finish in half an hour (a forward-backward of
# SmolLM2 over 2 x 64 tokens took ~10 s there, perplexity on 4,096 tokens minutes)
MEDIUM = Setting(16, 64, 2, 10, 5, 0.01, 1.0, 0.05, (0,), 128, 1024, 32, 8, 2)
SETTINGS = {"quick": QUICK, "medium": MEDIUM, "full": FULL}


def _lm_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           ids[:, 1:].reshape(-1))


def train_scales(model: torch.nn.Module, calib: torch.Tensor, s: Setting,
                 stage2_layers: int | None) -> dict[str, Any]:
    """Stage 1, then (``stage2_layers = k``) stage 2 on the ``k`` smallest scales, or
    (None) stage 1 for the stage-2 steps too. Only the scales train. Returns the final
    scales by layer name, the layers tracked in stage 2 and the budget spent."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    scales = LayerScales(model)
    opt = torch.optim.Adam(scales.parameters(), lr=s.scale_lr)
    was_training = model.training
    model.train()
    t0 = time.perf_counter()
    tokens = 0
    tracked: list[str] = []
    coef = 0.0
    try:
        for step in range(s.stage1_steps + s.stage2_steps):
            rows = calib[torch.arange(step * s.batch, (step + 1) * s.batch) % len(calib)]
            if step == s.stage1_steps and stage2_layers:
                tracked = scales.smallest(stage2_layers)
                scales.track(tracked)
            loss = _lm_loss(model, rows) + scales.l1_penalty(s.lam1)
            if tracked:
                pen = scales.difference_penalty(1.0)
                if not coef:  # lam2 times the loss, whatever the hidden states' scale
                    coef = s.lam2 * float(loss.detach()) / max(float(pen.detach()), 1e-12)
                loss = loss + coef * pen
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tokens += rows.numel()
        values = scales.values()
    finally:
        scales.remove(fold=False)
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)
    return {"scales": values, "tracked": tracked, "stage2_coef": coef,
            "steps": s.stage1_steps + s.stage2_steps, "tokens": tokens,
            "seconds": time.perf_counter() - t0}


def _choose(arm: str, model: torch.nn.Module, calib: torch.Tensor, s: Setting, k: int,
            seed: int, cache: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The ``k`` layers ``arm`` removes, and what it measured to choose them."""
    name, layers = decoder_layers(model)
    names = [f"{name}.{i}" for i in range(len(layers))]
    if arm == "random":
        return sorted(random.Random(seed).sample(names, k), key=names.index), {}
    if arm == "block influence":
        if "bi" not in cache:
            cache["bi"] = block_influence(model, calib.split(s.batch))
        order = sorted(names, key=lambda n: (cache["bi"][n], names.index(n)))
        return order[:k], {"scores": cache["bi"]}
    if arm == "consecutive cosine":
        chosen, dist = consecutive_angular_distance(model, calib.split(s.batch), k)
        return chosen, {"distance": dist}
    run = train_scales(model, calib, s, k if arm == "TRSP" else None)
    mags = {n: abs(v) for n, v in run["scales"].items()}
    order = sorted(names, key=lambda n: (mags[n], names.index(n)))
    return order[:k], run


class Context:
    """The dense model, its token streams and the calibration windows, loaded once."""

    def __init__(self, s: Setting, load: Callable[[], tuple[Any, dict[str, torch.Tensor],
                                                            torch.Tensor]] | None = None) -> None:
        self.s = s
        t0 = time.perf_counter()
        self.model, self.test, self.calib_ids = (load or _load_smollm2)()
        self.model.eval()
        self.load_s = time.perf_counter() - t0

    def calibration(self, seed: int) -> torch.Tensor:
        from compactnn.lm import calibration_batches

        return calibration_batches(self.calib_ids, self.s.calib_n, self.s.calib_len, seed)

    def perplexities(self, model: torch.nn.Module) -> dict[str, float]:
        from compactnn.lm import perplexity

        return {k: perplexity(model, ids, seq_len=self.s.seq_len, max_tokens=self.s.eval_tokens)
                for k, ids in self.test.items()}


def _load_smollm2():
    from compactnn.lm import kjv_text, load_smollm2, shakespeare_text, token_ids

    model, tok = load_smollm2()
    test = {"shakespeare": token_ids(tok, shakespeare_text("test")),
            "kjv": token_ids(tok, kjv_text())}
    return model, test, token_ids(tok, shakespeare_text("calibration"))


def run_study(out: Path, quick: bool, log: Callable[[str], None],
              load: Callable[[], Any] | None = None, scale: str | None = None
              ) -> ExperimentResult:
    """Every cell, then the report; ``scale`` (a key of ``SETTINGS``) overrides ``quick``."""
    scale = scale or ("quick" if quick else "full")
    s = SETTINGS[scale]
    cells = CellStore(out / "cells")
    ctx: list[Context] = []

    def context() -> Context:  # loaded only when some cell has to run
        if not ctx:
            log("loading the model")
            ctx.append(Context(s, load))
        return ctx[0]

    params = asdict(s)
    dense = cells.run("ppl", f"{scale}_dense", params,
                      lambda _p: context().perplexities(context().model), log=log)["result"]
    n_layers = None
    results: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for seed in s.seeds:
        cache: dict[str, Any] = {}
        for frac in FRACTIONS:
            for arm in ARMS:
                def cell(_p, arm=arm, frac=frac, seed=seed, cache=cache) -> dict[str, Any]:
                    c = context()
                    name, layers = decoder_layers(c.model)
                    k = max(1, round(frac * len(layers)))
                    chosen, info = _choose(arm, c.model, c.calibration(seed), s, k, seed, cache)
                    pruned, _ = prune_layers(c.model, names=chosen)
                    t0 = time.perf_counter()
                    ppl = c.perplexities(pruned)
                    return {"removed": chosen, "layers": len(layers), "k": k, "ppl": ppl,
                            "eval_s": time.perf_counter() - t0, **info}

                rec = cells.run("prune", f"{scale}_{arm.replace(' ', '_').replace(',', '')}"
                                f"_{int(frac * 100)}_s{seed}", {**params, "arm": arm,
                                                                 "fraction": frac, "seed": seed},
                                cell, log=log)["result"]
                n_layers = rec["layers"]
                results.setdefault((arm, frac), []).append(rec)

    def speed(_p) -> dict[str, Any]:
        from compactnn.lm import generation_speed

        c = context()
        models = {"dense": c.model}
        for frac in FRACTIONS:
            chosen = results[("TRSP", frac)][0]["removed"]
            models[f"{int(frac * 100)}% removed"] = prune_layers(c.model, names=chosen)[0]
        prompt = c.test["shakespeare"][: s.speed_prompt]
        return {"tokens_per_s": generation_speed(models, prompt, s.speed_tokens,
                                                 repeats=s.speed_repeats)}

    tps = cells.run("speed", scale, params, speed, log=log)["result"]["tokens_per_s"]
    rows = [["dense", "-", 0, f"{dense['shakespeare']:.2f}", f"{dense['kjv']:.2f}", "-"]]
    for (arm, frac), recs in results.items():
        sh = [r["ppl"]["shakespeare"] for r in recs]
        kj = [r["ppl"]["kjv"] for r in recs]
        removed = "; ".join(",".join(n.rsplit(".", 1)[1] for n in r["removed"]) for r in recs)
        rows.append([arm, f"{frac:.0%}", recs[0]["k"], geometric_mean_ci(sh),
                     geometric_mean_ci(kj), removed])
    table = markdown_table(["arm", "removed", "layers", "Shakespeare ppl [95% CI]",
                            "KJV ppl [95% CI]", "removed layers (per seed)"], rows)
    table += "\n\n" + _paired_tables(results, s.seeds)
    budget = [r for (arm, _f), recs in results.items() if arm == "TRSP" for r in recs]
    b = budget[0] if budget else {}
    speed_rows = [[k, f"{v:.1f}", f"{v / tps['dense']:.2f}x"] for k, v in tps.items()]
    md = (f"Setting: {scale} {params}; {n_layers} decoder layers. Scale training per "
          f"(seed, fraction): {b.get('steps')} steps, {b.get('tokens')} tokens, "
          f"{statistics.fmean(r['seconds'] for r in budget) if budget else 0:.0f} s.\n\n"
          + table + "\n\nGreedy generation, tokens/s (one thread, interleaved):\n\n"
          + markdown_table(["model", "tokens/s", "speed-up"], speed_rows) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(md)
    return ExperimentResult("lm_layer_pruning", md, [])


def _paired_tables(results: dict[tuple[str, float], list[dict[str, Any]]],
                   seeds: tuple[int, ...]) -> str:
    """TRSP against every other arm, paired over seeds on log perplexity (a difference of
    logs is a log ratio of perplexities), Holm-corrected within each table."""
    if len(seeds) < 2:
        return "(one seed: no paired comparison)"
    out = []
    for frac in FRACTIONS:
        for corpus in ("shakespeare", "kjv"):
            values = {arm: [math.log(r["ppl"][corpus]) for r in results[(arm, frac)]]
                      for arm in ARMS if (arm, frac) in results}
            if "TRSP" not in values or any(len(v) != len(seeds) for v in values.values()):
                continue
            out.append(f"TRSP against each arm, {frac:.0%} removed, {corpus}: log perplexity "
                       "(TRSP - other < 0: TRSP better), paired over seeds, Holm:\n\n"
                       + comparison_markdown(values, "TRSP", lower_is_better=True,
                                             fmt="{:.3f}", diff_fmt="{:+.3f}"))
    return "\n\n".join(out)


@register("lm_layer_pruning", "TRSP vs Block Influence, consecutive cosine, scale without "
          "stage 2 and random: 25%/40% of SmolLM2-135M's layers removed; perplexity on "
          "Shakespeare/KJV, generation speed-up", data=("smollm2", "shakespeare", "kjv"))
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    torch.manual_seed(seed)
    return run_study(out_dir, quick, log=lambda _m: None)


def main(argv: list[str] | None = None) -> None:
    study_main("compactnn.experiments.lm_layer_pruning", SETTINGS, run_study,
               sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
