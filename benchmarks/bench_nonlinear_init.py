"""Nonlinear (function-matching) initialization [LR-NL]: function error and solver time.

A 1024 x 1024 layer with Kaiming-normal weights (fan_in, ReLU gain: std sqrt(2/1024))
and PyTorch's default Linear bias, uniform in +-1/sqrt(1024) (``--bias zero`` for
exactly METHODS.md's bias-free setting; ``--bias normal`` for N(0, 1) biases, of
the pre-activations' own scale). Inputs x ~ N(0, I). For each rank:

* time of one exact ``torch.linalg.svd`` of the weight and of the Gaussian-mode
  solver (``solve_gaussian``, spectral start included), measured round-robin in
  the same run (median of repeats), and their ratio;
* the relative function error ``L / E|relu(W x + b)|^2`` (exact closed form) of
  spectral init (bias kept), of the fast solver with and without bias fitting,
  and of a long solve: the best of 1000 Adam steps on U, V (and c) from the
  spectral start and of the fast solver run to convergence (``rounds=200``);
* the fraction of the long solve's error reduction the fast solver reaches,
  ``(spectral - fast) / (spectral - long)``, and the fast error over spectral's.

    python benchmarks/bench_nonlinear_init.py [--quick] [--ranks 8 32] [--bias torch] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from compactnn.init import refine_gaussian, solve_gaussian
from compactnn.init.gaussian import relative_relu_error
from compactnn.init.spectral import balanced_factors
from compactnn.utils import interleaved_timings, machine_info

RANKS = [8, 16, 32, 64, 128, 256]
BIASES = ("torch", "zero", "normal")


def make_layer(n: int, bias: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n, generator=g) * math.sqrt(2.0 / n)   # kaiming_normal_, relu gain
    if bias == "zero":
        b = torch.zeros(n)
    elif bias == "normal":
        b = torch.randn(n, generator=g)
    else:
        b = (torch.rand(n, generator=g) * 2 - 1) / math.sqrt(n)
    return w, b


def share(spectral: float, fast: float, long: float) -> float:
    """Fraction of the long solve's error reduction (from spectral) the fast one reaches."""
    gap = spectral - long
    return (spectral - fast) / gap if gap > 0 else float("nan")


def bench(n: int, ranks: list[int], bias: str, repeats: int, long_steps: int,
          seed: int) -> list[dict]:
    w, b = make_layer(n, bias, seed)
    rows = []
    for r in ranks:
        t = interleaved_timings({
            "svd": lambda: torch.linalg.svd(w, full_matrices=False),
            "solver": lambda r=r: solve_gaussian(w, r, b, fit_bias=True),
            "solver_nobias": lambda r=r: solve_gaussian(w, r, b, fit_bias=False),
        }, repeats=repeats, warmup=1)
        u0, v0 = balanced_factors(w, r)
        spectral = relative_relu_error(w, u0, v0, b, b)
        fast = solve_gaussian(w, r, b, fit_bias=True)
        fast_nb = solve_gaussian(w, r, b, fit_bias=False)
        err_fast = relative_relu_error(w, fast.u[0], fast.v[0], b, fast.bias[0])
        err_fast_nb = relative_relu_error(w, fast_nb.u[0], fast_nb.v[0], b, b)
        t0 = time.perf_counter()
        longs, longs_nb = [], []
        for fit, out in ((True, longs), (False, longs_nb)):
            conv = solve_gaussian(w, r, b, fit_bias=fit, rounds=200, tol=0.0)
            out.append(relative_relu_error(w, conv.u[0], conv.v[0], b,
                                           conv.bias[0] if fit else b))
            if long_steps > 0:
                adam = refine_gaussian(w, u0, v0, b, b, steps=long_steps, fit_bias=fit)
                out.append(relative_relu_error(w, adam.u[0], adam.v[0], b,
                                               adam.bias[0] if fit else b))
        long_s = time.perf_counter() - t0
        err_long, err_long_nb = min(longs), min(longs_nb)

        rows.append({
            "rank": r, "svd_s": t["svd"], "solver_s": t["solver"],
            "ratio": t["solver"] / t["svd"], "ratio_nb": t["solver_nobias"] / t["svd"],
            "spectral": spectral, "fast": err_fast, "long": err_long,
            "fast_nb": err_fast_nb, "long_nb": err_long_nb,
            "frac": share(spectral, err_fast, err_long),
            "frac_nb": share(spectral, err_fast_nb, err_long_nb),
            "vs_spectral": err_fast / spectral, "rounds": fast.rounds, "long_s": long_s,
            "long_parts": longs, "long_parts_nb": longs_nb,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = ("| rank | exact SVD (s) | solver (s) | solver / SVD | (no bias fit) "
            "| spectral | fast, bias fit | long, bias fit | fast / spectral | share of long gain "
            "| fast, no bias fit | long, no bias fit | share of long gain (no bias fit) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['rank']} | {r['svd_s']:.3f} | {r['solver_s']:.3f} | {r['ratio']:.2f}x "
            f"| {r['ratio_nb']:.2f}x | {r['spectral']:.4f} | {r['fast']:.4f} | {r['long']:.4f} "
            f"| {r['vs_spectral']:.3f}x | {r['frac']:.1%} | {r['fast_nb']:.4f} "
            f"| {r['long_nb']:.4f} | {r['frac_nb']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="ranks 8 and 32, 3 repeats, 300-step long solve")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--ranks", type=int, nargs="+")
    ap.add_argument("--bias", choices=BIASES, default="torch")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--long-steps", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads_before)


def _main(args: argparse.Namespace) -> list[dict]:
    ranks = args.ranks or ([8, 32] if args.quick else RANKS)
    repeats = args.repeats or (3 if args.quick else 7)
    long_steps = args.long_steps if args.long_steps is not None else (300 if args.quick
                                                                      else 1000)
    print(f"Gaussian-mode nonlinear init vs spectral, {args.size}x{args.size} Kaiming-normal "
          f"weights, bias '{args.bias}', x ~ N(0, I); times: median of {repeats} round-robin "
          f"repeats; long solve: best of {long_steps} Adam steps and 200 solver rounds")
    print(f"Machine: {machine_info()}\n")
    rows = bench(args.size, ranks, args.bias, repeats, long_steps, args.seed)
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
