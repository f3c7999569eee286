"""One DQN learning step (`compactnn.rl.DQNAgent.learn`: a batch of 32, target network,
centered RMSprop) with the Q-network hidden layers that `minatar_sparse` compares, on a
MinAtar-shaped observation (4 x 10 x 10): the random and local sparse layers stored as
`MaskedLinear` (a masked dense matrix) and as `FixedSparseLinear` (only the connected
weights), beside the dense and conv layers of the same number of connections. All are
timed round-robin in one run. The ideal for a sparse layout is the conv's cost (the
same connections, read through one small kernel).

    python benchmarks/bench_fixed_sparse.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os

import torch

from compactnn.experiments.reporting import markdown_table
from compactnn.models.qnet import StructuredQNet
from compactnn.rl import DQNAgent, DQNConfig
from compactnn.sparse import MaskedLinear
from compactnn.utils import interleaved_timings, machine_info

SHAPE, ACTIONS = (4, 10, 10), 3


def agent(structure: str, masked: bool, learn_hidden: bool) -> DQNAgent:
    net = StructuredQNet(SHAPE, ACTIONS, structure, learn_hidden=learn_hidden,
                         generator=torch.Generator().manual_seed(0))
    if masked:  # the same connections, stored as a masked dense matrix
        mask = net.hidden.mask
        net.hidden = MaskedLinear(mask).requires_grad_(learn_hidden)
    a = DQNAgent(net, ACTIONS, SHAPE, DQNConfig(replay_capacity=512, replay_start=64), 0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(256):
        obs = torch.rand(SHAPE, generator=gen) > 0.9
        a.replay.add(obs, 0, 1.0, torch.rand(SHAPE, generator=gen) > 0.9, False)
    return a


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"DQN learn step, batch 32, observation {SHAPE}, {args.threads} thread(s)")
    print(f"Machine: {machine_info()}")
    print("Load average (1, 5, 15 min) at start: "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    rows = []
    for learn in (True, False):
        variants = {"dense": agent("dense", False, learn), "conv": agent("conv", False, learn)}
        for s in ("random", "local"):
            variants[f"{s} MaskedLinear"] = agent(s, True, learn)
            variants[f"{s} FixedSparseLinear"] = agent(s, False, learn)
        t = interleaved_timings({k: v.learn for k, v in variants.items()},
                                repeats=5 if args.quick else 50, warmup=2, reduce=min)
        for name, sec in t.items():
            layout = name.split()[0]
            ref = t.get(f"{layout} FixedSparseLinear")
            rows.append([name, "learned" if learn else "fixed", f"{1e3 * sec:.2f}",
                         f"{sec / ref:.2f}x" if ref else "-", f"{sec / t['conv']:.2f}x"])
    print(markdown_table(["hidden layer", "regime", "learn step ms", "vs FixedSparseLinear",
                          "vs conv (the ideal)"], rows))
    print("\nLoad average at end: " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
