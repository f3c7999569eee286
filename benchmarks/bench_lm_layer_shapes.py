"""Inference time of LowRankLinear against nn.Linear at a decoder LM's layer shapes.

The shapes are SmolLM2-135M's (width 576, 3 KV heads of 64, SwiGLU width 1536); each
layer keeps a fraction ``q`` of its parameters, as ``compress_lm`` does at ``1 - q``
removed (rank ``floor(q m n / (m + n))``). Rows are the tokens of one forward: 1 (a
generated token at batch 1), 16 (batch 16, or a short prompt) and 256 (a prefill). Dense
and low-rank are timed round-robin in one run, forward only, no gradients. The ideal is
the multiply-add ratio ``m n / (r (m + n)) = 1 / q``.

    python benchmarks/bench_lm_layer_shapes.py [--threads N] [--repeats N] [--keep ...]
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from compactnn import LowRankLinear
from compactnn.utils import interleaved_timings, machine_info

SHAPES = {"q/o 576x576": (576, 576), "k/v 192x576": (192, 576),
          "gate/up 1536x576": (1536, 576), "down 576x1536": (576, 1536)}
ROWS = (1, 16, 256)
KEEP = (0.8, 0.6, 0.4)


def forward(layer: nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.no_grad():
            layer(x)

    return run


def bench(keeps: tuple[float, ...], rows: tuple[int, ...], repeats: int, inner: int
          ) -> list[dict]:
    out = []
    for n_rows in rows:
        for name, (m, n) in SHAPES.items():
            dense = nn.Linear(n, m, bias=False)
            x = torch.randn(n_rows, n)
            fns = {"dense": forward(dense, x)}
            ranks = {q: int(q * m * n / (m + n)) for q in keeps}
            for q, r in ranks.items():
                fns[q] = forward(LowRankLinear(n, m, r, bias=False), x)
            t = interleaved_timings(fns, repeats=repeats, warmup=3, inner=inner)
            for q, r in ranks.items():
                out.append({"rows": n_rows, "layer": name, "keep": q, "rank": r,
                            "dense_us": 1e6 * t["dense"], "low_us": 1e6 * t[q],
                            "speedup": t["dense"] / t[q], "ideal": m * n / (r * (m + n))})
    return out


def format_table(rows: list[dict]) -> str:
    lines = ["| rows | layer | keep | rank | dense (us) | low-rank (us) | speed-up | ideal "
             "| speed-up / ideal |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rows']} | {r['layer']} | {r['keep']:.0%} | {r['rank']} "
                     f"| {r['dense_us']:.1f} | {r['low_us']:.1f} | {r['speedup']:.2f}x "
                     f"| {r['ideal']:.2f}x | {r['speedup'] / r['ideal']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rows 1 and 16, 5 repeats")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--inner", type=int, default=20, help="calls timed together")
    ap.add_argument("--keep", type=float, nargs="+", default=list(KEEP))
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.rows, args.repeats = [1, 16], 5
    if any(not 0 < q < 1 for q in args.keep) or any(r < 1 for r in args.rows):
        ap.error("--keep values must be in (0, 1) and --rows at least 1")
    torch.manual_seed(0)
    print(f"LowRankLinear vs nn.Linear at SmolLM2's layer shapes, forward only, median of "
          f"{args.repeats} round-robin repeats of {args.inner} calls")
    print(f"Machine: {machine_info()}")
    print("Load average (1, 5, 15 min) at start: "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + "\n")
    rows = bench(tuple(args.keep), tuple(args.rows), args.repeats, args.inner)
    print(format_table(rows))
    print("\nLoad average at end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    return rows


if __name__ == "__main__":
    main()
