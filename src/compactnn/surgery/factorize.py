"""Model surgery: turn a dense model into a low-rank one and back.

``factorize`` replaces ``nn.Linear`` / ``nn.Conv2d`` modules, chosen by name
patterns (:mod:`compactnn.surgery.select`), with :class:`LowRankLinear` /
:class:`LowRankConv2d`, at a given rank or at the ranks that meet a global
parameter or multiply-add budget (:mod:`compactnn.surgery.budget`). ``merge``
rebuilds the dense model.
"""

from __future__ import annotations

import copy
import inspect
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
    is_factorizable,
    is_linear_like,
    lookup_initializer,
    resolve_rank,
    to_lowrank,
)
from compactnn.surgery.blockwise import compress_blockwise, find_blocks
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
from compactnn.surgery.gated import gated_ffn_refit
from compactnn.surgery.report import FactorizeReport, LayerReport
from compactnn.surgery.select import Patterns, layer_fates, select_layers
from compactnn.surgery.sequential import compress_sequential

__all__ = ["factorize", "merge", "unique_params"]


def unique_params(model: nn.Module) -> int:
    """Entries of the model's distinct parameters (a tied parameter counts once)."""
    return sum(p.numel() for p in model.parameters())


def linear_params(model: nn.Module) -> int:
    """Entries of the parameters of the model's linear layers (``nn.Linear`` and its
    subclasses, Hugging Face ``Conv1D``, ``nn.Conv1d``/``Conv2d``, low-rank layers), each
    once. A weight also used by a module of another kind is not counted: the output head
    tied to the input embedding counts as the embedding it reads, as the LLM compression
    papers count it."""
    inside: set[int] = set()
    for mod in model.modules():
        if isinstance(mod, nn.Linear | LowRankLayer) or is_factorizable(mod):
            inside.update(id(m) for m in mod.modules())
    owners: dict[int, tuple[nn.Parameter, list[nn.Module]]] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), (p, []))[1].append(mod)
    return sum(p.numel() for p, mods in owners.values() if all(id(m) in inside for m in mods))


def _candidates(model: nn.Module, names: list[str], scheme: str
                ) -> tuple[list[Candidate], dict[str, str]]:
    """Group the selected modules by the weight they use, and the modules left dense
    because their weight is tied to a parameter of a module that has no low-rank form
    (an embedding: the tied output head of a language model), with that note. A
    weight tied to another factorizable module outside the selection cannot stay
    tied after surgery: refused."""
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
    kept, tied = [], {}
    for cand in out:
        outside = []
        for pname in owners[id(cand.modules[0].weight)]:
            prefix, _, attr = pname.rpartition(".")
            owner = model.get_submodule(prefix)
            if attr != "weight" or all(owner is not m for m in cand.modules):
                outside.append((pname, owner))
        if outside and all(not is_factorizable(o) for _, o in outside):
            for n in cand.names:
                tied[n] = (f"weight tied to {', '.join(p for p, _ in outside)} "
                           f"({type(outside[0][1]).__name__}): kept dense, the tie kept")
            continue
        if outside:
            raise ValueError(f"the weight of {cand.name!r} is tied to "
                             f"{', '.join(p for p, _ in outside)}, which is not factorized "
                             "with it; factorizing would break the tie. Include every module "
                             f"that uses it or exclude {cand.name!r}")
        kept.append(cand)
    return kept, tied


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
          macs_before: float | None, budget_over: str = "model",
          linear_before: int | None = None) -> list[int | None]:
    """The rank of each candidate (None: kept dense). With ``budget_over="selected"``
    the ratio is of the candidates' own cost, with ``"linear"`` of every linear layer's
    parameters (``linear_before``; for MACs, the model's count, which is already one of
    linear layers), else of the whole model's."""
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
    if budget_over == "selected":
        whole = sum(cost(c, None) for c in cands)
        if not whole:
            return [None] * len(cands)
    elif budget_over == "linear" and not macs:
        assert linear_before is not None
        whole = linear_before
    scope = {"selected": "selected layers", "linear": "linear layers"}.get(budget_over, "model")
    fixed = whole - sum(cost(c, None) for c in cands)
    target = ratio * whole
    floor = fixed + sum(min(cost(c, c.groups), cost(c, None)) for c in cands)
    what = "flop_ratio" if macs else "param_ratio"
    if floor > target * (1 + 1e-9):
        hint = ("" if budget_over == "selected" else "; or pass budget_over='selected' to "
                "count the selected layers only (embeddings and other layers excluded)")
        raise ValueError(f"{what}={ratio} cannot be met: the selected layers at rank 1 "
                         f"still give a ratio of {floor / whole:.4f} of the {scope}; "
                         f"factorize more layers (include/exclude) or raise the budget{hint}")
    energies = spectral_energies(cands, scheme) if allocation == "energy" else None
    ranks = allocate_ranks(cands, cost, fixed, target, allocation, energies)
    achieved = fixed + sum(cost(c, r) for c, r in zip(cands, ranks, strict=True))
    if abs(achieved - target) > BUDGET_TOLERANCE * target and allocation != "layerwise":
        warnings.warn(f"budget met only to {achieved / whole:.4f} of the {scope} for a "
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
    progress: bool | None = None,
    budget_over: str = "model",
    sequential: bool = True,
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
    ``allocation="uniform"`` (the same fraction of every layer's full rank),
    ``"energy"`` (greedy on the spectral energy each rank step captures per unit
    of cost; for trained weights) or ``"layerwise"`` (every layer keeps the same
    fraction of its own parameters, rank ``floor(q m n / (m + n))``: the convention
    of SVD-LLM and ASVD). ``budget_over="model"`` (default) takes the ratio of the
    whole model, embeddings included; ``"selected"`` of the selected layers only;
    ``"linear"`` of all linear layers, those left dense included (a head tied to the
    embedding not counted), as the LLM compression papers count it: with a selection
    of some layers, those take the whole budget (the report gives all three ratios;
    for ``flop_ratio`` the MAC count is of the linear layers in every case). A layer whose
    factors would cost as much as the dense layer (rank at or above break-even) is
    kept dense. Parameters are counted once however often they are shared.

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
            ``UserWarning``. Models made of a stack of repeated blocks (the layers
            of a transformer) are calibrated block by block
            (:mod:`compactnn.surgery.blockwise`); token rows of 3-D activations are
            the calibration rows.
        sequential: with calibration, fit each layer on the activations of the
            already-compressed model before it (default), or all layers on the
            dense model's activations (``False``, one pass).
        activations: the activation following each layer, by name, for the
            activation-aware inits (detected when omitted; ignored with a
            warning by the others).
        inplace: modify ``model`` itself instead of a deep copy.
        progress: a progress bar over the layers (with calibration: weighted by each
            layer's cost, with the next layer's estimated time); ``None`` (default):
            only when stderr is a terminal.

    Weight tying: modules that share one weight are factorized together, at one
    rank, into layers sharing one factor pair (and their bias if it was shared),
    so the tie survives. A weight tied to something that is not factorized with
    it (an embedding, an excluded layer) is refused with a ``ValueError``.

    Returns:
        ``(model, report)``; ``print(report)`` shows a per-layer table. On any
        error ``model`` is left as it was.
    """
    _check_budget(rank, param_ratio, flop_ratio)
    check_choice("budget_over", budget_over, ("model", "selected", "linear"))
    check_bool("sequential", sequential)
    check_choice("conv_scheme", conv_scheme, CONV_SCHEMES)
    check_choice("allocation", allocation, ALLOCATIONS)
    check_bool("inplace", inplace)
    if progress is not None:
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

    names, fates = layer_fates(model, include, exclude)
    if not names:
        select_layers(model, include, exclude)  # the "nothing selected" warning
    cands, tied = _candidates(model, names, conv_scheme)
    fates.update(tied)
    shapes = trace_shapes(model, example_inputs) if example_inputs is not None else None
    for c in cands:
        c.calls = [module_call(mod, shapes) for mod in c.modules]
        for name, mod in zip(c.names, c.modules, strict=True):
            if shapes is not None and mod not in shapes:
                warnings.warn(f"{name!r} did not run on example_inputs; its MACs count as 0",
                              stacklevel=2)
    params_before, linear_before = unique_params(model), linear_params(model)
    # every Linear/Conv2d counts, low-rank layers already in the model included
    macs_all = [layer_macs(m, shapes) for m in model.modules()
                if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | LowRankLayer)
                or is_linear_like(m)]
    macs_before = None if any(v is None for v in macs_all) else sum(macs_all)
    ranks = _plan(cands, rank, param_ratio, flop_ratio, allocation, conv_scheme,
                  params_before, macs_before, budget_over, linear_before)
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
    timings: dict[str, float] = {}
    _replace(model, cands, ranks, entry, conv_scheme, calibration, activations, progress,
             sequential, init_kwargs, timings)
    report = _report(cands, ranks, params_before, unique_params(model), macs_before)
    report.timings = timings
    report.linear_params_before, report.linear_params_after = linear_before, linear_params(model)
    _add_fates(report, model, fates)
    return model, report


def _replace(model: nn.Module, cands: list[Candidate], ranks: list[int | None],
             entry: Initializer, scheme: str, calibration: Any,
             activations: dict[str, str] | None, progress: bool | None, sequential: bool,
             init_kwargs: dict[str, Any], timings: dict[str, float]) -> None:
    init_kwargs = dict(init_kwargs)
    after = gated_ffn_refit(entry.name, init_kwargs)
    targets = [(c, _builder(r, entry, scheme, init_kwargs, entry.activation_aware))
               for c, r in zip(cands, ranks, strict=True) if r is not None]
    if calibration is not None:
        names = {id(m): n for n, m in model.named_modules()}
        pairs = [(names[id(m)], build) for c, build in targets for m in c.modules]
        stack = find_blocks(model)
        inside = [p for p in pairs if stack is not None and stack.block_of(p[0]) is not None]
        outside = [p for p in pairs if p not in inside]
        if inside and not (activations and any(n in activations for n, _ in inside)):
            assert stack is not None
            # a refit against the dense model's outputs needs the dense inputs too
            wants_dense = (init_kwargs.get("refit") is not None and "target_inputs"
                           in inspect.signature(entry.fn).parameters)
            compress_blockwise(model, stack, inside, calibration, sequential=sequential,
                               dense_targets=wants_dense,
                               after_group=after if sequential else None, progress=progress,
                               timings=timings)
        else:
            outside = pairs
        if outside:
            compress_sequential(model, outside, calibration, activations=activations,
                                progress=progress, sequential=sequential)
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


def _add_fates(report: FactorizeReport, model: nn.Module, fates: dict[str, str]) -> None:
    """Rows for the layers left out (excluded, tied, unsupported), in module order."""
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    for name, note in fates.items():
        mod = model.get_submodule(name)
        w = getattr(mod, "weight", None)
        shape = "x".join(map(str, w.shape)) if isinstance(w, Tensor) else "-"
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        report.layers.append(LayerReport(name, type(mod).__name__, shape, 0, None, params,
                                         params, None, None, note, selected=False))
    report.layers.sort(key=lambda lr: order.get(lr.name, len(order)))


def merge(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every low-rank layer by its dense equivalent (``to_dense``). Layers
    sharing one factor pair (tied by ``factorize``) get one shared dense weight,
    and a shared bias stays shared. A low-rank layer passed as the model itself is
    returned as a new dense module."""
    check_module("model", model)
    check_bool("inplace", inplace)
    if isinstance(model, LowRankLayer):  # no parent to swap it in
        return model.to_dense()
    if not inplace:
        model = copy.deepcopy(model)
    shared: dict[tuple[str, int, int], nn.Parameter] = {}
    for layer in [m for m in model.modules() if isinstance(m, LowRankLayer)]:
        dense = layer.to_dense()
        keys = [("weight", id(layer.U), id(layer.V))]
        if layer.bias is not None:
            keys.append(("bias", id(layer.bias), 0))
        for key in keys:
            if key in shared:
                setattr(dense, key[0], shared[key])
            else:
                shared[key] = getattr(dense, key[0])
        replace_module(model, layer, dense)
    return model
