"""Unstructured sparsity baselines at a parameter budget.

The baselines that low-rank models are compared with at equal parameter count:

* **Iterative magnitude pruning** (:class:`IterativeMagnitudePruning`), as a
  user runs it: train, prune the smallest-magnitude weights globally, then
  either *rewind* the surviving weights (and every other parameter and buffer)
  to a saved early state and retrain -- Frankle & Carbin, *The Lottery Ticket
  Hypothesis: Finding Sparse, Trainable Neural Networks*, ICLR 2019 (rewinding
  to initialization), and Frankle, Dziugaite, Roy & Carbin, *Linear Mode
  Connectivity and the Lottery Ticket Hypothesis*, ICML 2020 (rewinding to an
  early iteration) -- or keep the trained weights and *fine-tune* (Han, Pool,
  Tran & Dally 2015). Densities follow a geometric schedule over the rounds
  (each round keeps the same fraction of what the previous one kept) or the
  cubic schedule of Zhu & Gupta, *To prune, or not to prune*, 2017.
* **Iterative hard thresholding** (:class:`IterativeHardThresholding`), the
  sparse-training recipe of METHODS.md [IHT], *A Recovery Guarantee for Sparse
  Neural Networks*: an ordinary (dense) gradient step on every weight, then the
  hard-thresholding operator ``H_s`` that keeps the ``s`` weights of largest
  magnitude (globally over the pruned layers) and sets the others to zero.
  Weights outside the support still get gradients, so the support can change
  at every step.

Conventions shared by both:

* Which weights are pruned: the ``weight`` of the ``nn.Linear``/``nn.Conv2d``
  modules chosen by ``include``/``exclude`` with exactly the name-pattern
  semantics of ``compactnn.factorize`` (a regex string matched against whole
  module names, or a list of names matched as the name or its dotted suffix);
  pass ``exclude=compactnn.models.resnet.dense_first_last_exclude(model)`` to
  keep the first and last layers dense. Biases, normalization parameters and
  excluded layers are never pruned.
* Budgets count parameters the way ``factorize`` does (``model.parameters()``,
  buffers not counted): a model "at param_ratio p" has
  ``floor(p * dense_params)`` parameters that are not pruned
  (:func:`target_keep_for_param_ratio`), every unpruned parameter counting as
  kept even where its value happens to be zero (a BatchNorm bias at init).
* Masks are global: one top-``keep`` over all pruned weights by ``|w|`` (ties
  broken by ``torch.topk``, the kept count is always exact).
* Both schedulers have ``after_step(model)``, to be called right after every
  ``optimizer.step()``. A ``DistributedDataParallel``/``DataParallel`` wrapper
  or a ``torch.compile`` module may be passed: names are those of the wrapped
  model. Under DDP every rank holds the same weights after a step, so each rank
  computes the same masks with no communication.
* They zero weights in place (under ``no_grad``) and leave the optimizer alone:
  pruned weights are re-zeroed after every step, so momentum or weight decay
  cannot revive them; after rewinding, build a fresh optimizer (and learning
  rate schedule) for the next round, as the lottery-ticket recipe does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.surgery import Patterns, _select

__all__ = [
    "IterativeHardThresholding",
    "IterativeMagnitudePruning",
    "SparsityMasks",
    "global_magnitude_masks",
    "magnitude_masks",
    "pruning_schedule",
    "prunable_weights",
    "target_keep_for_param_ratio",
    "target_keep_for_params",
]

SCHEDULES = ("geometric", "cubic")


# -- selection and budgets ---------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bounds}, got {value}")
    return value


def prunable_weights(model: nn.Module, include: Patterns = None,
                     exclude: Patterns = None) -> dict[str, nn.Parameter]:
    """The ``weight`` parameters of the ``nn.Linear``/``nn.Conv2d`` modules chosen
    by ``include``/``exclude`` (``factorize``'s semantics), keyed by parameter
    name (``"layer1.0.conv1.weight"``), in module order; a weight shared by
    several modules appears once."""
    model = _unwrap(model)
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name in _select(model, include, exclude):
        w = model.get_submodule(name).weight
        if id(w) not in seen:
            seen.add(id(w))
            out[f"{name}.weight"] = w
    return out


def _dense_params(model: nn.Module) -> int:
    return sum(p.numel() for p in _unwrap(model).parameters())


def target_keep_for_params(model: nn.Module, num_params: int, include: Patterns = None,
                           exclude: Patterns = None) -> int:
    """How many prunable weights to keep so that the model has exactly
    ``num_params`` unpruned parameters (e.g. the parameter count of a
    factorized model, to compare at equal size); everything that is not
    prunable counts as kept.

    Raises ``ValueError`` when the budget is unreachable: below what the
    unprunable parameters already take (plus one weight), or above the dense
    count.
    """
    total = _dense_params(model)
    _check_int("num_params", num_params, 1)
    weights = prunable_weights(model, include, exclude)
    prunable = sum(w.numel() for w in weights.values())
    if not weights:
        raise ValueError("no prunable weight selected (include/exclude left no nn.Linear or "
                         "nn.Conv2d)")
    fixed = total - prunable
    keep = num_params - fixed
    if num_params > total:
        raise ValueError(f"num_params={num_params} exceeds the dense model's {total} parameters")
    if keep < 1:
        raise ValueError(f"a budget of {num_params} parameters is unreachable by pruning: the "
                         f"{fixed} parameters that are not pruned (biases, normalization, "
                         f"excluded layers) already take {fixed / total:.4f} of the model; "
                         "prune more layers or raise the budget")
    return keep


def target_keep_for_param_ratio(model: nn.Module, param_ratio: float, include: Patterns = None,
                                exclude: Patterns = None) -> int:
    """How many prunable weights to keep so that the model's unpruned parameters
    number ``floor(param_ratio * dense_params)`` (biases, normalization and
    excluded layers count as kept). ``param_ratio`` in ``(0, 1]``; raises
    ``ValueError`` when the unprunable parameters alone exceed the budget."""
    if (isinstance(param_ratio, bool) or not isinstance(param_ratio, int | float)
            or not 0 < param_ratio <= 1):
        raise ValueError(f"param_ratio must be a number in (0, 1], got {param_ratio!r}")
    total = _dense_params(model)
    # the small slack absorbs float error in ratios computed as after / before
    budget = math.floor(param_ratio * total + 1e-6)
    if budget < 1:
        raise ValueError(f"param_ratio={param_ratio} leaves no parameter of {total}")
    try:
        return target_keep_for_params(model, budget, include, exclude)
    except ValueError as e:
        raise ValueError(f"param_ratio={param_ratio} ({budget} of {total} parameters): "
                         f"{e}") from None


# -- masks --------------------------------------------------------------------------------
SCOPES = ("global", "layer")


def _topk_masks(scores: Mapping[str, Tensor], keep: int) -> dict[str, Tensor]:
    """Boolean masks keeping the ``keep`` largest scores over all tensors."""
    if not scores:
        raise ValueError("no weights given")
    sizes = [s.numel() for s in scores.values()]
    total = sum(sizes)
    _check_int("keep", keep, 0, total)
    device = next(iter(scores.values())).device
    flat = torch.cat([s.detach().reshape(-1).to(device, torch.float32)
                      for s in scores.values()])
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("weights contain NaN or infinity; cannot rank them by magnitude")
    chosen = torch.zeros(total, dtype=torch.bool, device=device)
    if keep:
        chosen[torch.topk(flat, keep, sorted=False).indices] = True
    out = {}
    for (name, s), part in zip(scores.items(), chosen.split(sizes), strict=True):
        out[name] = part.reshape(s.shape).to(s.device)
    return out


def _layerwise_topk(scores: Mapping[str, Tensor], keep: int) -> dict[str, Tensor]:
    """Masks keeping ``keep`` scores in all, each tensor its share in proportion to
    its size (largest remainders get the leftover units), the largest within it."""
    sizes = {n: s.numel() for n, s in scores.items()}
    total = sum(sizes.values())
    _check_int("keep", keep, 0, total)
    quotas = {n: keep * size / total for n, size in sizes.items()}
    alloc = {n: int(q) for n, q in quotas.items()}
    for n in sorted(quotas, key=lambda n: alloc[n] - quotas[n])[:keep - sum(alloc.values())]:
        alloc[n] += 1
    return {n: _topk_masks({n: sc}, alloc[n])[n] for n, sc in scores.items()}


def magnitude_masks(weights: Mapping[str, Tensor], keep: int,
                    scope: str = "global") -> dict[str, Tensor]:
    """Masks keeping ``keep`` weights of largest ``|w|``: over all tensors together
    (``scope="global"``) or the same fraction in every tensor (``"layer"``), which
    keeps a layer whose weights are small at initialization from being wiped out."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got scope={scope!r}")
    scores = {n: w.detach().abs() for n, w in weights.items()}
    return _topk_masks(scores, keep) if scope == "global" else _layerwise_topk(scores, keep)


def global_magnitude_masks(weights: Mapping[str, Tensor], keep: int) -> dict[str, Tensor]:
    """Boolean masks (``True`` = kept) that keep the ``keep`` weights of largest
    ``|w|`` over all of ``weights`` together (exactly ``keep``; ties broken by
    ``torch.topk``), on the devices of the weights."""
    return _topk_masks({n: w.detach().abs() for n, w in weights.items()}, keep)


class SparsityMasks:
    """Boolean masks by parameter name (``True`` = kept), with in-place application.

    Names are parameter names of the (unwrapped) model, as returned by
    :func:`prunable_weights`.
    """

    def __init__(self, masks: Mapping[str, Tensor]) -> None:
        self.masks: dict[str, Tensor] = {}
        for name, m in masks.items():
            if not isinstance(m, Tensor) or m.dtype != torch.bool:
                raise TypeError(f"mask {name!r} must be a bool tensor, got "
                                f"{getattr(m, 'dtype', type(m).__name__)}")
            self.masks[name] = m.detach()

    @classmethod
    def dense(cls, model: nn.Module, include: Patterns = None,
              exclude: Patterns = None) -> SparsityMasks:
        """All-``True`` masks over the prunable weights."""
        return cls({n: torch.ones_like(w, dtype=torch.bool)
                    for n, w in prunable_weights(model, include, exclude).items()})

    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero the masked-out weights of ``model`` in place (under ``no_grad``);
        returns ``model``."""
        inner = _unwrap(model)
        with torch.no_grad():
            for name, mask in self.masks.items():
                try:
                    p = inner.get_parameter(name)
                except AttributeError as e:
                    raise KeyError(f"model has no parameter {name!r} to mask") from e
                if p.shape != mask.shape:
                    raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the "
                                     f"parameter {tuple(p.shape)}")
                if mask.device != p.device:
                    mask = self.masks[name] = mask.to(p.device)
                p.masked_fill_(~mask, 0)
        return model

    def num_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def numel(self) -> int:
        return sum(m.numel() for m in self.masks.values())

    def density(self) -> float:
        """Kept fraction of the masked weights (1.0 when there are none)."""
        n = self.numel()
        return self.num_kept() / n if n else 1.0

    def num_params(self, model: nn.Module) -> int:
        """Unpruned parameters of ``model``: all of them minus the masked-out ones."""
        return _dense_params(model) - (self.numel() - self.num_kept())

    def state_dict(self) -> dict[str, Tensor]:
        """CPU copies of the masks (for checkpoints; ``SparsityMasks(sd)`` restores)."""
        return {n: m.detach().cpu().clone() for n, m in self.masks.items()}

    def __getitem__(self, name: str) -> Tensor:
        return self.masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __repr__(self) -> str:
        return (f"SparsityMasks({len(self)} tensors, kept {self.num_kept():,} of "
                f"{self.numel():,}, density {self.density():.4f})")


# -- iterative magnitude pruning -------------------------------------------------------------
def pruning_schedule(total: int, keep: int, rounds: int,
                     schedule: str = "geometric") -> list[int]:
    """Weights kept after each of ``rounds`` pruning rounds, from ``total``
    down to exactly ``keep`` (non-increasing).

    ``"geometric"``: density ``d**(i/R)`` after round ``i`` of ``R`` for a target
    density ``d = keep/total`` (each round keeps the same fraction of the
    previous one). ``"cubic"``: Zhu & Gupta (2017)'s ``d + (1 - d)(1 - i/R)**3``,
    which prunes fast first and slowly near the target.
    """
    _check_int("total", total, 1)
    _check_int("keep", keep, 1, total)
    _check_int("rounds", rounds, 1)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    d = keep / total
    out, prev = [], total
    for i in range(1, rounds + 1):
        t = i / rounds
        dens = d**t if schedule == "geometric" else d + (1 - d) * (1 - t) ** 3
        k = keep if i == rounds else min(prev, max(keep, round(total * dens)))
        out.append(k)
        prev = k
    return out


def _weights_by_name(model: nn.Module, shapes: Mapping[str, torch.Size],
                     what: str) -> dict[str, Tensor]:
    """The named weights of ``model``, checked against the expected shapes."""
    inner = _unwrap(model)
    try:
        weights = {n: inner.get_parameter(n) for n in shapes}
    except AttributeError as e:
        raise ValueError(f"the model's prunable weights differ from those this {what} was "
                         f"built for ({e})") from None
    for n, w in weights.items():
        if w.shape != shapes[n]:
            raise ValueError(f"the model's prunable weights differ from those this {what} "
                             f"was built for ({n}: {tuple(w.shape)}, expected "
                             f"{tuple(shapes[n])})")
    return weights


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}


class IterativeMagnitudePruning:
    """Iterative global magnitude pruning, with rewinding or fine-tuning.

    The recipe (``R = rounds``; ``train`` is the user's loop, calling
    ``imp.after_step(model)`` after each ``optimizer.step()``)::

        imp = IterativeMagnitudePruning(model, keep, rounds=R)  # saves the init
        # optionally, after k steps of the first training: imp.save_rewind_state(model)
        train(model)                       # dense
        while not imp.done:
            imp.prune(model)               # to imp.schedule[round]; rewinds if enabled
            train(model)                   # fresh optimizer; pruned weights stay zero

    Each ``prune`` keeps, among the weights still alive, the
    ``schedule[round]`` of largest magnitude over all pruned layers (a weight
    once pruned never returns). With ``rewind=True`` the whole model state
    (parameters and buffers) is then reset to the rewind state and the masks
    applied: the surviving weights restart from their saved values, as in
    Frankle & Carbin 2019 (state saved at initialization, the default) or
    Frankle et al. 2020 (``save_rewind_state`` after ``k`` training steps).
    With ``rewind=False`` the trained values are kept and training continues:
    fine-tuning, or Zhu & Gupta (2017)'s gradual pruning when rounds are
    spaced a few hundred steps apart with ``schedule="cubic"``.

    Args:
        model: the dense model (wrappers allowed, see the module docstring).
        keep: prunable weights left after the last round
            (see :func:`target_keep_for_param_ratio`).
        rounds: number of pruning rounds, >= 1.
        include, exclude: which layers are pruned (``factorize``'s patterns).
        rewind: rewind to the saved state after each pruning round.
        schedule: ``"geometric"`` or ``"cubic"`` (:func:`pruning_schedule`).
        scope: ``"global"`` ranking over all pruned layers, or ``"layer"``: every
            layer keeps the same fraction.
    """

    def __init__(self, model: nn.Module, keep: int, rounds: int, include: Patterns = None,
                 exclude: Patterns = None, rewind: bool = True,
                 schedule: str = "geometric", scope: str = "global") -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got scope={scope!r}")
        self.scope = scope
        self.include, self.exclude = include, exclude
        self.masks = SparsityMasks.dense(model, include, exclude)
        if not len(self.masks):
            raise ValueError("no prunable weight selected")
        self.total = self.masks.numel()
        self.keep = keep
        self.schedule = pruning_schedule(self.total, keep, rounds, schedule)
        self.rounds = rounds
        self.rewind = bool(rewind)
        self.round = 0
        self._rewind_state = _snapshot(model) if self.rewind else None

    @property
    def done(self) -> bool:
        return self.round >= self.rounds

    @property
    def current_keep(self) -> int:
        """Prunable weights alive now."""
        return self.total if self.round == 0 else self.schedule[self.round - 1]

    def save_rewind_state(self, model: nn.Module) -> None:
        """Remember the current parameters and buffers as the rewind point
        (e.g. after ``k`` steps of the first training, for late rewinding)."""
        if not self.rewind:
            raise RuntimeError("save_rewind_state needs rewind=True")
        self._rewind_state = _snapshot(model)

    def prune(self, model: nn.Module) -> int:
        """Run the next pruning round on ``model`` in place (then rewind, when
        enabled); returns the number of prunable weights kept."""
        if self.done:
            raise RuntimeError(f"all {self.rounds} pruning rounds are done")
        weights = _weights_by_name(model, {n: m.shape for n, m in self.masks.masks.items()},
                                   "pruner")
        target = self.schedule[self.round]
        # pruned weights score -1, below every alive |w| >= 0: they never return
        scores = {n: w.detach().abs().masked_fill(~self.masks[n].to(w.device), -1.0)
                  for n, w in weights.items()}
        pick = _topk_masks if self.scope == "global" else _layerwise_topk
        self.masks = SparsityMasks(pick(scores, target))
        self.round += 1
        if self.rewind:
            assert self._rewind_state is not None
            _unwrap(model).load_state_dict(self._rewind_state)
        self.masks.apply_(model)
        return target

    def after_step(self, model: nn.Module) -> None:
        """Re-zero the pruned weights; call after every ``optimizer.step()``."""
        self.masks.apply_(model)

    __call__ = after_step

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "schedule": list(self.schedule),
                "masks": self.masks.state_dict(),
                "rewind_state": None if self._rewind_state is None else
                {k: v.cpu().clone() for k, v in self._rewind_state.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["schedule"]) != self.schedule:
            raise ValueError(f"saved schedule {state['schedule']} differs from this pruner's "
                             f"{self.schedule}")
        self.round = int(state["round"])
        self.masks = SparsityMasks(state["masks"])
        if state.get("rewind_state") is not None:
            self._rewind_state = dict(state["rewind_state"])


# -- iterative hard thresholding ----------------------------------------------------------------
class IterativeHardThresholding:
    """Sparse training by iterative hard thresholding (METHODS.md [IHT], *A
    Recovery Guarantee for Sparse Neural Networks*).

    The recipe: each optimizer step is an ordinary dense gradient step on every
    weight (zeros included); ``after_step`` then applies ``H_s``: keep the
    ``keep`` (= s) weights of largest magnitude over all pruned layers, zero
    the rest. During the first ``warmup_steps`` steps nothing is thresholded
    (dense warm-up); from step ``warmup_steps + 1`` on, every step ends with
    exactly ``keep`` prunable weights alive. Call ``threshold_(model)`` before
    training to start from ``H_s`` of the initialization.

    Args:
        model: the model (wrappers allowed, see the module docstring).
        keep: s, the prunable weights kept (:func:`target_keep_for_param_ratio`).
        include, exclude: which layers are thresholded (``factorize``'s patterns).
        warmup_steps: dense steps before thresholding begins, >= 0.
        scope: ``"global"`` (top-s over all layers together) or ``"layer"`` (each
            layer keeps the same fraction). From a fresh initialization global
            ranking can empty a layer whose init scale is small (e.g. a wide first
            layer), so ``"layer"`` is the safer choice for training from scratch.
    """

    def __init__(self, model: nn.Module, keep: int, include: Patterns = None,
                 exclude: Patterns = None, warmup_steps: int = 0,
                 scope: str = "global") -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got scope={scope!r}")
        self.scope = scope
        self.include, self.exclude = include, exclude
        weights = prunable_weights(model, include, exclude)
        if not weights:
            raise ValueError("no prunable weight selected")
        self.names = list(weights)
        self.shapes = {n: w.shape for n, w in weights.items()}
        self.total = sum(w.numel() for w in weights.values())
        self.keep = _check_int("keep", keep, 1, self.total)
        self.warmup_steps = _check_int("warmup_steps", warmup_steps, 0)
        self.steps = 0
        self.masks: SparsityMasks | None = None  # the support after the last threshold

    @property
    def density(self) -> float:
        return self.keep / self.total

    @property
    def active(self) -> bool:
        """Whether the next ``after_step`` thresholds."""
        return self.steps >= self.warmup_steps

    def threshold_(self, model: nn.Module) -> SparsityMasks:
        """Apply ``H_s`` to ``model`` now, in place; returns the new support."""
        weights = _weights_by_name(model, self.shapes, "thresholder")
        self.masks = SparsityMasks(magnitude_masks(weights, self.keep, self.scope))
        self.masks.apply_(model)
        return self.masks

    def after_step(self, model: nn.Module) -> bool:
        """Count one optimizer step and, past the warm-up, hard-threshold;
        returns whether it thresholded."""
        self.steps += 1
        if self.steps <= self.warmup_steps:
            return False
        self.threshold_(model)
        return True

    __call__ = after_step

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "keep": self.keep,
                "masks": None if self.masks is None else self.masks.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["keep"]) != self.keep:
            raise ValueError(f"saved keep={state['keep']} differs from this thresholder's "
                             f"keep={self.keep}")
        self.steps = int(state["steps"])
        self.masks = None if state.get("masks") is None else SparsityMasks(state["masks"])
