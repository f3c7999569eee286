"""Wall time of one training step of the 128-task MTL experiment, per gate.

The ``mtl_synthetic_clusters`` setting at 128 tasks: 8 planted clusters (correlation
0.9), 16 MLP experts 100 -> 16 -> 8, linear towers, static gates with k = 2, Adam with a
separate gate learning rate, batch 128, dense execution. A step is what the ``compactnn
mtl`` engine runs per batch: ``MTLTask.train_step`` (forward, the 128 task losses) plus
``backward`` and the optimizer step. Printed: milliseconds per step (median of the
``--steps`` timed steps after warm-up) and steps per second.

To compare two versions of the library, run this file with each on ``PYTHONPATH``:

    PYTHONPATH=<old tree>/src python benchmarks/bench_moe_mtl_step.py
    PYTHONPATH=<new tree>/src python benchmarks/bench_moe_mtl_step.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from compactnn.config import build_config, parse_overrides
from compactnn.data.synthetic import make_clustered_synthetic
from compactnn.engine import DistInfo
from compactnn.tasks.mtl.config import MTLConfig
from compactnn.tasks.mtl.task import MTLTask
from compactnn.utils import machine_info


def step_times(gate: str, tasks: int, clusters: int, experts: int, batch: int, steps: int,
               warmup: int) -> list[float]:
    torch.manual_seed(0)
    data = make_clustered_synthetic(tasks, clusters, n_train=batch * 4, n_val=16, n_test=16,
                                    correlation=0.9, seed=0)
    overrides = ["data.name=clustered", "experts.hidden=[16]", "experts.out=8",
                 "towers.hidden=[]", "gate.per_example=false", "gate.k=2", "optim.lr=0.005",
                 "optim.gate_lr=0.05", f"experts.num={experts}", f"optim.batch_size={batch}",
                 f"gate.name={gate}", "execution=dense"]
    cfg = build_config(MTLConfig, parse_overrides(overrides))
    task = MTLTask(cfg, data)
    info = DistInfo()
    task.setup(info)
    model, opt, _ = task.build(info, steps_per_epoch=4)
    model.train()
    times = []
    for i in range(warmup + steps):
        rows = torch.randint(0, len(data.train), (batch,))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _, _ = task.train_step(model, rows)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gates", nargs="+", default=["dselect_k", "softmax", "topk"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import compactnn

    print(f"Machine: {machine_info()}; load average {os.getloadavg()[0]:.2f} at start")
    print(f"library: {os.path.dirname(compactnn.__file__)}")
    print(f"{args.tasks} tasks, {args.experts} experts, batch {args.batch}, median of "
          f"{args.steps} steps after {args.warmup} warm-up")
    result = {}
    for gate in args.gates:
        ms = 1e3 * statistics.median(step_times(gate, args.tasks, args.clusters, args.experts,
                                                args.batch, args.steps, args.warmup))
        result[gate] = ms
        print(f"{gate:10s} {ms:8.1f} ms/step  {1e3 / ms:6.1f} steps/s", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return result


if __name__ == "__main__":
    main()
