"""Costs and rank allocation for model surgery.

A *candidate* is a dense weight to factorize: one ``nn.Linear``/``nn.Conv2d``,
or several that share (tie) the same weight, which are factorized together at
one rank. Its parameter cost counts the shared weight once; its multiply-add
cost counts every call of every module using it. Budgets (a parameter or MAC
ratio) are met from below by a uniform fraction of every candidate's full rank
or by a greedy allocation on spectral energy.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._modules import training_mode
from compactnn.lowrank import (
    LowRankConv1d,
    LowRankLayer,
    LowRankLinear,
    dense_matrix,
    is_linear_like,
    resolve_rank,
)

__all__ = ["ALLOCATIONS", "BUDGET_TOLERANCE", "Candidate", "allocate_ranks", "count_macs",
           "layer_macs", "spectral_energies", "trace_shapes"]

ALLOCATIONS = ("uniform", "energy", "layerwise")
BUDGET_TOLERANCE = 0.02

Shapes = dict[nn.Module, list[tuple[tuple[int, ...], tuple[int, ...]]]]


@dataclass
class Call:
    """One module's work per forward: output positions (rows or pixels; None when
    unknown) and, for convolutions, input and output heights (averaged over calls
    with weights ``N * W_out``, which keeps the spatial scheme's cost exact)."""

    uses: float | None
    in_height: float | None = None
    out_height: float | None = None


def module_call(module: nn.Module, shapes: Shapes | None) -> Call:
    """The :class:`Call` of ``module`` from traced shapes (one row per forward for
    a Linear when nothing was traced; unknown for a convolution)."""
    linear = is_linear_like(module) or isinstance(module, LowRankLinear)
    if shapes is None:
        return Call(1.0 if linear else None)
    calls = shapes.get(module)
    if not calls:
        return Call(0.0)
    if linear:
        return Call(float(sum(math.prod(out[:-1]) for _, out in calls)))
    if isinstance(module, nn.Conv1d | LowRankConv1d):  # (N, C, L): N * L output positions
        return Call(float(sum(math.prod(out[:-2]) * out[-1] for _, out in calls)))
    cols = [out[0] * out[3] for _, out in calls]  # N * W_out
    if not sum(cols):
        return Call(0.0, calls[0][0][-2], calls[0][1][2])
    uses = sum(c * out[2] for c, (_, out) in zip(cols, calls, strict=True))
    h_in = sum(c * inp[-2] for c, (inp, _) in zip(cols, calls, strict=True))
    return Call(float(uses), h_in / sum(cols), uses / sum(cols))


def _lowrank_call_macs(call: Call, m: int, n: int, r: int, spatial: bool) -> float | None:
    if call.uses is None:
        return None
    if spatial and call.uses:
        # the first convolution runs at the input height, the second at the output's
        per_col = call.uses / call.out_height  # N * W_out
        return per_col * r * (call.in_height * n + call.out_height * m)
    return call.uses * r * (m + n)


@dataclass
class Candidate:
    """A weight to factorize and the modules (``names``) that use it."""

    names: list[str]
    modules: list[nn.Module]
    groups: int
    m: int  # matrix view rows per group
    n: int  # matrix view columns per group
    spatial: bool = False  # a convolution under the spatial scheme
    calls: list[Call] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def full_rank(self) -> int:
        return self.groups * min(self.m, self.n)

    @property
    def dense_params(self) -> int:
        return self.groups * self.m * self.n

    def lowrank_params(self, r: int) -> int:
        return r * (self.m + self.n)

    def dense_macs(self) -> float | None:
        if any(c.uses is None for c in self.calls):
            return None
        return sum(c.uses for c in self.calls) * self.dense_params

    def lowrank_macs(self, r: int) -> float | None:
        costs = [_lowrank_call_macs(c, self.m, self.n, r, self.spatial) for c in self.calls]
        return None if any(c is None for c in costs) else sum(costs)

    def cost(self, r: int | None, macs: bool) -> float:
        """Parameters (or multiply-adds) at rank ``r``; ``None`` means dense."""
        if macs:
            return self.dense_macs() if r is None else self.lowrank_macs(r)
        return self.dense_params if r is None else self.lowrank_params(r)


def trace_shapes(model: nn.Module, example_inputs: Any) -> Shapes:
    """Input/output shapes of every call of every Linear/Conv2d/low-rank layer in
    one forward pass (eval mode, no grad; training flags restored). A module
    called several times has one entry per call."""
    shapes: Shapes = {}

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        shapes.setdefault(mod, []).append((tuple(args[0].shape), tuple(out.shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | LowRankLayer)
               or is_linear_like(m)]
    try:
        with torch.no_grad(), training_mode(model, False):
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, tuple | list):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
    return shapes


def layer_macs(module: nn.Module, shapes: Shapes | None) -> float | None:
    """Multiply-adds of one dense or low-rank Linear/Conv2d per forward pass: 0 when
    it did not run on the traced inputs, None when unknown (a convolution and no
    traced shapes)."""
    call = module_call(module, shapes)
    if isinstance(module, LowRankLayer):
        g, m, n = module.matrix_shape
        spatial = module.config().get("scheme", "channel") == "spatial"
        return _lowrank_call_macs(call, m, n, module.rank, spatial)
    if call.uses is None:
        return None
    return call.uses * module.weight.numel()  # = G * m * n of the matrix view


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-adds of all (dense or low-rank) Linear/Conv2d layers in one
    forward pass of ``example_inputs`` (bias additions not counted)."""
    shapes = trace_shapes(model, example_inputs)
    return int(round(sum(layer_macs(m, shapes) for m in model.modules() if m in shapes)))


def spectral_energies(cands: list[Candidate], scheme: str) -> list[Tensor]:
    """Per candidate, the fraction of ``|W|_F^2`` each further rank step captures
    (singular values squared, summed over groups, normalized)."""
    out = []
    for c in cands:
        s2 = torch.linalg.svdvals(dense_matrix(c.modules[0], scheme).float()).pow(2).sum(0)
        out.append(s2 / s2.sum().clamp_min(1e-30))
    return out


def allocate_ranks(
    cands: list[Candidate],
    cost: Callable[[Candidate, int | None], float],
    fixed: float,
    target: float,
    allocation: str,
    energies: list[Tensor] | None,
) -> list[int | None]:
    """Ranks (None = keep dense) whose total cost, plus ``fixed``, is as close to
    ``target`` as the rank granularity allows without exceeding it."""

    def total(ranks: list[int | None]) -> float:
        return fixed + sum(cost(c, r) for c, r in zip(cands, ranks, strict=True))

    def clip(c: Candidate, r: int | None) -> int | None:
        # keep dense where the factors would cost as much as the dense layer
        return None if r is None or cost(c, r) >= cost(c, None) else r

    if allocation == "layerwise":
        return _layerwise(cands, cost, fixed, target, clip)
    if allocation == "uniform":
        lo, hi = 0.0, 1.0
        best = [clip(c, c.groups) for c in cands]
        for _ in range(60):
            mid = (lo + hi) / 2
            ranks = [clip(c, resolve_rank(max(mid, 1e-12), c.full_rank, multiple_of=c.groups))
                     for c in cands]
            if total(ranks) <= target:
                lo, best = mid, ranks
            else:
                hi = mid
        ranks = best
    else:  # energy: greedy on captured spectral energy per unit of cost
        assert energies is not None
        ranks = [c.groups for c in cands]
        heap: list[tuple[float, int]] = []

        def push(i: int) -> None:
            c, r = cands[i], ranks[i]
            if r + c.groups > c.full_rank:
                return
            gain = float(energies[i][r // c.groups]) if r // c.groups < len(energies[i]) else 0
            step = cost(c, r + c.groups) - cost(c, r)
            heapq.heappush(heap, (-gain / max(step, 1e-12), i))

        for i in range(len(cands)):
            push(i)
        spent = total(ranks)
        while heap:
            _, i = heapq.heappop(heap)
            c = cands[i]
            step = cost(c, ranks[i] + c.groups) - cost(c, ranks[i])
            if spent + step > target:
                continue
            ranks[i] += c.groups
            spent += step
            push(i)
        ranks = [clip(c, r) for c, r in zip(cands, ranks, strict=True)]

    # Fill what granularity left: one rank step at a time, least-ranked layers first.
    spent = total(ranks)
    changed = True
    while changed:
        changed = False
        order = sorted(range(len(cands)), key=lambda i: (ranks[i] or cands[i].full_rank)
                       / cands[i].full_rank)
        for i in order:
            c, r = cands[i], ranks[i]
            if r is None or r + c.groups > c.full_rank:
                continue
            new = clip(c, r + c.groups)
            delta = cost(c, new) - cost(c, r)
            if new is not None and spent + delta <= target:
                ranks[i], spent, changed = new, spent + delta, True
    return ranks


def _layerwise(cands: list[Candidate], cost: Callable[[Candidate, int | None], float],
               fixed: float, target: float,
               clip: Callable[[Candidate, int | None], int | None]) -> list[int | None]:
    """Every candidate keeps the same fraction ``q`` of its own cost (the convention of
    SVD-LLM and ASVD: rank ``floor(q m n / (m + n))`` per layer, at least one rank
    step), with ``q = (target - fixed) / (dense cost of the candidates)``, so the
    total never exceeds the target. No rank is topped up afterwards: the layers stay
    at one common kept fraction."""
    def ranks_at(q: float) -> list[int | None]:
        out: list[int | None] = []
        for c in cands:
            per_step = cost(c, c.groups)  # cost is linear in the rank
            steps = math.floor(q * cost(c, None) / per_step + 1e-9) if per_step > 0 else 0
            r = min(max(steps, 1) * c.groups, c.full_rank)
            out.append(clip(c, r))
        return out

    dense = sum(cost(c, None) for c in cands)
    return ranks_at((target - fixed) / dense if dense else 0.0)
