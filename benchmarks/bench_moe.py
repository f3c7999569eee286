"""Mixture of experts: sparse vs dense execution, and each gate's share of the layer's time.

A 16-expert MixtureOfExperts (MLP experts 512 -> 1024 -> 512, ReLU), batch 4096, k = 2.

1. Sparse vs dense: for gates whose weights have exactly k = 2 nonzeros per row (Top-k;
   DSelect-k with saturated selectors, as after training), the same layer is timed with
   ``execution="dense"`` (every expert on every row) and ``execution="sparse"`` (each
   expert on its rows only), forward (no grad) and forward+backward (a training step's
   work: gradients of all parameters). Printed: both times, the speedup, the ideal
   speedup ``n / (nonzeros per row)`` (``n/k = 8`` for Top-k) and measured / ideal.
2. Gate cost: each gate's own time (forward; forward+backward through the gate alone) as
   a share of the layer's time with that gate (``execution="auto"``: sparse for sparse
   weights, dense for the softmax gate).

All timings of a table are measured round-robin in one run (median of repeats after
warm-up), so that machine noise hits all alike.

    python benchmarks/bench_moe.py [--quick] [--batch 4096] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from compactnn.moe import (
    DSelectKGate,
    Gate,
    MixtureOfExperts,
    NoisyTopKGate,
    SoftmaxGate,
    mlp_experts,
)
from compactnn.utils import interleaved_timings, machine_info

NUM_EXPERTS = 16
K = 2


def make_gates(d: int) -> dict[str, Gate]:
    """The four gates, with DSelect-k saturated (exactly sparse, as after training)."""
    gates: dict[str, Gate] = {}
    topk = NoisyTopKGate(NUM_EXPERTS, k=K, input_dim=d, noisy=False)
    with torch.no_grad():
        topk.gate_proj.weight.normal_(0, 1.0)  # routing spread over the experts
    gates["top-k (per-example)"] = topk

    dsk = DSelectKGate(NUM_EXPERTS, k=K, input_dim=d)
    with torch.no_grad():
        dsk.z_proj.weight.normal_(0, 10.0)  # |logits| >> gamma/2: saturated selectors
        dsk.w_proj.weight.normal_(0, 0.1)
    gates["DSelect-k (per-example)"] = dsk

    static = DSelectKGate(NUM_EXPERTS, k=K)
    with torch.no_grad():
        static.z_logits.copy_(torch.tensor([[1.0, -1.0, 1.0, 1.0], [-1.0, 1.0, -1.0, -1.0]]))
    gates["DSelect-k (static)"] = static

    gates["softmax (per-example)"] = SoftmaxGate(NUM_EXPERTS, input_dim=d)
    return gates


def forward_fn(module: nn.Module, x: torch.Tensor):
    inputs = _routing(module, x) if isinstance(module, Gate) else x

    def run():
        with torch.no_grad():
            module(inputs)

    return run


def _routing(gate: Gate, x: torch.Tensor) -> torch.Tensor | None:
    return None if gate.is_static else x


def train_step_fn(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None):
    """Forward + backward to all parameters; gradients are dropped after each call."""
    params = [p for p in module.parameters() if p.requires_grad]

    def run():
        if isinstance(module, Gate):
            weights, aux = module(_routing(module, x))
            loss = weights.sum() + aux
        else:
            out, aux = module(x)
            loss = (out * grad_out).sum() + aux
        loss.backward()
        for p in params:
            p.grad = None

    return run


def sparse_vs_dense(experts, gates, x, grad_out, repeats: int, warmup: int) -> list[dict]:
    rows = []
    for name, gate in gates.items():
        dense = MixtureOfExperts(experts, gate, execution="dense")
        sparse = MixtureOfExperts(experts, gate, execution="sparse")
        with torch.no_grad():
            weights, _ = gate(_routing(gate, x))
        nnz = float((weights.expand(x.shape[0], NUM_EXPERTS) != 0).sum(-1).float().mean())
        with torch.no_grad():
            torch.testing.assert_close(sparse(x)[0], dense(x)[0], rtol=1e-4, atol=1e-5)
        t = interleaved_timings(
            {
                "dense_f": forward_fn(dense, x),
                "sparse_f": forward_fn(sparse, x),
                "dense_fb": train_step_fn(dense, x, grad_out),
                "sparse_fb": train_step_fn(sparse, x, grad_out),
            },
            repeats=repeats,
            warmup=warmup,
        )
        ideal = NUM_EXPERTS / nnz
        rows.append(
            {
                "gate": name,
                "nnz": nnz,
                "ideal": ideal,
                **{key: 1e3 * value for key, value in t.items()},
                "speedup_f": t["dense_f"] / t["sparse_f"],
                "speedup_fb": t["dense_fb"] / t["sparse_fb"],
            }
        )
    return rows


def gate_shares(
    experts, gates, x, grad_out, repeats: int, warmup: int, backward: bool = True
) -> list[dict]:
    fns = {}
    keys = ("gate_f", "layer_f", "gate_fb", "layer_fb") if backward else ("gate_f", "layer_f")
    for name, gate in gates.items():
        layer = MixtureOfExperts(experts, gate, execution="auto")
        fns[(name, "gate_f")] = forward_fn(gate, x)
        fns[(name, "layer_f")] = forward_fn(layer, x)
        if backward:
            fns[(name, "gate_fb")] = train_step_fn(gate, x, None)
            fns[(name, "layer_fb")] = train_step_fn(layer, x, grad_out)
    t = interleaved_timings(fns, repeats=repeats, warmup=warmup)
    rows = []
    for name, gate in gates.items():
        with torch.no_grad():
            weights, _ = gate(_routing(gate, x))
        row = {"gate": name, "execution": "sparse" if bool((weights == 0).any()) else "dense"}
        for key in keys:
            row[key] = 1e3 * t[(name, key)]
        rows.append(row)
    return rows


def format_speed_table(rows: list[dict]) -> str:
    lines = [
        "| gate | nonzeros / row | dense fwd (ms) | sparse fwd (ms) | fwd speedup "
        "| dense fwd+bwd (ms) | sparse fwd+bwd (ms) | fwd+bwd speedup | ideal (n / nonzeros) "
        "| fwd measured / ideal | fwd+bwd measured / ideal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['gate']} | {r['nnz']:.2f} | {r['dense_f']:.1f} | {r['sparse_f']:.1f} "
            f"| {r['speedup_f']:.2f}x | {r['dense_fb']:.1f} | {r['sparse_fb']:.1f} "
            f"| {r['speedup_fb']:.2f}x | {r['ideal']:.2f}x | {r['speedup_f'] / r['ideal']:.0%} "
            f"| {r['speedup_fb'] / r['ideal']:.0%} |"
        )
    return "\n".join(lines)


def format_share_table(rows: list[dict]) -> str:
    lines = [
        "| gate | layer execution | gate fwd (ms) | layer fwd (ms) | gate share fwd "
        "| gate fwd+bwd (ms) | layer fwd+bwd (ms) | gate share fwd+bwd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        backward = (
            f"{r['gate_fb']:.3f} | {r['layer_fb']:.1f} | {r['gate_fb'] / r['layer_fb']:.2%}"
            if "gate_fb" in r
            else "- | - | -"
        )
        lines.append(
            f"| {r['gate']} | {r['execution']} | {r['gate_f']:.3f} | {r['layer_f']:.1f} "
            f"| {r['gate_f'] / r['layer_f']:.2%} | {backward} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="batch 1024, Top-k row only, forward-only gate shares, 2 repeats",
    )
    parser.add_argument("--batch", type=int, help="rows per batch (default 4096, quick 1024)")
    parser.add_argument("--dim", type=int, default=512, help="expert input/output width")
    parser.add_argument("--hidden", type=int, default=1024, help="expert hidden width")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 7, quick 2)")
    parser.add_argument("--warmup", type=int, help="untimed rounds (default 2, quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _load() -> str:
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not available on every platform
        return "unknown"


def _run(args: argparse.Namespace) -> dict[str, list[dict]]:
    args.batch = args.batch or (1024 if args.quick else 4096)
    repeats = args.repeats or (2 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    torch.manual_seed(0)
    experts = mlp_experts(NUM_EXPERTS, args.dim, args.hidden, args.dim)
    gates = make_gates(args.dim)
    x = torch.randn(args.batch, args.dim)
    grad_out = torch.randn(args.batch, args.dim)
    speed_gates = (
        {"top-k (per-example)": gates["top-k (per-example)"]} if args.quick else
        {name: g for name, g in gates.items() if not isinstance(g, SoftmaxGate)}
    )

    print(
        f"MixtureOfExperts: {NUM_EXPERTS} MLP experts {args.dim} -> {args.hidden} -> {args.dim}, "
        f"batch {args.batch}, k = {K}; median of {repeats} round-robin repeats after "
        f"{warmup} warm-up"
    )
    print(f"Machine: {machine_info()}")
    print(f"Load average (1, 5, 15 min) at start: {_load()}\n")
    speed = sparse_vs_dense(experts, speed_gates, x, grad_out, repeats, warmup)
    print("Sparse vs dense execution (same weights; fwd = forward under no_grad)\n")
    print(format_speed_table(speed))
    shares = gate_shares(experts, gates, x, grad_out, repeats, warmup, backward=not args.quick)
    print("\nEach gate's own cost as a share of the layer's (layer execution 'auto')\n")
    print(format_share_table(shares))
    print(f"\nLoad average at end: {_load()}")
    return {"speed": speed, "shares": shares}


if __name__ == "__main__":
    main()
