"""Forward+backward time of LowRankLinear against nn.Linear as a hidden layer.

For each size n (square n x n layers) and rank r, times one training step's
worth of work on a batch of 256 rows whose input needs gradients (as a hidden
layer's does): forward, then backward to the input and the parameters. Dense
and low-rank are timed round-robin in the same run. Prints the measured
speedup, the ideal FLOP speedup ``n*n / (r*(n+n))`` and their ratio.

    python benchmarks/bench_lowrank_linear.py [--quick] [--threads N] [--sizes ...] [--ranks ...]
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from compactnn import LowRankLinear
from compactnn.utils import interleaved_timings, machine_info

SIZES = [512, 1024, 2048, 4096]
RANKS = [32, 64, 128, 256, 512, 1024]


def step(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, backward: bool):
    def run():
        if backward:
            y = layer(x)
            y.backward(grad_out)
            x.grad = None
            for p in layer.parameters():
                p.grad = None
        else:
            with torch.no_grad():
                layer(x)

    return run


def bench(sizes: list[int], ranks: list[int], batch: int, repeats: int) -> list[dict]:
    rows = []
    for n in sizes:
        dense = nn.Linear(n, n)
        x = torch.randn(batch, n, requires_grad=True)
        g = torch.randn(batch, n)
        for r in ranks:
            if r >= n * n / (2 * n):  # at or above break-even: nothing to gain
                continue
            low = LowRankLinear(n, n, r)
            ideal = n * n / (r * 2 * n)
            t = interleaved_timings({
                "dense_fb": step(dense, x, g, True), "low_fb": step(low, x, g, True),
                "dense_f": step(dense, x, g, False), "low_f": step(low, x, g, False),
            }, repeats=repeats, warmup=3)
            rows.append({"size": n, "rank": r, "ideal": ideal,
                         "dense_ms": 1e3 * t["dense_fb"], "low_ms": 1e3 * t["low_fb"],
                         "speedup": t["dense_fb"] / t["low_fb"],
                         "fwd_speedup": t["dense_f"] / t["low_f"]})
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| size | rank | dense fwd+bwd (ms) | low-rank fwd+bwd (ms) | speedup | ideal "
            "| speedup / ideal | fwd-only speedup |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['size']} | {r['rank']} | {r['dense_ms']:.3f} | {r['low_ms']:.3f} "
                     f"| {r['speedup']:.2f}x | {r['ideal']:.2f}x "
                     f"| {r['speedup'] / r['ideal']:.0%} | {r['fwd_speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few sizes and repeats")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--ranks", type=int, nargs="+")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([1024, 4096] if args.quick else SIZES)
    ranks = args.ranks or ([64, 256] if args.quick else RANKS)
    repeats = args.repeats or (5 if args.quick else 20)
    torch.manual_seed(0)
    print(f"LowRankLinear vs nn.Linear, batch {args.batch}, input gradients on, "
          f"median of {repeats} round-robin repeats")
    print(f"Machine: {machine_info()}")
    print("Load average (1, 5, 15 min) at start: "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + "\n")
    rows = bench(sizes, ranks, args.batch, repeats)
    print(format_table(rows))
    print("\nLoad average at end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    return rows


if __name__ == "__main__":
    main()
