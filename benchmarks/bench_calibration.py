"""Calibrated compression time: ``factorize(..., calibration=...)`` with the
data-aware inits on a ResNet-18 (torchvision's layout: 7x7 stem, max-pool, four
stages of two basic blocks, 1000-way head; built here so torchvision is not
needed), 32 random images at 64x64 px, every Conv2d/Linear at a quarter of its
full rank. Prints, per init, the wall and CPU time (medians of ``--repeats``
round-robin runs; one thread, so on a loaded machine the CPU time is the steadier
figure) and their ratios to ``whitened``'s, and with ``--layers`` the time spent
in each layer's initializer.

    python benchmarks/bench_calibration.py [--quick] [--repeats 3] [--threads 1] [--layers]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

import torch
from torch import nn

import compactnn as cn
from compactnn.lowrank import lookup_initializer
from compactnn.utils import machine_info

INITS = ("whitened", "lstsq", "nonlinear")


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


def resnet18(num_classes: int = 1000) -> nn.Module:
    """torchvision.models.resnet18's modules and names, with random weights and
    BatchNorm statistics set by a few training-mode passes."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    names = ["conv1", "bn1", "relu", "maxpool"]
    cin = 64
    for i, (cout, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), start=1):
        layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
        names.append(f"layer{i}")
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    names += ["avgpool", "flatten", "fc"]
    model = nn.Sequential()
    for name, mod in zip(names, layers, strict=True):
        model.add_module(name, mod)
    return model


def make_case(images: int, size: int, seed: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = resnet18()
    x = torch.randn(images, 3, size, size)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval(), x


def per_layer(model: nn.Module, x: torch.Tensor, init: str, rank: float) -> dict[str, float]:
    """Seconds inside each layer's initializer (one run)."""
    entry = lookup_initializer(init)
    spent: dict[str, float] = defaultdict(float)
    original = entry.fn

    def timed(layer, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(layer, *args, **kwargs)
        finally:
            spent[layer.extra_repr()] += time.perf_counter() - t0

    object.__setattr__(entry, "fn", timed)  # the registry's entries are frozen dataclasses
    try:
        cn.factorize(model, rank=rank, init=init, calibration=x)
    finally:
        object.__setattr__(entry, "fn", original)
    return dict(spent)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 images at 32 px, one repeat")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rank", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", action="store_true", help="also time each layer's init")
    ap.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.size, args.repeats = 8, 32, 1
    torch.set_num_threads(args.threads)
    model, x = make_case(args.images, args.size, seed=0)
    print(f"factorize(resnet18, rank={args.rank}, init=..., calibration={args.images} images "
          f"at {args.size} px), median of {args.repeats} round-robin repeats")
    print(f"Machine: {machine_info()}")
    print(f"Load average (1, 5, 15 min) at start: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    wall: dict[str, list[float]] = {i: [] for i in args.inits}
    cpu: dict[str, list[float]] = {i: [] for i in args.inits}
    for _ in range(args.repeats):  # round-robin: machine noise hits every init alike
        for init in args.inits:
            w0, c0 = time.perf_counter(), time.process_time()
            cn.factorize(model, rank=args.rank, init=init, calibration=x)
            wall[init].append(time.perf_counter() - w0)
            cpu[init].append(time.process_time() - c0)
    med = {k: {i: statistics.median(v[i]) for i in args.inits} for k, v in
           (("wall", wall), ("cpu", cpu))}
    print("\n| init | wall s | CPU s | wall / whitened | CPU / whitened |\n|---|---|---|---|---|")
    for init in args.inits:
        ratios = [f"{med[k][init] / med[k]['whitened']:.2f}x" if "whitened" in med[k] else "-"
                  for k in ("wall", "cpu")]
        print(f"| {init} | {med['wall'][init]:.1f} | {med['cpu'][init]:.1f} | "
              f"{ratios[0]} | {ratios[1]} |")
    if args.layers:
        spent = {init: per_layer(model, x, init, args.rank) for init in args.inits}
        print("\n| layer | " + " | ".join(f"{i} (s)" for i in args.inits) + " |")
        print("|---|" + "---|" * len(args.inits))
        for key in spent[args.inits[0]]:
            print(f"| {key} | " + " | ".join(f"{spent[i].get(key, 0.0):.2f}"
                                             for i in args.inits) + " |")


if __name__ == "__main__":
    main()
