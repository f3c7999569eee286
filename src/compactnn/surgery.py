"""Model surgery: turn a dense model into a low-rank one and back.

``factorize`` replaces ``nn.Linear`` / ``nn.Conv2d`` modules, chosen by name
patterns as PEFT chooses its target modules, with :class:`LowRankLinear` /
:class:`LowRankConv2d`, at a given rank or at the ranks that meet a global
parameter or multiply-add budget. ``merge`` rebuilds the dense model.
"""

from __future__ import annotations

import copy
import heapq
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.lowrank import LowRankConv2d, LowRankLayer, LowRankLinear, resolve_rank
from compactnn.lowrank.conv import CONV_SCHEMES

__all__ = ["factorize", "merge", "FactorizeReport", "LayerReport", "count_macs"]

ALLOCATIONS = ("uniform", "energy")
BUDGET_TOLERANCE = 0.02


# -- reporting -------------------------------------------------------------------
@dataclass
class LayerReport:
    """One row of the report: a candidate layer before and after surgery."""

    name: str
    kind: str
    shape: str
    full_rank: int
    rank: int | None  # None: kept dense
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    note: str = ""


@dataclass
class FactorizeReport:
    """What ``factorize`` did, layer by layer, with model totals.

    ``params_*`` count every parameter of the model; ``macs_*`` count the
    multiply-adds of all ``Linear``/``Conv2d`` layers for one forward pass of
    ``example_inputs`` (one input row when none was given; None when unknown).
    """

    layers: list[LayerReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    macs_before: int | None = None
    macs_after: int | None = None

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before

    @property
    def flop_ratio(self) -> float | None:
        if self.macs_before is None or self.macs_after is None:
            return None
        return self.macs_after / self.macs_before

    def rows(self) -> list[list[str]]:
        def fmt(v: int | None) -> str:
            return "-" if v is None else f"{v:,}"

        out = []
        for lr in self.layers:
            rank = "dense" if lr.rank is None else f"{lr.rank}/{lr.full_rank}"
            out.append([lr.name, lr.kind, lr.shape, rank, fmt(lr.params_before),
                        fmt(lr.params_after), fmt(lr.macs_before), fmt(lr.macs_after), lr.note])
        ratio = f"{self.flop_ratio:.3f}" if self.flop_ratio is not None else "-"
        out.append(["total", "", "", "", fmt(self.params_before), fmt(self.params_after),
                    fmt(self.macs_before), fmt(self.macs_after),
                    f"params x{self.param_ratio:.3f}, MACs x{ratio}"])
        return out

    HEADER = ["layer", "type", "shape", "rank", "params", "params after", "MACs",
              "MACs after", "note"]

    def __str__(self) -> str:
        rows = [self.HEADER, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.HEADER))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def to_markdown(self) -> str:
        rows = [self.HEADER, ["---"] * len(self.HEADER), *self.rows()]
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)


# -- selection --------------------------------------------------------------------
Patterns = str | Sequence[str] | None


def _matcher(patterns: Patterns) -> list[tuple[str, Callable[[str], bool]]]:
    """A regex string is matched against whole names; a list of names matches a
    module whose name equals the entry or ends with ``"." + entry``."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        rx = re.compile(patterns)
        return [(patterns, lambda n: rx.fullmatch(n) is not None)]
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"patterns must be a regex string or a list of names, got {patterns!r}")
    return [(p, lambda n, p=p: n == p or n.endswith("." + p)) for p in patterns]


def _is_factorizable(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, nn.Conv2d)


def _select(model: nn.Module, include: Patterns, exclude: Patterns) -> list[str]:
    names = {n: m for n, m in model.named_modules() if n}
    # Linear layers inside nn.MultiheadAttention are read through .weight by its
    # functional forward, so they cannot be swapped for factorized modules.
    protected = {f"{n}.{c}" for n, m in names.items() if isinstance(m, nn.MultiheadAttention)
                 for c, _ in m.named_children()}
    if include is None:
        chosen = [n for n, m in names.items() if _is_factorizable(m)]
    else:
        chosen = []
        for pat, match in _matcher(include):
            hits = [n for n in names if match(n)]
            if not hits:
                raise ValueError(f"include pattern {pat!r} matched no module")
            good = [n for n in hits if _is_factorizable(names[n])]
            if not good:
                kinds = sorted({type(names[n]).__name__ for n in hits})
                raise TypeError(f"include pattern {pat!r} matched only modules that cannot "
                                f"be factorized ({', '.join(kinds)}); only nn.Linear and "
                                "nn.Conv2d can")
            chosen += [n for n in good if n not in chosen]
    for pat, match in _matcher(exclude):
        hits = [n for n in names if match(n)]
        if not hits:
            raise ValueError(f"exclude pattern {pat!r} matched no module")
        chosen = [n for n in chosen if not match(n)]
    return [n for n in chosen if n not in protected]


# -- costs ------------------------------------------------------------------------
@dataclass
class _Candidate:
    name: str
    module: nn.Module
    groups: int
    m: int  # matrix view rows per group
    n: int  # matrix view columns per group
    uses: float | None  # output positions (rows / pixels) per forward; None = unknown
    is_conv: bool = False
    in_height: int | None = None  # conv input height (spatial scheme cost)
    out_height: int | None = None

    @property
    def full_rank(self) -> int:
        return self.groups * min(self.m, self.n)

    @property
    def dense_params(self) -> int:
        return self.groups * self.m * self.n

    def lowrank_params(self, r: int) -> int:
        return r * (self.m + self.n)

    def dense_macs(self) -> float | None:
        return None if self.uses is None else self.uses * self.dense_params

    def lowrank_macs(self, r: int, scheme: str) -> float | None:
        if self.uses is None:
            return None
        if self.is_conv and scheme == "spatial":
            # First conv runs at full input height, second at output height.
            per_col = self.uses / self.out_height  # N * W_out
            return per_col * r * (self.in_height * self.n + self.out_height * self.m)
        return self.uses * r * (self.m + self.n)


def _matrix_dims(module: nn.Module, scheme: str) -> tuple[int, int, int]:
    if isinstance(module, nn.Linear):
        return 1, module.out_features, module.in_features
    g = module.groups
    kh, kw = module.kernel_size
    out_g, in_g = module.out_channels // g, module.in_channels // g
    if scheme == "channel":
        return g, out_g, in_g * kh * kw
    return g, out_g * kh, in_g * kw


def _trace_shapes(model: nn.Module, example_inputs: Any) -> dict[nn.Module, list[tuple]]:
    """Input/output shapes of every call of every Linear/Conv2d in one forward pass
    (eval mode, no grad; training flags restored). A module called several times
    (shared weights) has one entry per call."""
    shapes: dict[nn.Module, list[tuple]] = {}

    def hook(mod, args, out):
        shapes.setdefault(mod, []).append((tuple(args[0].shape), tuple(out.shape)))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Linear | nn.Conv2d | LowRankLayer)]
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            elif isinstance(example_inputs, tuple | list):
                model(*example_inputs)
            else:
                model(example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, t in flags.items():
            m.training = t
    return shapes


def _uses(module: nn.Module, shapes: dict | None) -> tuple[float | None, int | None, int | None]:
    """(output positions, input height, output height) of a layer per forward,
    summed over its calls (heights averaged with weights ``N * W_out``, which keeps
    the spatial scheme's cost exact)."""
    if shapes is None or module not in shapes:
        return (1.0, None, None) if isinstance(module, nn.Linear | LowRankLinear) else (
            None, None, None)
    calls = shapes[module]
    if isinstance(module, nn.Linear | LowRankLinear):
        return sum(math.prod(out_shape[:-1]) for _, out_shape in calls), None, None
    cols = [out_shape[0] * out_shape[3] for _, out_shape in calls]  # N * W_out
    if not sum(cols):
        return 0, calls[0][0][-2], calls[0][1][2]
    uses = sum(c * out_shape[2] for c, (_, out_shape) in zip(cols, calls, strict=True))
    h_in = sum(c * in_shape[-2] for c, (in_shape, _) in zip(cols, calls, strict=True))
    return uses, h_in / sum(cols), uses / sum(cols)


def _layer_macs(module: nn.Module, shapes: dict | None) -> float | None:
    """Multiply-adds of one dense or low-rank Linear/Conv2d per forward pass: 0 when
    it did not run on the traced inputs, None when unknown (a convolution and no
    traced shapes)."""
    if shapes is not None and module not in shapes:
        return 0.0
    uses, h_in, h_out = _uses(module, shapes)
    if uses is None:
        return None
    if isinstance(module, LowRankLayer):
        g, m, n = module.matrix_shape
        scheme = getattr(module, "scheme", "channel")
        cand = _Candidate("", module, g, m, n, uses, isinstance(module, LowRankConv2d),
                          h_in, h_out)
        return cand.lowrank_macs(module.rank, scheme)
    g, m, n = _matrix_dims(module, "channel")
    return uses * g * m * n


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-adds of all (dense or low-rank) Linear/Conv2d layers in one
    forward pass of ``example_inputs`` (bias additions not counted)."""
    shapes = _trace_shapes(model, example_inputs)
    return int(round(sum(_layer_macs(m, shapes) for m in model.modules() if m in shapes)))


# -- rank allocation -------------------------------------------------------------------
def _uniform_ranks(cands: list[_Candidate], fraction: float) -> list[int]:
    return [resolve_rank(fraction, c.full_rank, multiple_of=c.groups) for c in cands]


def _allocate(
    cands: list[_Candidate],
    cost: Callable[[_Candidate, int | None], float],
    fixed: float,
    target: float,
    allocation: str,
    energies: list[Tensor] | None,
) -> list[int | None]:
    """Ranks (None = keep dense) whose total cost is as close to ``target`` as the
    rank granularity allows without exceeding it."""

    def total(ranks: list[int | None]) -> float:
        return fixed + sum(cost(c, r) for c, r in zip(cands, ranks, strict=True))

    def clip(c: _Candidate, r: int | None) -> int | None:
        # keep dense where the factors would cost as much as the dense layer
        return None if r is None or cost(c, r) >= cost(c, None) else r

    if allocation == "uniform":
        lo, hi = 0.0, 1.0
        best = [clip(c, c.groups) for c in cands]
        for _ in range(60):
            mid = (lo + hi) / 2
            ranks = [clip(c, r) for c, r in zip(cands, _uniform_ranks(cands, max(mid, 1e-12)),
                                                strict=True)]
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


def _spectral_energies(cands: list[_Candidate], scheme: str) -> list[Tensor]:
    """Per layer, the fraction of ``|W|_F^2`` each further rank step captures
    (singular values squared, summed over groups, normalized)."""
    out = []
    for c in cands:
        w = c.module.weight.detach().float()
        if isinstance(c.module, nn.Linear):
            mat = w.unsqueeze(0)
        elif scheme == "channel":
            mat = w.reshape(c.groups, c.m, c.n)
        else:
            kh, kw = c.module.kernel_size
            mat = w.reshape(c.groups, c.m // kh, c.n // kw, kh, kw).permute(0, 1, 3, 2, 4)
            mat = mat.reshape(c.groups, c.m, c.n)
        s2 = torch.linalg.svdvals(mat).pow(2).sum(0)
        out.append(s2 / s2.sum().clamp_min(1e-30))
    return out


# -- the surgery --------------------------------------------------------------------------
def factorize(
    model: nn.Module,
    rank: int | float | None = None,
    param_ratio: float | None = None,
    flop_ratio: float | None = None,
    include: Patterns = None,
    exclude: Patterns = None,
    init: str | Callable[..., Any] = "spectral",
    inplace: bool = False,
    conv_scheme: str = "channel",
    allocation: str = "uniform",
    example_inputs: Any = None,
    calibration: Tensor | Iterable[Any] | None = None,
    activations: dict[str, str] | None = None,
    progress: bool = False,
    **init_kwargs: Any,
) -> tuple[nn.Module, FactorizeReport]:
    """Replace Linear/Conv2d layers of ``model`` by low-rank ones.

    Exactly one of:
      * ``rank``: an int (clipped to each layer's full rank) or a float in (0, 1],
        that fraction of each layer's full rank;
      * ``param_ratio``: total parameters after / before, in (0, 1];
      * ``flop_ratio``: multiply-adds of the Linear/Conv2d layers after / before,
        in (0, 1] (needs ``example_inputs`` when the model has convolutions).

    Budgets are met from below, within 2% where the rank granularity allows, by
    ``allocation="uniform"`` (the same fraction of every layer's full rank) or
    ``"energy"`` (greedy on the spectral energy each rank step captures per unit
    of cost; for trained weights). A layer whose factors would cost as much as
    the dense layer (rank at or above break-even) is kept dense.

    Args:
        include, exclude: a regex (full match on qualified module names) or a list
            of names (a name matches itself and any name ending in ``"." + name``).
            By default every Linear/Conv2d is a candidate.
        init: an initializer name (``"spectral"``, ``"default"``, and those of
            ``compactnn.init``) or callable; ``init_kwargs`` are passed to it.
        calibration: data (a tensor or iterable of batches) for data-aware inits;
            layers are then compressed in forward order, each on the activations
            of the already-compressed model before it.
        activations: the activation following each layer, by name, for the
            data-aware inits (detected when omitted).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        ``(model, report)``; ``print(report)`` shows a per-layer table.
    """
    given = [k for k, v in (("rank", rank), ("param_ratio", param_ratio),
                            ("flop_ratio", flop_ratio)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of rank, param_ratio, flop_ratio; got "
                         f"{', '.join(given) or 'none'}")
    for name, ratio in (("param_ratio", param_ratio), ("flop_ratio", flop_ratio)):
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, int | float)
                                  or not 0 < ratio <= 1):
            raise ValueError(f"{name} must be a number in (0, 1], got {name}={ratio!r}")
    if rank is not None:  # type and range checks only; clipped per layer below
        resolve_rank(rank, rank if isinstance(rank, int) and rank >= 1 else 1)
    if conv_scheme not in CONV_SCHEMES:
        raise ValueError(f"conv_scheme must be one of {CONV_SCHEMES}, got {conv_scheme!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if isinstance(init, str):
        from compactnn.lowrank import get_initializer

        get_initializer(init)  # fails early on an unknown name

    if isinstance(model, nn.Linear | nn.Conv2d):
        raise TypeError(f"factorize works on models that contain layers; for a single "
                        f"{type(model).__name__} use LowRankLinear/LowRankConv2d.from_dense")
    names = _select(model, include, exclude)
    modules = dict(model.named_modules())
    for n in names:
        w = modules[n].weight
        if not torch.isfinite(w).all() or (modules[n].bias is not None
                                           and not torch.isfinite(modules[n].bias).all()):
            raise ValueError(f"module {n!r} has non-finite weights; refusing to factorize")

    shapes = _trace_shapes(model, example_inputs) if example_inputs is not None else None
    cands = []
    for n in names:
        mod = modules[n]
        g, m, k = _matrix_dims(mod, conv_scheme)
        uses, h_in, h_out = _uses(mod, shapes)
        if shapes is not None and mod not in shapes:
            warnings.warn(f"{n!r} did not run on example_inputs; its MACs count as 0",
                          stacklevel=2)
            uses = 0.0
        cands.append(_Candidate(n, mod, g, m, k, uses, isinstance(mod, nn.Conv2d), h_in, h_out))

    params_before = sum(p.numel() for p in model.parameters())
    # every Linear/Conv2d counts, low-rank layers already in the model included
    macs_all = [_layer_macs(m, shapes) for m in model.modules()
                if isinstance(m, nn.Linear | nn.Conv2d | LowRankLayer)]
    macs_before = None if any(v is None for v in macs_all) else sum(macs_all)

    if flop_ratio is not None:
        if macs_before is None:
            raise ValueError("flop_ratio needs example_inputs for models with Conv2d layers "
                             "(their cost depends on the input size)")

        def cost(c: _Candidate, r: int | None) -> float:
            return c.dense_macs() if r is None else c.lowrank_macs(r, conv_scheme)
    else:

        def cost(c: _Candidate, r: int | None) -> float:
            return c.dense_params if r is None else c.lowrank_params(r)

    if rank is not None:
        ranks: list[int | None] = []
        if isinstance(rank, int) and cands and rank > max(c.full_rank for c in cands):
            raise ValueError(f"rank={rank} exceeds the full rank of every selected layer "
                             f"(largest {max(c.full_rank for c in cands)})")
        for c in cands:
            r = (min(rank, c.full_rank) // c.groups * c.groups or c.groups
                 if isinstance(rank, int) else resolve_rank(rank, c.full_rank,
                                                           multiple_of=c.groups))
            ranks.append(None if cost(c, r) >= cost(c, None) else r)
    else:
        ratio = param_ratio if param_ratio is not None else flop_ratio
        if flop_ratio is not None:
            whole = macs_before
            fixed = whole - sum(c.dense_macs() for c in cands)
        else:
            whole = params_before
            fixed = whole - sum(c.dense_params for c in cands)
        target = ratio * whole
        floor = fixed + sum(min(cost(c, c.groups), cost(c, None)) for c in cands)
        if floor > target * (1 + 1e-9):
            what = "param_ratio" if param_ratio is not None else "flop_ratio"
            raise ValueError(f"{what}={ratio} cannot be met: the selected layers at rank 1 "
                             f"still give a ratio of {floor / whole:.4f}; factorize more "
                             "layers (include/exclude) or raise the budget")
        energies = _spectral_energies(cands, conv_scheme) if allocation == "energy" else None
        ranks = _allocate(cands, cost, fixed, target, allocation, energies)
        achieved = fixed + sum(cost(c, r) for c, r in zip(cands, ranks, strict=True))
        if abs(achieved - target) > BUDGET_TOLERANCE * target:
            warnings.warn(f"budget met only to {achieved / whole:.4f} of the model for a "
                          f"target of {ratio}: the rank granularity of the selected layers "
                          "is too coarse", stacklevel=2)

    # -- replace (all checks done above) ------------------------------------------------
    if not inplace:
        memo: dict[int, Any] = {}
        model = copy.deepcopy(model, memo)
        old_to_new = {id(k): v for k, v in ((m, memo.get(id(m))) for m in
                                            (c.module for c in cands))}
        for c in cands:
            c.module = old_to_new[id(c.module)]
    _replace(model, cands, ranks, init, conv_scheme, calibration, activations, progress,
             init_kwargs)

    report = FactorizeReport(params_before=params_before,
                             params_after=sum(p.numel() for p in model.parameters()))
    macs_after = None if macs_before is None else macs_before
    for c, r in zip(cands, ranks, strict=True):
        kind = type(c.module).__name__
        shape = (f"{c.module.out_features}x{c.module.in_features}" if kind == "Linear" else
                 "x".join(map(str, c.module.weight.shape)))
        mb, ma = c.dense_macs(), (c.dense_macs() if r is None else
                                  c.lowrank_macs(r, conv_scheme))
        if macs_after is not None:
            macs_after += ma - mb
        bias = c.module.bias.numel() if c.module.bias is not None else 0
        note = "" if r is not None else "kept dense: rank at or above break-even"
        report.layers.append(LayerReport(
            c.name, kind, shape, c.full_rank, r, c.dense_params + bias,
            (c.dense_params if r is None else c.lowrank_params(r)) + bias,
            None if mb is None else int(round(mb)), None if ma is None else int(round(ma)),
            note))
    if macs_before is not None:
        report.macs_before, report.macs_after = int(round(macs_before)), int(round(macs_after))
    return model, report


def _set_module(model: nn.Module, target: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``target`` sits in ``model`` (shared modules too)."""
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if mod is target and name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)


def _builder(rank: int, init: str | Callable[..., Any], scheme: str,
             init_kwargs: dict[str, Any]) -> Callable[..., nn.Module]:
    def build(module: nn.Module, **data_kwargs: Any) -> nn.Module:
        kwargs = {**init_kwargs, **data_kwargs}
        if isinstance(module, nn.Conv2d):
            return LowRankConv2d.from_dense(module, rank, init=init, scheme=scheme, **kwargs)
        return LowRankLinear.from_dense(module, rank, init=init, **kwargs)

    return build


def _replace(model, cands, ranks, init, scheme, calibration, activations, progress,
             init_kwargs) -> None:
    targets = [(c, r) for c, r in zip(cands, ranks, strict=True) if r is not None]
    from compactnn.init.calibration import DATA_AWARE_INITS, compress_sequential

    # Calibration data only matters to the data-aware initializers; the others
    # (spectral, default, custom callables) are applied layer by layer as usual.
    if calibration is not None and isinstance(init, str) and init in DATA_AWARE_INITS:
        names = {id(m): n for n, m in model.named_modules()}
        compress_sequential(
            model,
            [(names[id(c.module)], _builder(r, init, scheme, init_kwargs)) for c, r in targets],
            calibration, activations=activations, progress=progress)
        return
    iterator: Iterable = targets
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(targets, desc="factorize", unit="layer")
    for c, r in iterator:
        _set_module(model, c.module, _builder(r, init, scheme, init_kwargs)(c.module))


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every low-rank layer by its dense equivalent (``to_dense``). A
    low-rank layer passed as the model itself is returned as a new dense module."""
    if isinstance(model, LowRankLayer):  # no parent to swap it in
        return model.to_dense()
    if not inplace:
        model = copy.deepcopy(model)
    for _, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLayer)]:
        _set_module(model, layer, layer.to_dense())
    return model
