"""Encoder-decoder layer fusion: does a learned combination of all encoder layers help a
pretrained encoder-decoder adapt?

Task (offline, from the corpora): character-level span-corruption denoising. A window of
``context`` characters has spans of 3 characters replaced by a mask id until ~15% of it
is masked; the decoder, teacher-forced, writes the whole original window. Metric: the
accuracy of the decoder's argmax at the masked positions (higher is better), and bits per
character over the whole target.

A :class:`~compactnn.models.char_seq2seq.CharSeq2Seq` is pretrained per seed on the
Shakespeare calibration works, then fine-tuned for the same number of steps on the first
90% of the King James Bible and scored on its last 10%, in four set-ups:

* (a) ``pretrained + fusion (original init)``: the fusion starts as the original
  connection (every decoder layer reads the last encoder layer), so fine-tuning starts
  from exactly the pretrained function;
* (b) ``pretrained + fusion (random init)``: a random convex combination per decoder
  layer;
* (c) ``pretrained, no fusion``: the control;
* (d) ``scratch + fusion``: no pretraining, fusion at the original init, trained for the
  fine-tuning steps.

Resumable cell by cell (:class:`~compactnn.experiments.cells.CellStore`); pretrained
weights are kept as safetensors next to the cells.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from compactnn.experiments import ExperimentResult, register
from compactnn.experiments.cells import CellStore, study_main
from compactnn.experiments.char_lm import CharData, char_data
from compactnn.experiments.reporting import markdown_table, mean_ci, new_figure
from compactnn.experiments.stats import comparison_markdown
from compactnn.models.char_seq2seq import CharSeq2Seq

SETUPS = {"a": "pretrained + fusion (original init)", "b": "pretrained + fusion (random init)",
          "c": "pretrained, no fusion", "d": "scratch + fusion"}


@dataclass(frozen=True)
class Setting:
    pretrain_chars: int | None
    kjv_chars: int | None
    dim: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    hidden: int
    context: int
    batch: int
    pretrain_steps: int
    finetune_steps: int
    lr: float
    finetune_lr: float
    seeds: tuple[int, ...]
    eval_windows: int


QUICK = Setting(100_000, 100_000, 32, 2, 2, 2, 64, 32, 8, 30, 20, 1e-3, 5e-4, (0, 1), 32)
FULL = Setting(None, None, 64, 4, 4, 4, 256, 64, 32, 1500, 500, 1e-3, 5e-4, (0, 1, 2), 512)
# what two heavily shared cores finish in about half an hour
MEDIUM = Setting(None, None, 64, 4, 3, 3, 128, 48, 16, 250, 100, 1e-3, 5e-4, (0, 1, 2), 128)
SETTINGS = {"quick": QUICK, "medium": MEDIUM, "full": FULL}
MASK_RATE, SPAN = 0.15, 3


def corrupt(rows: Tensor, mask_id: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Spans of ``SPAN`` characters masked at random starts until at least
    ``MASK_RATE`` of each row is masked; returns ``(source, masked positions)``."""
    batch, length = rows.shape
    masked = torch.zeros(batch, length, dtype=torch.bool)
    want = max(1, math.ceil(MASK_RATE * length))
    for b in range(batch):
        while int(masked[b].sum()) < want:
            start = int(torch.randint(0, length - SPAN + 1, (1,), generator=generator))
            masked[b, start : start + SPAN] = True
    return rows.masked_fill(masked, mask_id), masked


def _batch(ids: Tensor, s: Setting, vocab: int, generator: torch.Generator,
           starts: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(source, decoder input, target, masked) for windows at ``starts`` (random when
    None); the mask id is ``vocab`` and the start-of-target id ``vocab + 1``."""
    if starts is None:
        starts = torch.randint(0, ids.numel() - s.context, (s.batch,), generator=generator)
    rows = torch.stack([ids[i : i + s.context] for i in starts.tolist()])
    src, masked = corrupt(rows, vocab, generator)
    dec_in = torch.cat([torch.full((rows.shape[0], 1), vocab + 1), rows[:, :-1]], dim=1)
    return src, dec_in, rows, masked


def _model(s: Setting, vocab: int) -> CharSeq2Seq:
    return CharSeq2Seq(vocab + 2, context=s.context, dim=s.dim, heads=s.heads,
                       encoder_layers=s.encoder_layers, decoder_layers=s.decoder_layers,
                       hidden=s.hidden)


def _train(model: CharSeq2Seq, ids: Tensor, s: Setting, vocab: int, steps: int, lr: float,
           seed: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        src, dec_in, tgt, _ = _batch(ids, s, vocab, gen)
        logits = model(src, dec_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: CharSeq2Seq, ids: Tensor, s: Setting, vocab: int) -> dict[str, float]:
    """Masked-character accuracy and bits per character on ``eval_windows`` fixed,
    evenly spaced windows with a fixed corruption (generator seed 0)."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    starts = torch.linspace(0, ids.numel() - s.context - 1, s.eval_windows).long()
    right = total = 0
    nats = 0.0
    for first in range(0, len(starts), 64):
        src, dec_in, tgt, masked = _batch(ids, s, vocab, gen, starts[first : first + 64])
        logits = model(src, dec_in)
        nats += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                                      reduction="sum"))
        pred = logits.argmax(-1)
        right += int((pred == tgt)[masked].sum())
        total += int(masked.sum())
    model.train()
    return {"masked_acc": right / total, "bpc": nats / (len(starts) * s.context) / math.log(2)}


def _data(s: Setting) -> tuple[CharData, Tensor, Tensor]:
    """Shakespeare (pretraining) and the KJV (fine-tuning, first 90%; test, last 10%),
    encoded with the Shakespeare characters."""
    from compactnn.lm.text import kjv_text, shakespeare_text

    pre = shakespeare_text("calibration")
    if s.pretrain_chars is not None:
        pre = pre[: s.pretrain_chars]
    kjv = kjv_text()
    if s.kjv_chars is not None:
        kjv = kjv[: s.kjv_chars]
    cut = int(0.9 * len(kjv))
    data = char_data(pre, kjv[:cut], kjv[cut:])
    return data, data.val, data.test


def pretrain_cell(s: Setting, data: CharData, seed: int, weights: Path) -> dict[str, Any]:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = _model(s, data.vocab)
    seconds = _train(model, data.train, s, data.vocab, s.pretrain_steps, s.lr, seed)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()
               if k != "head.weight"}, str(tmp))
    tmp.replace(weights)
    return {"seconds": seconds, **evaluate(model, data.train, s, data.vocab)}


def finetune_cell(s: Setting, data: CharData, ft: Tensor, test: Tensor, setup: str,
                  seed: int, weights: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    torch.manual_seed(1000 + seed)
    model = _model(s, data.vocab)
    if setup != "d":
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"head.weight"}:
            raise ValueError(f"{weights}: not this model's pretrained weights "
                             f"(missing {missing}, unexpected {unexpected})")
    start = evaluate(model, test, s, data.vocab) if setup == "c" else None
    if setup in ("a", "b", "d"):
        model.add_fusion("random" if setup == "b" else "last")
    at_init = evaluate(model, test, s, data.vocab)
    seconds = _train(model, ft, s, data.vocab, s.finetune_steps, s.finetune_lr, seed)
    result = {"seconds": seconds, "at_init": at_init, **evaluate(model, test, s, data.vocab)}
    if start is not None:
        result["pretrained"] = start
    if model.fusion is not None:
        result["fusion"] = model.fusion.weight.detach().tolist()
    return result


def run_study(out: Path, quick: bool, log: Callable[[str], None],
              scale: str | None = None) -> ExperimentResult:
    scale = scale or ("quick" if quick else "full")
    s = SETTINGS[scale]
    data, ft, test = _data(s)
    cells = CellStore(out / "cells")
    params = asdict(s)
    pre = {}
    for seed in s.seeds:
        weights = out / "pretrained" / f"{scale}_s{seed}.safetensors"
        name = f"{scale}_s{seed}"
        if not weights.exists() and cells.load("pretrain", name) is not None:
            cells.path("pretrain", name).unlink()  # the weights were lost: pretrain again
        pre[seed] = cells.run("pretrain", name, params,
                              lambda _p, seed=seed, w=weights: pretrain_cell(s, data, seed, w),
                              log=log)["result"]
    res: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in SETUPS}
    for seed in s.seeds:
        weights = out / "pretrained" / f"{scale}_s{seed}.safetensors"
        for setup in SETUPS:
            res[setup][seed] = cells.run(
                "finetune", f"{scale}_{setup}_s{seed}", {**params, "setup": setup},
                lambda _p, setup=setup, seed=seed, w=weights: finetune_cell(
                    s, data, ft, test, setup, seed, w), log=log)["result"]

    values = {SETUPS[k]: [res[k][sd]["masked_acc"] for sd in s.seeds] for k in SETUPS}
    paired = comparison_markdown(values, SETUPS["a"], lower_is_better=False)
    rows = []
    for k, label in SETUPS.items():
        acc = [res[k][sd]["masked_acc"] for sd in s.seeds]
        bpc = [res[k][sd]["bpc"] for sd in s.seeds]
        init = [res[k][sd]["at_init"]["masked_acc"] for sd in s.seeds]
        rows.append([f"({k}) {label}", mean_ci(acc), mean_ci(bpc),
                     f"{statistics.fmean(init):.4f}"])
    table = markdown_table(["set-up", "KJV masked-char accuracy [95% t CI]",
                            "KJV bits/char [95% t CI]", "accuracy before fine-tuning"], rows)
    exact = all(res["a"][sd]["at_init"] == res["c"][sd]["at_init"] for sd in s.seeds)
    fig, axes = new_figure(ncols=3, figsize=(11, 3.4))
    for ax, k in zip(axes, ("a", "b", "d"), strict=True):
        w = torch.tensor([res[k][sd]["fusion"] for sd in s.seeds]).mean(0)
        im = ax.imshow(w.numpy(), cmap="viridis", vmin=min(0.0, float(w.min())))
        ax.set_title(f"({k}) {SETUPS[k]}", fontsize=8)
        ax.set_xlabel("encoder layer")
        ax.set_ylabel("decoder layer")
        ax.set_xticks(range(w.shape[1]), [str(i + 1) for i in range(w.shape[1])])
        ax.set_yticks(range(w.shape[0]), [str(i + 1) for i in range(w.shape[0])])
        for (i, j), v in zip(((i, j) for i in range(w.shape[0]) for j in range(w.shape[1])),
                             w.flatten().tolist(), strict=True):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "fusion_weights.png", dpi=120)
    pre_acc = statistics.fmean(p["masked_acc"] for p in pre.values())
    md = (f"Setting: {scale} {params}; pretraining on {data.train.numel()} Shakespeare "
          f"characters (masked accuracy on them after pretraining {pre_acc:.4f}), "
          f"fine-tuning on {ft.numel()} KJV characters, test on the next {test.numel()}. "
          f"Set-up (a) before fine-tuning equals the pretrained model's scores exactly: "
          f"{exact}.\n\n" + table + "\n\nPaired over seeds, masked accuracy, (a) minus "
          "each other set-up (Holm across the three):\n\n" + paired
          + "\n\nLearned fusion weights (mean over seeds): fusion_weights.png\n")
    (out / "report.md").write_text(md)
    return ExperimentResult("enc_dec_fusion", md, [out / "fusion_weights.png"])


@register("enc_dec_fusion", "Encoder-decoder layer fusion on a char-level denoising "
          "encoder-decoder: pretrained on Shakespeare, fine-tuned on the KJV, set-ups (a)-(d)",
          data=("shakespeare", "kjv"))
def run(out_dir: Path, quick: bool, seed: int) -> ExperimentResult:
    torch.manual_seed(seed)
    return run_study(out_dir, quick, log=lambda _m: None)


def main(argv: list[str] | None = None) -> None:
    study_main("compactnn.experiments.enc_dec_fusion", SETTINGS, run_study,
               sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
