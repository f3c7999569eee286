"""Model surgery: turn a dense model into a low-rank one and back.

``factorize`` replaces ``nn.Linear`` / ``nn.Conv2d`` modules, chosen by name
patterns (:mod:`compactnn.surgery.select`), with :class:`LowRankLinear` /
:class:`LowRankConv2d`, at a given rank or at the ranks that meet a global
parameter or multiply-add budget (:mod:`compactnn.surgery.budget`). ``merge``
rebuilds the dense model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_choice, check_float, check_module
from compactnn._modules import replace_module
from compactnn.lowrank import (
    CONV_SCHEMES,
    Initializer,
    LowRankLayer,
    dense_matrix_shape,
    lookup_initializer,
    resolve_rank,
    to_lowrank,
)
from compactnn.surgery.budget import (
    ALLOCATIONS,
    BUDGET_TOLERANCE,
    Candidate,
    allocate_ranks,
    layer_macs,
    module_call,
    spectral_energies,
    trace_shapes,
)
from compactnn.surgery.report import FactorizeReport, LayerReport
from compactnn.surgery.select import Patterns, select_layers
from compactnn.surgery.sequential import compress_sequential

__all__ = ["factorize", "merge", "unique_params"]


def unique_params(model: nn.Module) -> int:
    """Entries of the model's distinct parameters (a tied parameter counts once)."""
    return sum(p.numel() for p in model.parameters())


def _candidates(model: nn.Module, names: list[str], scheme: str) -> list[Candidate]:
    """Group the selected modules by the weight they use. A weight tied to a
    parameter outside the selection cannot stay tied after surgery: refused."""
    modules = dict(model.named_modules())
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    by_weight: dict[int, Candidate] = {}
    out = []
    for name in names:
        mod = modules[name]
        w = mod.weight
        if w.device.type == "meta":
            raise ValueError(f"module {name!r} is on the meta device (its weights hold no "
                             "values); materialize the model first (model.to_empty(...))")
        if not torch.isfinite(w).all() or (mod.bias is not None
                                           and not torch.isfinite(mod.bias).all()):
            raise ValueError(f"module {name!r} has non-finite weights; refusing to factorize")
        cand = by_weight.get(id(w))
        if cand is not None:
            if type(cand.modules[0]) is not type(mod) or \
                    dense_matrix_shape(cand.modules[0], scheme) != dense_matrix_shape(mod, scheme):
                raise ValueError(f"{name!r} and {cand.name!r} share a weight but differ in "
                                 "layout; they cannot share one factor pair")
            if all(m is not mod for m in cand.modules):
                cand.names.append(name)
                cand.modules.append(mod)
            continue
        g, m, n = dense_matrix_shape(mod, scheme)
        cand = Candidate([name], [mod], g, m, n, isinstance(mod, nn.Conv2d) and
                         scheme == "spatial")
        by_weight[id(w)] = cand
        out.append(cand)
    for cand in out:
        outside = []
        for pname in owners[id(cand.modules[0].weight)]:
            prefix, _, attr = pname.rpartition(".")
            owner = model.get_submodule(prefix)
            if attr != "weight" or all(owner is not m for m in cand.modules):
                outside.append(pname)
        if outside:
            raise ValueError(f"the weight of {cand.name!r} is tied to {', '.join(outside)}, "
                             "which is not factorized with it; factorizing would break the "
                             "tie. Include every module that uses it or exclude "
                             f"{cand.name!r}")
    return out


def _builder(rank: int, entry: Initializer, scheme: str, init_kwargs: dict[str, Any],
             activations: bool) -> Callable[..., nn.Module]:
    """``build(dense, **calibration)`` for one candidate: the first module gets the
    initializer; modules tied to it get layers sharing its factor pair (and its
    bias when the dense biases were tied too)."""
    made: list[tuple[nn.Module, LowRankLayer]] = []

    def build(module: nn.Module, **data_kwargs: Any) -> nn.Module:
        if not activations:
            data_kwargs.pop("activation", None)
            data_kwargs.pop("post_norm", None)
        if not made:
            layer = to_lowrank(module, rank, entry.fn, scheme, **init_kwargs, **data_kwargs)
        else:
            first_dense, first = made[0]
            layer = to_lowrank(module, rank, "default", scheme)
            layer.U, layer.V = first.U, first.V
            if module.bias is not None and module.bias is first_dense.bias:
                layer.bias = first.bias
        made.append((module, layer))
        return layer

    return build


def _check_budget(rank: Any, param_ratio: Any, flop_ratio: Any) -> None:
    given = [k for k, v in (("rank", rank), ("param_ratio", param_ratio),
                            ("flop_ratio", flop_ratio)) if v is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of rank, param_ratio, flop_ratio; got "
                         f"{', '.join(given) or 'none'}")
    for name, ratio in (("param_ratio", param_ratio), ("flop_ratio", flop_ratio)):
        if ratio is not None:
            check_float(name, ratio, 0.0, 1.0, min_inclusive=False)
    if rank is not None:  # type and range checks only; clipped per layer below
        resolve_rank(rank, rank if isinstance(rank, int) and rank >= 1 else 1)


def _plan(cands: list[Candidate], rank: int | float | None, param_ratio: float | None,
          flop_ratio: float | None, allocation: str, scheme: str, params_before: int,
          macs_before: float | None) -> list[int | None]:
    """The rank of each candidate (None: kept dense)."""
    macs = flop_ratio is not None
    if macs and macs_before is None:
        raise ValueError("flop_ratio needs example_inputs for models with Conv2d layers "
                         "(their cost depends on the input size)")

    def cost(c: Candidate, r: int | None) -> float:
        return c.cost(r, macs)

    if rank is not None:
        if isinstance(rank, int) and cands and rank > max(c.full_rank for c in cands):
            raise ValueError(f"rank={rank} exceeds the full rank of every selected layer "
                             f"(largest {max(c.full_rank for c in cands)})")
        ranks: list[int | None] = []
        for c in cands:
            r = (min(rank, c.full_rank) // c.groups * c.groups or c.groups
                 if isinstance(rank, int) else resolve_rank(rank, c.full_rank,
                                                           multiple_of=c.groups))
            ranks.append(None if cost(c, r) >= cost(c, None) else r)
        return ranks
    ratio = flop_ratio if macs else param_ratio
    whole = macs_before if macs else params_before
    fixed = whole - sum(cost(c, None) for c in cands)
    target = ratio * whole
    floor = fixed + sum(min(cost(c, c.groups), cost(c, None)) for c in cands)
    what = "flop_ratio" if macs else "param_ratio"
    if floor > target * (1 + 1e-9):
        raise ValueError(f"{what}={ratio} cannot be met: the selected layers at rank 1 "
                         f"still give a ratio of {floor / whole:.4f}; factorize more "
                         "layers (include/exclude) or raise the budget")
    energies = spectral_energies(cands, scheme) if allocation == "energy" else None
    ranks = allocate_ranks(cands, cost, fixed, target, allocation, energies)
    achieved = fixed + sum(cost(c, r) for c, r in zip(cands, ranks, strict=True))
    if abs(achieved - target) > BUDGET_TOLERANCE * target:
        warnings.warn(f"budget met only to {achieved / whole:.4f} of the model for a "
                      f"target of {ratio}: the rank granularity of the selected layers "
                      "is too coarse", stacklevel=3)
    return ranks


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
    the dense layer (rank at or above break-even) is kept dense. Parameters are
    counted once however often they are shared.

    Args:
        include, exclude: a regex (full match on qualified module names) or a list
            of names (a name matches itself and any name ending in ``"." + name``).
            By default every Linear/Conv2d is a candidate. A selection that leaves
            nothing to factorize warns and returns an unchanged copy.
        init: an initializer name (``"spectral"``, ``"default"``, and those of
            ``compactnn.init``) or callable; ``init_kwargs`` are passed to it.
        calibration: data (a tensor or iterable of batches) for the data-aware
            inits (``compactnn.lowrank.is_data_aware``); layers are then
            compressed in forward order, each on the activations of the
            already-compressed model before it. With an init that is not
            data-aware the data cannot be used: ``calibration`` is ignored with a
            ``UserWarning``.
        activations: the activation following each layer, by name, for the
            activation-aware inits (detected when omitted; ignored with a
            warning by the others).
        inplace: modify ``model`` itself instead of a deep copy.

    Weight tying: modules that share one weight are factorized together, at one
    rank, into layers sharing one factor pair (and their bias if it was shared),
    so the tie survives. A weight tied to something that is not factorized with
    it (an embedding, an excluded layer) is refused with a ``ValueError``.

    Returns:
        ``(model, report)``; ``print(report)`` shows a per-layer table. On any
        error ``model`` is left as it was.
    """
    _check_budget(rank, param_ratio, flop_ratio)
    check_choice("conv_scheme", conv_scheme, CONV_SCHEMES)
    check_choice("allocation", allocation, ALLOCATIONS)
    check_bool("inplace", inplace)
    check_bool("progress", progress)
    entry = lookup_initializer(init)
    check_module("model", model)
    if isinstance(model, nn.Linear | nn.Conv2d):
        raise TypeError(f"factorize works on models that contain layers; for a single "
                        f"{type(model).__name__} use LowRankLinear/LowRankConv2d.from_dense")
    if activations is not None and not isinstance(activations, Mapping):
        raise TypeError(f"activations must be a dict of module name -> activation name, "
                        f"got {type(activations).__name__}")
    if calibration is not None and not entry.data_aware:
        warnings.warn(f"calibration is ignored: init={entry.name!r} does not use data (the "
                      "data-aware inits are those with compactnn.lowrank.is_data_aware)",
                      UserWarning, stacklevel=2)
        calibration = None
    if activations and not (entry.activation_aware and calibration is not None):
        warnings.warn(f"activations are ignored: init={entry.name!r} "
                      + ("does not use the activation" if entry.activation_aware is False
                         else "uses them only with calibration data"),
                      UserWarning, stacklevel=2)

    names = select_layers(model, include, exclude)
    cands = _candidates(model, names, conv_scheme)
    shapes = trace_shapes(model, example_inputs) if example_inputs is not None else None
    for c in cands:
        c.calls = [module_call(mod, shapes) for mod in c.modules]
        for name, mod in zip(c.names, c.modules, strict=True):
            if shapes is not None and mod not in shapes:
                warnings.warn(f"{name!r} did not run on example_inputs; its MACs count as 0",
                              stacklevel=2)
    params_before = unique_params(model)
    # every Linear/Conv2d counts, low-rank layers already in the model included
    macs_all = [layer_macs(m, shapes) for m in model.modules()
                if isinstance(m, nn.Linear | nn.Conv2d | LowRankLayer)]
    macs_before = None if any(v is None for v in macs_all) else sum(macs_all)
    ranks = _plan(cands, rank, param_ratio, flop_ratio, allocation, conv_scheme,
                  params_before, macs_before)
    if cands and all(r is None for r in ranks) and (rank is not None or
                                                     (param_ratio or flop_ratio) < 1):
        warnings.warn("nothing to factorize: every selected layer is at or above its "
                      "break-even rank and is kept dense", UserWarning, stacklevel=2)

    # -- replace (all checks done above) ------------------------------------------------
    if not inplace:
        memo: dict[int, Any] = {}
        model = copy.deepcopy(model, memo)
        for c in cands:
            c.modules = [memo[id(m)] for m in c.modules]
    _replace(model, cands, ranks, entry, conv_scheme, calibration, activations, progress,
             init_kwargs)
    return model, _report(cands, ranks, params_before, unique_params(model), macs_before)


def _replace(model: nn.Module, cands: list[Candidate], ranks: list[int | None],
             entry: Initializer, scheme: str, calibration: Any,
             activations: dict[str, str] | None, progress: bool,
             init_kwargs: dict[str, Any]) -> None:
    targets = [(c, _builder(r, entry, scheme, init_kwargs, entry.activation_aware))
               for c, r in zip(cands, ranks, strict=True) if r is not None]
    if calibration is not None:
        names = {id(m): n for n, m in model.named_modules()}
        compress_sequential(model, [(names[id(m)], build) for c, build in targets
                                    for m in c.modules],
                            calibration, activations=activations, progress=progress)
        return
    pairs = [(m, build) for c, build in targets for m in c.modules]
    done: list[tuple[nn.Module, nn.Module]] = []
    iterator: Iterable = pairs
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(pairs, desc="factorize", unit="layer")
    try:
        for dense, build in iterator:
            new = build(dense)
            replace_module(model, dense, new)
            done.append((dense, new))
    except BaseException:
        for dense, new in reversed(done):
            replace_module(model, new, dense)
        raise


def _report(cands: list[Candidate], ranks: list[int | None], params_before: int,
            params_after: int, macs_before: float | None) -> FactorizeReport:
    report = FactorizeReport(params_before=params_before, params_after=params_after)
    macs_after = macs_before
    for c, r in zip(cands, ranks, strict=True):
        mb, ma = c.dense_macs(), (c.dense_macs() if r is None else c.lowrank_macs(r))
        if macs_after is not None:
            macs_after += ma - mb
        for i, mod in enumerate(c.modules):
            bias = mod.bias.numel() if mod.bias is not None and (
                i == 0 or all(mod.bias is not o.bias for o in c.modules[:i])) else 0
            shape = "x".join(map(str, mod.weight.shape))
            note = "" if r is not None else "kept dense: rank at or above break-even"
            before = c.dense_params if i == 0 else 0
            after = (c.dense_params if r is None else c.lowrank_params(r)) if i == 0 else 0
            if i:
                note = f"weight tied to {c.name!r}" + (f"; {note}" if note else "")
            call = c.calls[i]
            one = Candidate([c.names[i]], [mod], c.groups, c.m, c.n, c.spatial, [call])
            lb, la = one.dense_macs(), (one.dense_macs() if r is None else one.lowrank_macs(r))
            report.layers.append(LayerReport(
                c.names[i], type(mod).__name__, shape, c.full_rank, r, before + bias,
                after + bias, None if lb is None else int(round(lb)),
                None if la is None else int(round(la)), note))
    if macs_before is not None:
        report.macs_before, report.macs_after = int(round(macs_before)), int(round(macs_after))
    return report


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every low-rank layer by its dense equivalent (``to_dense``). A
    low-rank layer passed as the model itself is returned as a new dense module."""
    check_module("model", model)
    check_bool("inplace", inplace)
    if isinstance(model, LowRankLayer):  # no parent to swap it in
        return model.to_dense()
    if not inplace:
        model = copy.deepcopy(model)
    for layer in [m for m in model.modules() if isinstance(m, LowRankLayer)]:
        replace_module(model, layer, layer.to_dense())
    return model
