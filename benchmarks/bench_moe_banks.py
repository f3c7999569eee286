"""Many tasks, many experts: gate banks and stacked experts against the per-module loop
and against a hand-batched reference, in one run.

``MultiGateMoE`` with ``T`` tasks over ``E`` MLP experts (``--dim`` -> 16 -> 8, ReLU),
batch 64, k = 2, training mode (regularizers on), one forward+backward step of
``sum(mixed * probe) + aux``. For each gate (static DSelect-k, per-example DSelect-k,
per-example softmax, per-example noisy Top-k) and each (T, E):

* ``bank dense / sparse / capacity``: the layer as built from a template gate and
  ``mlp_experts`` (a gate bank and an ``MLPBank``), in each execution mode (capacity
  factor 1: ``ceil(batch * min(E, T*k) / E)`` slots per expert);
* ``loop``: the same layer built from ``T`` separate gate modules and ``E`` separate
  expert modules (the general path, one module call each), dense;
* ``hand``: the same computation written by hand on raw stacked tensors (batched
  smooth-step / softmax / top-k over all tasks, ``baddbmm`` experts), dense: the ideal.

Printed: milliseconds per step, steps per second of the bank (dense), the bank's ratio to
the hand-written reference (ideal 1.00x) and the loop's ratio to the bank, and the gate's
share of the bank's dense step (the gate bank's own forward+backward time divided by the
step's). All timings of one (gate, T, E) cell are taken round-robin, and each is the
*minimum* over the repeats: on a shared machine a millisecond-scale step is often
preempted for a whole scheduler slice, and the minimum is the least disturbed
measurement (the median is printed by ``--median``).

    python benchmarks/bench_moe_banks.py [--quick] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn.moe import (
    DSelectKGate,
    Gate,
    MultiGateMoE,
    NoisyTopKGate,
    SoftmaxGate,
    mlp_experts,
)
from compactnn.utils import interleaved_timings, machine_info

BATCH, HIDDEN, OUT, K = 64, 16, 8, 2

GATES: dict[str, Callable[[int, int], Gate]] = {
    "dselect_k static": lambda e, d: DSelectKGate(e, k=K, entropy_reg=1e-3),
    "dselect_k per-example": lambda e, d: DSelectKGate(e, k=K, input_dim=d, entropy_reg=1e-3),
    "softmax per-example": lambda e, d: SoftmaxGate(e, input_dim=d),
    "topk per-example": lambda e, d: NoisyTopKGate(e, k=K, input_dim=d),
}


# --------------------------------------------------------------------------- hand reference


class Hand:
    """The multi-task mixture written directly on stacked tensors (no compactnn modules)."""

    def __init__(self, gate: str, tasks: int, experts: int, dim: int) -> None:
        self.gate, self.T, self.E = gate, tasks, experts
        self.m = max(1, math.ceil(math.log2(experts)))
        def p(*shape: int, scale: float = 0.1) -> Tensor:
            return (torch.randn(*shape) * scale).requires_grad_(True)
        self.w1, self.b1 = p(experts, dim, HIDDEN), p(experts, 1, HIDDEN)
        self.w2, self.b2 = p(experts, HIDDEN, OUT), p(experts, 1, OUT)
        codes = torch.tensor([[(c >> (self.m - 1 - j)) & 1 for j in range(self.m)]
                              for c in range(experts)], dtype=torch.float32)
        self.codes = codes  # (E, m), most significant bit first
        if gate == "dselect_k static":
            self.z, self.w = p(tasks, K, self.m, scale=0.01), p(tasks, K, scale=0.05)
        elif gate == "dselect_k per-example":
            self.z, self.zb = p(dim, tasks * K * self.m), p(tasks * K * self.m)
            self.w, self.wb = p(dim, tasks * K), p(tasks * K)
        elif gate == "softmax per-example":
            self.g, self.gb = p(dim, tasks * experts), p(tasks * experts)
        else:
            self.g, self.n = p(dim, tasks * experts), p(dim, tasks * experts)

    def _dselect(self, z: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        s = ((-2.0 * z.clamp(-0.5, 0.5) ** 2 + 1.5) * z.clamp(-0.5, 0.5) + 0.5).unsqueeze(-2)
        r = (self.codes * s + (1 - self.codes) * (1 - s)).prod(-1)  # (..., k, E)
        q = (torch.softmax(w, -1).unsqueeze(-1) * r).sum(-2)
        aux = 1e-3 * -(r * torch.log(r + 1e-6)).sum()
        return q, aux

    def weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, t, e = x.shape[0], self.T, self.E
        if self.gate == "dselect_k static":
            return self._dselect(self.z, self.w)
        if self.gate == "dselect_k per-example":
            z = (x @ self.z + self.zb).view(b, t, K, self.m).transpose(0, 1)
            w = (x @ self.w + self.wb).view(b, t, K).transpose(0, 1)
            return self._dselect(z, w)
        if self.gate == "softmax per-example":
            return torch.softmax((x @ self.g + self.gb).view(b, t, e).transpose(0, 1), -1), 0.0
        clean = (x @ self.g).view(b, t, e).transpose(0, 1)
        noisy = clean + torch.randn_like(clean) * F.softplus((x @ self.n).view(b, t, e)
                                                             .transpose(0, 1))
        top = noisy.topk(K, -1)
        q = torch.zeros_like(noisy).scatter(-1, top.indices, torch.softmax(top.values, -1))
        imp = q.sum(1)
        aux = 0.1 * (imp.var(-1, unbiased=False) / (imp.mean(-1) ** 2 + 1e-10)).sum()
        return q, aux

    def step(self, x: Tensor, probe: Tensor) -> None:
        q, aux = self.weights(x)
        h = torch.relu(torch.baddbmm(self.b1, x.expand(self.E, *x.shape), self.w1))
        y = torch.baddbmm(self.b2, h, self.w2)  # (E, B, O)
        if q.dim() == 2:
            out = (q @ y.reshape(self.E, -1)).view(self.T, x.shape[0], OUT)
        else:
            out = torch.bmm(q.transpose(0, 1), y.transpose(0, 1)).transpose(0, 1)
        ((out * probe).sum() + aux).backward()


# --------------------------------------------------------------------------- timed functions


def layer_step(moe: MultiGateMoE, x: Tensor, probe: Tensor) -> Callable[[], None]:
    def run() -> None:
        moe.zero_grad(set_to_none=True)
        mixed, aux = moe.mix(x)
        ((mixed * probe).sum() + aux).backward()
    return run


def gate_step(moe: MultiGateMoE, x: Tensor) -> Callable[[], None]:
    probe = None

    def run() -> None:
        nonlocal probe
        weights, aux = moe.routing_weights(x)
        probe = torch.randn_like(weights) if probe is None else probe
        ((weights * probe).sum() + aux).backward()
    return run


def measure(gate: str, tasks: int, experts: int, dim: int, repeats: int, warmup: int,
            loop: bool, median: bool = False) -> dict:
    torch.manual_seed(0)
    x = torch.randn(BATCH, dim)
    probe = torch.randn(tasks, BATCH, OUT)
    template = GATES[gate](experts, dim)
    bank_experts = mlp_experts(experts, dim, HIDDEN, OUT)
    fns: dict[str, Callable[[], None]] = {}
    banks = {}
    for execution in ("dense", "sparse", "capacity"):
        banks[execution] = MultiGateMoE(bank_experts, tasks, gate=template,
                                        execution=execution)
        fns[f"bank {execution}"] = layer_step(banks[execution], x, probe)
    if gate.startswith("dselect_k"):  # saturate the selectors: exactly k nonzeros, as trained
        with torch.no_grad():
            for moe in banks.values():
                g = moe.gates
                (g.z_logits if g.z_proj is None else g.z_proj.weight).normal_(0, 10.0)
    fns["gate only"] = gate_step(banks["dense"], x)
    if loop:
        separate = MultiGateMoE(nn.ModuleList(list(bank_experts)), tasks,
                                gate=[GATES[gate](experts, dim) for _ in range(tasks)],
                                execution="dense")
        fns["loop"] = layer_step(separate, x, probe)
    hand = Hand(gate, tasks, experts, dim)
    fns["hand"] = lambda: hand.step(x, probe)
    t = interleaved_timings(fns, repeats=repeats, warmup=warmup,
                            reduce=statistics.median if median else min)
    return {"gate": gate, "T": tasks, "E": experts, **{k: v * 1e3 for k, v in t.items()}}


def format_table(rows: list[dict]) -> str:
    head = (f"| {'gate':22} | {'T':>3} | {'E':>2} | bank dense ms | steps/s | sparse ms | "
            "capacity ms | loop ms | hand ms | bank/hand (ideal 1.00x) | loop/bank | "
            "gate share |")
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        loop = f"{r['loop']:7.1f}" if "loop" in r else "      -"
        loop_ratio = f"{r['loop'] / r['bank dense']:8.1f}x" if "loop" in r else "        -"
        lines.append(
            f"| {r['gate']:22} | {r['T']:3d} | {r['E']:2d} | {r['bank dense']:13.2f} | "
            f"{1e3 / r['bank dense']:7.0f} | {r['bank sparse']:9.2f} | "
            f"{r['bank capacity']:11.2f} | {loop} | {r['hand']:7.2f} | "
            f"{r['bank dense'] / r['hand']:22.2f}x | {loop_ratio} | "
            f"{100 * r['gate only'] / r['bank dense']:9.1f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="T in {2, 128}, E = 16, fewer repeats (about a minute)")
    parser.add_argument("--tasks", type=int, nargs="+", help="default 2 16 128")
    parser.add_argument("--experts", type=int, nargs="+", help="default 8 16 64")
    parser.add_argument("--gates", nargs="+", choices=sorted(GATES), help="default all")
    parser.add_argument("--dim", type=int, default=100, help="expert input width")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 15, quick 7)")
    parser.add_argument("--median", action="store_true", help="report medians, not minima")
    parser.add_argument("--warmup", type=int, help="untimed rounds (default 2, quick 1)")
    parser.add_argument("--loop-max-experts", type=int, default=16,
                        help="time the per-module loop only up to this many experts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tasks = args.tasks or ([2, 128] if args.quick else [2, 16, 128])
    experts = args.experts or ([16] if args.quick else [8, 16, 64])
    repeats = args.repeats or (7 if args.quick else 15)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    print(f"Machine: {machine_info()}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"MultiGateMoE, batch {BATCH}, experts {args.dim} -> {HIDDEN} -> {OUT}, k = {K}, "
          f"fwd+bwd, {'median' if args.median else 'minimum'} of {repeats} round-robin "
          f"repeats after {warmup} warm-up\n")
    rows = []
    for gate in args.gates or list(GATES):
        for e in experts:
            for t in tasks:
                rows.append(measure(gate, t, e, args.dim, repeats, warmup,
                                    loop=e <= args.loop_max_experts, median=args.median))
                print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + format_table(rows))
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    return rows


if __name__ == "__main__":
    main()
