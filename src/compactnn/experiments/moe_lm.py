"""Token routing in a small decoder LM: DSelect-k against softmax, Top-2 and a dense FFN.

A nanoGPT-shaped character-level decoder (pre-norm blocks, causal attention) is trained
on the Shakespeare works of the fixed calibration split; each feed-forward block is
either one dense MLP of the same *active* size as ``k`` experts (``k * expert_hidden``)
or ``num_experts`` experts routed per token by

* ``softmax``: the dense softmax gate (every expert runs on every token),
* ``top2``: Top-2 with renormalized weights and the Switch / Mixtral balancing loss,
* ``dselect_k``: per-token DSelect-k, ``k = 2``, with its entropy regularizer.

Every arm gets the same steps and the same tuning budget (:func:`compactnn.tune.tune`:
TPE, equal trials, choice on the validation works' bits per character, the chosen
configuration re-trained from the evaluation seeds and scored on the test works). Per
final run it records the expert load (coefficient of variation of the mean weight per
expert, over the validation tokens, averaged over the blocks), the fraction of tokens
whose DSelect-k weights have at most ``k`` nonzeros (exactly sparse) during training
and at the end, and the training step time. A separate side-by-side benchmark times
a training step and an inference forward of each gate under dense, sparse and capacity
execution in one process (interleaved), with DSelect-k's selectors saturated so that its
weights are exactly sparse as after training.

Resumable: the tuning protocol keeps its trials and final runs in ``tune/``, the
benchmark is a cell of a :class:`~compactnn.experiments.cells.CellStore` in ``cells/``.
``python -m compactnn.experiments.moe_lm OUT [quick|medium|full]`` runs it outside
``reproduce`` (``medium``: a half-size model, FULL's seeds, 400 steps, one trial a gate).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.cells import CellStore, study_main
from compactnn.experiments.char_lm import CharData, bits_per_char, char_data, random_windows
from compactnn.experiments.reporting import markdown_table, mean_ci, new_figure
from compactnn.experiments.stats import comparison_markdown
from compactnn.models.char_gpt import CharGPT, CharGPTConfig
from compactnn.tune import Categorical, LogUniform, Method, tune
from compactnn.utils import interleaved_timings, machine_info

ARMS = ("dense", "softmax", "top2", "dselect_k")
_FFN = {"dense": "dense", "softmax": "softmax", "top2": "topk", "dselect_k": "dselect_k"}


@dataclass(frozen=True)
class Setting:
    train_chars: int | None  # None: the whole calibration split
    eval_chars: int
    dim: int
    layers: int
    heads: int
    context: int
    batch: int
    experts: int
    expert_hidden: int
    k: int
    steps: int
    n_trials: int
    seeds: tuple[int, ...]
    log_every: int
    speed_repeats: int


QUICK = Setting(200_000, 4_096, 32, 2, 2, 32, 8, 4, 32, 2, 40, 2, (0, 1), 10, 3)
# nanoGPT's CPU setting (4 layers, 4 heads, width 128, context 64, batch 12) with 8
# experts of width 256: Top-2 and DSelect-k run 512 hidden units per token, as the
# dense FFN does.
FULL = Setting(None, 100_000, 128, 4, 4, 64, 12, 8, 256, 2, 2000, 6, (0, 1, 2), 50, 10)
# What two heavily shared cores finish in about half an hour (FULL's dense step took
# ~1 s there): half the width, half the depth, 8 experts of width 128, 400 steps, FULL's
# seeds, each gate with one trial, its start configuration (lr 1e-3, balance 0.01,
# entropy 0.1, gamma 1).
MEDIUM = Setting(None, 10_000, 64, 2, 4, 64, 8, 8, 128, 2, 400, 1, (0, 1, 2), 20, 5)
SETTINGS = {"quick": QUICK, "medium": MEDIUM, "full": FULL}


def _space(arm: str) -> Method:
    space: dict[str, Any] = {"lr": LogUniform(3e-4, 1e-2)}
    start: dict[str, Any] = {"lr": 1e-3}
    if arm == "top2":
        space["balance_reg"] = LogUniform(1e-3, 1e-1)
        start["balance_reg"] = 1e-2
    if arm == "dselect_k":
        space["entropy_reg"] = LogUniform(1e-3, 1.0)
        space["gamma"] = Categorical((0.1, 1.0, 5.0))
        start.update(entropy_reg=0.1, gamma=1.0)
    return Method(space=space, start=(start,))


def _config(s: Setting, data: CharData, arm: str, params: Mapping[str, Any],
            execution: str = "auto") -> CharGPTConfig:
    options: dict[str, Any] = {}
    if arm == "top2":
        options["balance_reg"] = float(params["balance_reg"])
    if arm == "dselect_k":
        options.update(entropy_reg=float(params["entropy_reg"]), gamma=float(params["gamma"]))
    hidden = s.expert_hidden * (s.k if arm == "dense" else 1)
    return CharGPTConfig(vocab=data.vocab, context=s.context, dim=s.dim, layers=s.layers,
                         heads=s.heads, hidden=hidden, ffn=_FFN[arm], num_experts=s.experts,
                         k=s.k, gate_options=options, execution=execution)


def _load(model: CharGPT) -> tuple[float | None, float | None]:
    """Mean over the blocks of the last forward's expert-load CV and sparse fraction."""
    blocks = model.moe_blocks()
    if not blocks:
        return None, None
    cvs = [float(b.last_load.std(unbiased=False) / b.last_load.mean()) for b in blocks]
    return statistics.fmean(cvs), statistics.fmean(float(b.last_sparse) for b in blocks)


def _evaluate(model: CharGPT, ids: torch.Tensor, s: Setting) -> dict[str, Any]:
    model.eval()
    loads: list[torch.Tensor] = []
    sparse: list[float] = []

    def collect() -> None:
        for b in model.moe_blocks():
            loads.append(b.last_load.clone())
            sparse.append(float(b.last_sparse))

    bpc = bits_per_char(model, ids, s.context, s.eval_chars, after_batch=collect)
    model.train()
    out: dict[str, Any] = {"bpc": bpc, "load_cv": None, "sparse": None}
    if loads:
        per_block = torch.stack(loads).view(-1, len(model.moe_blocks()), loads[0].numel())
        mean = per_block.mean(0)  # (blocks, n): mean weight per expert over the tokens
        out["load_cv"] = float((mean.std(-1, unbiased=False) / mean.mean(-1)).mean())
        out["sparse"] = statistics.fmean(sparse)
    return out


def train_run(s: Setting, data: CharData, arm: str, params: Mapping[str, Any],
              seed: int) -> dict[str, Any]:
    """Train one model; validation/test bits per character and the routing statistics."""
    torch.manual_seed(seed)
    model = CharGPT(_config(s, data, arm, params))
    lr = float(params["lr"])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    warmup = max(1, min(100, s.steps // 10))

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to lr / 10
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, s.steps - warmup)
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    gen = torch.Generator().manual_seed(seed)
    history: list[tuple[int, float]] = []
    step_times: list[float] = []
    t_start = time.perf_counter()
    for step in range(s.steps):
        x, y = random_windows(data.train, s.batch, s.context, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        t0 = time.perf_counter()
        logits, aux = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + aux
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{arm}: loss is {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step_times.append(time.perf_counter() - t0)
        if arm == "dselect_k" and (step % s.log_every == 0 or step == s.steps - 1):
            history.append((step, _load(model)[1]))
    seconds = time.perf_counter() - t_start
    val = _evaluate(model, data.val, s)
    test = _evaluate(model, data.test, s)

    def first(threshold: float) -> int | None:
        return next((st for st, f in history if f >= threshold), None)

    return {"val": val["bpc"], "test": test["bpc"], "load_cv": test["load_cv"],
            "sparse_test": test["sparse"], "sparse_history": history,
            "sparse50_step": first(0.5), "sparse99_step": first(0.99),
            "step_s": statistics.median(step_times), "train_s": seconds,
            "n_params": sum(p.numel() for p in model.parameters())}


def _saturate(model: CharGPT, scale: float = 50.0) -> None:
    """Selector logits far beyond the smooth-step's cubic part for almost every token
    (``N(0, scale * gamma)`` on normalized inputs): exactly sparse weights that still
    differ between tokens, as a trained DSelect-k gate's are."""
    with torch.no_grad():
        for b in model.moe_blocks():
            g = b.gate
            g.z_proj.weight.normal_(0, scale * g.gamma / math.sqrt(g.input_dim))


def speed_cell(s: Setting, data: CharData, repeats: int) -> dict[str, Any]:
    """Training step and inference forward, seconds, of every gate and execution."""
    torch.manual_seed(0)
    variants = {"dense FFN": ("dense", "auto"), "softmax": ("softmax", "dense")}
    for arm in ("top2", "dselect_k"):
        for execution in ("dense", "sparse", "capacity"):
            variants[f"{arm} {execution}"] = (arm, execution)
    params = {"lr": 1e-3, "balance_reg": 1e-2, "entropy_reg": 0.1, "gamma": 1.0}
    gen = torch.Generator().manual_seed(0)
    x, y = random_windows(data.train, s.batch, s.context, gen)
    train_fns: dict[str, Callable[[], object]] = {}
    infer_fns: dict[str, Callable[[], object]] = {}
    sparse: dict[str, float | None] = {}
    for name, (arm, execution) in variants.items():
        torch.manual_seed(0)  # the executions of one gate time the same weights
        model = CharGPT(_config(s, data, arm, params, execution))
        if arm == "dselect_k":
            _saturate(model)

        def step(model: CharGPT = model) -> None:
            logits, aux = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + aux
            model.zero_grad(set_to_none=True)
            loss.backward()

        def infer(model: CharGPT = model) -> None:
            with torch.no_grad():
                model(x)

        step()
        sparse[name] = _load(model)[1] if arm in ("top2", "dselect_k") else None
        train_fns[name], infer_fns[name] = step, infer
    train = interleaved_timings(train_fns, repeats=repeats, warmup=1, reduce=min)
    infer = interleaved_timings(infer_fns, repeats=repeats, warmup=1, reduce=min)
    return {"train_s": train, "infer_s": infer, "sparse": sparse, "tokens": s.batch * s.context,
            "machine": machine_info(), "threads": torch.get_num_threads()}


def _data(s: Setting) -> CharData:
    from compactnn.lm.text import shakespeare_text

    train = shakespeare_text("calibration")
    if s.train_chars is not None:
        train = train[: s.train_chars]
    return char_data(train, shakespeare_text("validation"), shakespeare_text("test"))


def _fmt(v: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def run_study(out: Path, quick: bool, log: Callable[[str], None],
              scale: str | None = None) -> ExperimentResult:
    """Tune, train the finals, benchmark and report; ``scale`` (a key of ``SETTINGS``)
    overrides ``quick``."""
    scale = scale or ("quick" if quick else "full")
    s = SETTINGS[scale]
    out.mkdir(parents=True, exist_ok=True)
    data = _data(s)
    methods = {arm: _space(arm) for arm in ARMS}
    t0 = time.perf_counter()
    report = tune(methods, lambda arm, params, seed: train_run(s, data, arm, params, seed),
                  out / "tune", n_trials=s.n_trials, seeds=list(s.seeds),
                  n_startup_trials=max(1, s.n_trials // 2), log=log)
    tune_s = time.perf_counter() - t0
    cells = CellStore(out / "cells")
    speed = cells.run("speed", scale, asdict(s),
                      lambda _p: speed_cell(s, data, s.speed_repeats), log=log)["result"]

    rows = []
    for arm in ARMS:
        fin = report.final[arm]

        def col(key: str, fin: list = fin) -> list[float]:
            return [float(r[key]) for r in fin if r.get(key) is not None]

        rows.append([arm, len(fin), mean_ci(col("val")), mean_ci(col("test")),
                     _fmt(statistics.fmean(col("load_cv")) if col("load_cv") else None),
                     _fmt(statistics.fmean(col("sparse_test"))
                          if arm in ("top2", "dselect_k") else None),
                     ", ".join(str(r.get("sparse99_step")) for r in fin) if arm == "dselect_k"
                     else "-",
                     f"{1e3 * statistics.fmean(col('step_s')):.1f}", int(fin[0]["n_params"])])
    table = markdown_table(
        ["gate", "seeds", "val bits/char [95% t CI]", "test bits/char [95% t CI]",
         "load CV", "exactly sparse tokens", "step reaching 99% sparse (per seed)",
         "train step ms (in-run)", "parameters"], rows)
    paired = comparison_markdown({a: report.values(a, "test") for a in ARMS}, "dselect_k",
                                 lower_is_better=True)
    names = list(speed["train_s"])
    speed_rows = [[n, f"{1e3 * speed['train_s'][n]:.1f}", f"{1e3 * speed['infer_s'][n]:.1f}",
                   _fmt(speed["sparse"][n], "{:.2f}")] for n in names]
    speed_table = markdown_table(["gate, execution", "train step ms", "forward ms",
                                  "exactly sparse tokens"], speed_rows)
    files = [out / "tune" / "tuning.md"]
    hist = [(r["seed"], r["sparse_history"]) for r in report.final["dselect_k"]]
    fig, ax = new_figure(figsize=(5, 3.2))
    for seed, h in hist:
        ax.plot([p[0] for p in h], [p[1] for p in h], label=f"seed {seed}")
    ax.set_xlabel("training step")
    ax.set_ylabel("tokens with <= k nonzero weights")
    ax.set_title("DSelect-k: exactly sparse tokens (training batches)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "dselect_sparsity.png", dpi=120)
    files.append(out / "dselect_sparsity.png")
    md = (f"Setting: {scale} {asdict(s)}; train characters "
          f"{data.train.numel()}, vocabulary {data.vocab}; tuning and finals "
          f"{tune_s:.0f} s.\n\n" + table + "\n\nPaired over seeds, test bits/char, "
          "DSelect-k minus each other gate (Holm across the three):\n\n" + paired
          + f"\n\nSide by side ({speed['tokens']} tokens a batch, {speed['threads']} "
          f"thread(s), min over {s.speed_repeats} interleaved rounds; DSelect-k saturated):"
          "\n\n" + speed_table + "\n\n" + report.markdown())
    (out / "report.md").write_text(md + "\n")
    return ExperimentResult("moe_lm", md, files)


@register("moe_lm", "Char-level decoder on Shakespeare with 8-expert FFNs: dense, softmax, "
          "Top-2 + balancing, per-token DSelect-k; bits/char, load, sparsity, step time",
          data=("shakespeare",))
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    torch.manual_seed(seed)
    return run_study(out_dir, quick, log=lambda _m: None)


def main(argv: list[str] | None = None) -> None:
    study_main("compactnn.experiments.moe_lm", SETTINGS, run_study,
               sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
