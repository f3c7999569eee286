"""Compress a pretrained language model (SmolLM2-135M) by rank: plain SVD, ASVD,
SVD-LLM (whitening, and with its least-squares refit of U) against compactnn's
least-squares and function-matching factorizations, at 20 / 40 / 60% of the linear
layers' parameters removed; perplexity on held-out Shakespeare (in domain) and the
King James Bible (out of domain), before and after a short fine-tune of the factors;
prefill and generation speed against the dense model, measured side by side.

Every data-aware method calibrates block by block, sequentially, on the same
calibration windows (drawn from the calibration plays with the cell's seed), so
methods are paired by seed. Each cell (method, ratio, seed) is written to its own
file as it finishes: ``python -m compactnn.experiments.lm_compress OUT [quick]``
resumes a full run where it stopped.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments import lm_compress_attention as attention
from compactnn.experiments.cells import CellStore
from compactnn.experiments.lm_compress_tables import (
    FINETUNE_SEEDS,
    RATIOS,
    comparisons,
    finetune_table,
    methods,
    plot,
    published,
)
from compactnn.experiments.reporting import geometric_mean_ci, markdown_table, write_csv

SCALES: dict[bool, dict[str, Any]] = {
    # quick: the whole model with only its first two blocks compressed (so perplexities
    # stay those of a working model), one ratio and seed, small evaluations, no fine-tune
    True: {"include": r"model\.layers\.[01]\..*", "calib_n": 8, "calib_len": 128,
           "eval_tokens": 1024, "seq_len": 128, "ratios": (0.4,), "seeds": (0,),
           "finetune_steps": 0, "finetune_ratio": 0.4, "speed_batches": (1,),
           "speed_threads": (1,), "prompt": 32, "new_tokens": 8, "repeats": 2,
           "attention_ratios": (0.4,)},
    False: {"include": None, "calib_n": 32, "calib_len": 256, "eval_tokens": 8192,
            "seq_len": 256, "ratios": RATIOS, "seeds": (0, 1, 2), "finetune_steps": 20,
            "finetune_ratio": 0.4, "speed_batches": (1, 16), "speed_threads": (1, 2),
            "prompt": 64, "new_tokens": 16, "repeats": 3, "attention_ratios": (0.2, 0.4)},
}


class Setting:
    """The dense model, tokenizer and token streams of one run, loaded once."""

    def __init__(self, quick: bool) -> None:
        from compactnn.lm import load_smollm2, shakespeare_text, token_ids
        from compactnn.lm.text import kjv_text

        self.scale = SCALES[quick]
        t0 = time.perf_counter()
        from compactnn.data.registry import cache_root

        # a float copy in the user cache makes every later load take a second
        model, tok = load_smollm2(cache_dir=cache_root() / "lm")
        self.model = model.eval()
        self.load_s = time.perf_counter() - t0
        calib = shakespeare_text("calibration")
        # quick mode draws its windows from the first plays only (tokenizing all 25
        # calibration plays costs more than the rest of the quick run)
        self.calib_ids = token_ids(tok, calib[: 400_000] if quick else calib)
        self.test = {"shakespeare": self._prefix(tok, shakespeare_text("test")),
                     "kjv": self._prefix(tok, kjv_text())}

    def _prefix(self, tok: Any, text: str) -> torch.Tensor:
        """The token ids of enough of ``text`` for the evaluation (about 4 characters
        a token; the whole text when the prefix falls short)."""
        from compactnn.lm import token_ids

        need = self.scale["eval_tokens"] + 1
        ids = token_ids(tok, text[: need * 12])
        return ids if ids.numel() >= need else token_ids(tok, text)

    def perplexities(self, model: torch.nn.Module) -> dict[str, float]:
        from compactnn.lm import perplexity

        return {k: perplexity(model, ids, seq_len=self.scale["seq_len"],
                              max_tokens=self.scale["eval_tokens"])
                for k, ids in self.test.items()}

    def calibration(self, seed: int) -> torch.Tensor:
        from compactnn.lm import calibration_batches

        return calibration_batches(self.calib_ids, self.scale["calib_n"],
                                   self.scale["calib_len"], seed)


def _compress(setting: Setting, method: str, ratio: float, seed: int):
    from compactnn.lm.compress import METHODS, compress_lm

    calib = setting.calibration(seed) if METHODS[method].data_aware else None
    model, report = compress_lm(setting.model, method, ratio, calib, budget_over="selected",
                                include=setting.scale.get("include"))
    return model, report, calib


def _cell(setting: Setting, method: str, ratio: float, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    model, report, calib = _compress(setting, method, ratio, seed)
    t_comp = time.perf_counter() - t0
    t0 = time.perf_counter()
    ppl = setting.perplexities(model)
    t_eval = time.perf_counter() - t0
    return {"ppl": ppl, "compress_s": t_comp, "eval_s": t_eval,
            "calibration_s": report.timings.get("calibration_s", 0.0),
            "decomposition_s": report.timings.get("decomposition_s", t_comp),
            "selected_ratio": report.selected_param_ratio,
            "model_ratio": report.param_ratio,
            "calib_tokens": 0 if calib is None else calib.numel()}


def _finetuned(setting: Setting, method: str, ratio: float, seed: int) -> dict[str, Any]:
    """The cell's model (compressed again: every method is deterministic given its
    seed) after a short fine-tune of its factors."""
    from compactnn.lm.compress import finetune_factors

    s = setting.scale
    model, _, _ = _compress(setting, method, ratio, seed)
    t0 = time.perf_counter()
    losses = finetune_factors(model, setting.calib_ids, steps=s["finetune_steps"],
                              seq_len=s["seq_len"], batch_size=2, lr=1e-4, seed=seed)
    return {"finetune_s": time.perf_counter() - t0, "finetune_loss": [losses[0], losses[-1]],
            "ppl_finetuned": setting.perplexities(model)}


def _speed(setting: Setting) -> list[list[Any]]:
    """Prefill and generation tokens/s of the compressed shapes of each ratio against the
    dense model (:func:`speed_rows`)."""
    from compactnn.lm.compress import compress_lm

    s = setting.scale
    models = {"dense": setting.model}
    for r in s["ratios"]:
        models[f"{int(r * 100)}%"] = compress_lm(setting.model, "svd", r, budget_over="selected",
                                                include=s.get("include"))[0]
    return speed_rows(setting, models)


def speed_rows(setting: Any, models: dict[str, torch.nn.Module]) -> list[list[Any]]:
    """Prefill and generation tokens/s of ``models`` (``"dense"`` among them) at each of
    the scale's thread counts and batch sizes, timed interleaved; the ideal is the
    inverse ratio of multiply-adds of all linear layers (the output head included;
    attention scores not counted)."""
    from compactnn.lm import generation_speed, prefill_speed
    from compactnn.surgery.budget import count_macs

    s = setting.scale
    prompt = setting.test["shakespeare"][: s["prompt"]]
    x = prompt.unsqueeze(0)
    macs = {k: count_macs(m, x) for k, m in models.items()}
    rows = []
    for threads in s["speed_threads"]:
        for batch in s["speed_batches"]:
            pre = prefill_speed(models, prompt, batch_size=batch, threads=threads,
                                repeats=s["repeats"])
            gen = generation_speed(models, prompt, s["new_tokens"], batch_size=batch,
                                   threads=threads, repeats=s["repeats"])
            for k in models:
                rows.append([k, threads, batch, f"{pre[k]:.0f}", f"{pre[k] / pre['dense']:.2f}",
                             f"{gen[k]:.1f}", f"{gen[k] / gen['dense']:.2f}",
                             f"{macs['dense'] / macs[k]:.2f}"])
    return rows


def run_study(out_dir: Path, quick: bool, log=print, setting: Setting | None = None,
              report_only: bool = False, reverse: bool = False) -> ExperimentResult:
    """Run (or resume) every cell under ``out_dir`` and build the report. ``setting``
    replaces the real model and text (the tests pass a tiny one). ``report_only``
    builds the report from the finished cells alone, running nothing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store = CellStore(out_dir / "cells")
    if report_only:
        return _stored_report(out_dir, store, quick)
    setting = Setting(quick) if setting is None else setting
    s = setting.scale
    dense = store.run("dense", "dense", {"quick": quick},
                      lambda _p: {"ppl": setting.perplexities(setting.model),
                                  "load_s": setting.load_s}, log)["result"]
    # ratio 0.4 first, then the others; seeds last: a cut run has the middle column
    order = sorted(s["ratios"], key=lambda r: abs(r - 0.4))
    cells: dict[tuple[str, float, int], dict[str, Any]] = {}
    from compactnn.lm.compress import METHODS

    # in order of value to a run cut short: every method at the middle ratio, the speed
    # table, the fine-tunes, the attention-dense fix, the other ratios, then the further
    # calibration seeds
    tasks: list[tuple[str, Any]] = []
    for seed in s["seeds"]:
        for ratio in order:
            tasks += [("cell", (m, ratio, seed)) for m in methods()
                      if not (seed and not METHODS[m].data_aware)]  # SVD: one seed
            if seed == s["seeds"][0] and ratio == order[0]:
                tasks.append(("speed", None))
                if s["finetune_steps"] > 0:
                    tasks += [("finetune", (m, s["finetune_ratio"], seed)) for m in methods()]
                tasks += [("attn_speed", None)] + [
                    ("attn", t) for t in attention.tasks(seed, s["attention_ratios"], True)]
        if seed != s["seeds"][0]:
            tasks += [("attn", t) for t in attention.tasks(seed, s["attention_ratios"], False)]
            if s["finetune_steps"] > 0:
                # further seeds fine-tune the two methods the study's goal compares
                tasks += [("finetune", (m, s["finetune_ratio"], seed)) for m in FINETUNE_SEEDS]
    if reverse:  # a second worker on the same folder: meets the first once, at most
        tasks.reverse()  # one cell run twice (cells are deterministic given their seed)
    speed: list[list[Any]] = []
    attn_speed: list[list[Any]] = []
    attn: dict[str, attention.Cells] = {}
    for kind, key in tasks:
        if kind == "speed":
            speed = store.run("speed", "speed", {"quick": quick},
                              lambda _p: {"rows": _speed(setting)}, log)["result"]["rows"]
            continue
        if kind == "attn_speed":
            attn_speed = store.run("attention", "speed", {"quick": quick},
                                   lambda _p: {"rows": attention.speed(setting)},
                                   log)["result"]["rows"]
            continue
        if kind == "attn":
            variant, method, ratio, seed = key
            attn.setdefault(variant, {})[(method, ratio, seed)] = store.run(
                attention.PARTS[variant], f"{method}_r{int(ratio * 100)}_s{seed}",
                {"method": method, "ratio": ratio, "seed": seed, "quick": quick},
                lambda _p, k=key: attention.cell(setting, *k), log)["result"]
            continue
        method, ratio, seed = key
        name = f"{method}_r{int(ratio * 100)}_s{seed}"
        params = {"method": method, "ratio": ratio, "seed": seed, "quick": quick}
        if kind == "cell":
            rec = store.run("cells", name, params,
                            lambda _p, k=key: _cell(setting, *k), log)
            cells.setdefault(key, {}).update(rec["result"])
        else:
            rec = store.run("finetune", name, {**params, "steps": s["finetune_steps"]},
                            lambda _p, k=key: _finetuned(setting, *k), log)
            cells.setdefault(key, {}).update(rec["result"])
    return _report(out_dir, quick, s, dense, cells, speed, attn, attn_speed)


def _stored_report(out_dir: Path, store: CellStore, quick: bool) -> ExperimentResult:
    dense = store.load("dense", "dense")
    if dense is None:
        raise SystemExit(f"{out_dir}: no finished cells yet")
    cells: dict[tuple[str, float, int], dict[str, Any]] = {}
    for rec in store.finished("cells").values():
        p = rec["params"]
        cells[(p["method"], p["ratio"], p["seed"])] = dict(rec["result"])
    for rec in store.finished("finetune").values():
        p = rec["params"]
        cells.setdefault((p["method"], p["ratio"], p["seed"]), {}).update(rec["result"])
    speed = store.load("speed", "speed")
    attn: dict[str, attention.Cells] = {}
    attn_speed: list[list[Any]] = []
    for variant, part in attention.PARTS.items():
        for name, rec in store.finished(part).items():
            if name == "speed":
                attn_speed = rec["result"]["rows"]
            else:
                p = rec["params"]
                attn.setdefault(variant, {})[(p["method"], p["ratio"], p["seed"])] = rec["result"]
    return _report(out_dir, quick, SCALES[quick], dense["result"],
                   {k: v for k, v in cells.items() if "ppl" in v},
                   [] if speed is None else speed["result"]["rows"], attn, attn_speed)


def _report(out_dir: Path, quick: bool, s: dict[str, Any], dense: dict[str, Any],
            cells: dict[tuple[str, float, int], dict[str, Any]], speed: list[list[Any]],
            attn: dict[str, attention.Cells] | None = None,
            attn_speed: list[list[Any]] | None = None) -> ExperimentResult:
    files = []
    rows, csv_rows = [], []
    for method in methods():
        for ratio in s["ratios"]:
            got = [(sd, c) for (m, r, sd), c in cells.items() if m == method and r == ratio]
            if not got:
                continue
            sh = [c["ppl"]["shakespeare"] for _, c in got]
            kj = [c["ppl"]["kjv"] for _, c in got]
            cal = statistics.fmean(c.get("calibration_s", 0.0) for _, c in got)
            dec = statistics.fmean(c.get("decomposition_s", c["compress_s"]) for _, c in got)
            ev = statistics.fmean(c["eval_s"] for _, c in got)
            rows.append([method, f"{int(ratio * 100)}%", len(got), geometric_mean_ci(sh),
                         f"{statistics.fmean(sh) / dense['ppl']['shakespeare']:.2f}",
                         geometric_mean_ci(kj),
                         f"{statistics.fmean(kj) / dense['ppl']['kjv']:.2f}",
                         f"{got[0][1]['model_ratio']:.3f}", f"{cal:.0f}", f"{dec:.0f}",
                         f"{ev:.0f}"])
            for sd, c in got:
                csv_rows.append([method, ratio, sd, c["ppl"]["shakespeare"], c["ppl"]["kjv"],
                                 c["compress_s"], c["eval_s"], c["selected_ratio"],
                                 c["model_ratio"]])
    files.append(write_csv(out_dir / "lm_compress.csv",
                           ["method", "removed", "seed", "ppl_shakespeare", "ppl_kjv",
                            "compress_s", "eval_s", "selected_ratio", "model_ratio"], csv_rows))
    md = [f"Dense: perplexity {dense['ppl']['shakespeare']:.2f} on held-out Shakespeare, "
          f"{dense['ppl']['kjv']:.2f} on the KJV ({s['eval_tokens']} tokens each, windows of "
          f"{s['seq_len']}); calibration {s['calib_n']} x {s['calib_len']} tokens per seed."
          + (" Quick mode: only the first two of the 30 blocks are compressed."
             if quick else ""), "",
          markdown_table(["method", "removed", "seeds", "ppl Shakespeare [95% CI]",
                          "x dense", "ppl KJV [95% CI]", "x dense", "whole-model ratio",
                          "calibration s", "decomposition s", "eval s"], rows)]
    md += ["", published(cells, dense), "", comparisons(s, cells), "",
           finetune_table(s, cells, dense), "",
           "Speed (tokens/s; ratio to dense, measured interleaved in one run; ideal = "
           "inverse ratio of linear-layer multiply-adds):", "",
           markdown_table(["model", "threads", "batch", "prefill tok/s", "x dense",
                           "generate tok/s", "x dense", "ideal"], speed)]
    extra = attention.report(cells, attn or {}, dense, attn_speed or [])
    if extra:
        md += ["", extra]
    fig = plot(out_dir, s, cells, dense)
    if fig is not None:
        files.append(fig)
        md += ["", f"![perplexity]({fig.name})"]
    return ExperimentResult("lm_compress", "\n".join(md), files)


@register("lm_compress", "Compress SmolLM2-135M by rank: SVD, ASVD, SVD-LLM vs lstsq and "
          "function matching; perplexity on Shakespeare and the KJV; speed",
          data=("smollm2", "shakespeare", "kjv"))
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    torch.manual_seed(seed)
    return run_study(out_dir, quick, log=lambda _m: None)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m compactnn.experiments.lm_compress",
                                 description="Run or resume the SmolLM2 compression study, "
                                             "one cell at a time; finished cells are skipped.")
    ap.add_argument("out", type=Path, help="the results folder (cells and report.md)")
    ap.add_argument("scale", nargs="?", choices=["quick"], default=None,
                    help="quick: two blocks, one ratio and seed (default: the full study)")
    ap.add_argument("--report", action="store_true",
                    help="the report of the finished cells only, running nothing")
    ap.add_argument("--reverse", action="store_true",
                    help="run the cells last to first, for a second worker on the same folder")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    result = run_study(args.out, quick=args.scale == "quick", report_only=args.report,
                       reverse=args.reverse,
                       log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    (args.out / "report.md").write_text(result.markdown + "\n")
    print(result.markdown)


if __name__ == "__main__":
    main()
