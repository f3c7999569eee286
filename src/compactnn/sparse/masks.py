"""Which weights the sparse baselines prune, how many to keep for a parameter
budget, and the masks that keep them.

Budgets count parameters the way ``factorize`` does (``model.parameters()``,
buffers not counted); masks keep the ``keep`` weights of largest score over
all pruned tensors together, or the same fraction in each.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float, check_int
from compactnn._modules import unwrap
from compactnn.surgery.select import Patterns, select_layers

__all__ = [
    "SCOPES",
    "SparsityMasks",
    "dense_params",
    "magnitude_masks",
    "prunable_weights",
    "score_masks",
    "target_keep_for_param_ratio",
    "target_keep_for_params",
    "weights_by_name",
]

SCOPES = ("global", "layer")


def prunable_weights(model: nn.Module, include: Patterns = None,
                     exclude: Patterns = None) -> dict[str, nn.Parameter]:
    """The ``weight`` parameters of the ``nn.Linear``/``nn.Conv2d`` modules chosen
    by ``include``/``exclude`` (``factorize``'s semantics), keyed by parameter
    name (``"layer1.0.conv1.weight"``), in module order; a weight shared by
    several modules appears once."""
    model = unwrap(model)
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name in select_layers(model, include, exclude, warn=False):
        w = model.get_submodule(name).weight
        if id(w) not in seen:
            seen.add(id(w))
            out[f"{name}.weight"] = w
    return out


def dense_params(model: nn.Module) -> int:
    """Entries of ``model``'s distinct parameters (wrappers looked through)."""
    return sum(p.numel() for p in unwrap(model).parameters())


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
    total = dense_params(model)
    check_int("num_params", num_params, 1)
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
    check_float("param_ratio", param_ratio, 0.0, 1.0, min_inclusive=False)
    total = dense_params(model)
    # the small slack absorbs float error in ratios computed as after / before
    budget = math.floor(param_ratio * total + 1e-6)
    if budget < 1:
        raise ValueError(f"param_ratio={param_ratio} leaves no parameter of {total}")
    try:
        return target_keep_for_params(model, budget, include, exclude)
    except ValueError as e:
        raise ValueError(f"param_ratio={param_ratio} ({budget} of {total} parameters): "
                         f"{e}") from None



def _topk_masks(scores: Mapping[str, Tensor], keep: int) -> dict[str, Tensor]:
    """Boolean masks keeping the ``keep`` largest scores over all tensors."""
    if not scores:
        raise ValueError("no weights given")
    sizes = [s.numel() for s in scores.values()]
    total = sum(sizes)
    check_int("keep", keep, 0, total)
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
    check_int("keep", keep, 0, total)
    quotas = {n: keep * size / total for n, size in sizes.items()}
    alloc = {n: int(q) for n, q in quotas.items()}
    for n in sorted(quotas, key=lambda n: alloc[n] - quotas[n])[:keep - sum(alloc.values())]:
        alloc[n] += 1
    return {n: _topk_masks({n: sc}, alloc[n])[n] for n, sc in scores.items()}


def score_masks(scores: Mapping[str, Tensor], keep: int, scope: str = "global"
                ) -> dict[str, Tensor]:
    """Boolean masks (``True`` = kept) keeping exactly ``keep`` of the largest
    ``scores``: over all tensors together (``scope="global"``; ties broken by
    ``torch.topk``) or the same fraction in every tensor (``"layer"``)."""
    check_choice("scope", scope, SCOPES)
    return _topk_masks(scores, keep) if scope == "global" else _layerwise_topk(scores, keep)


def magnitude_masks(weights: Mapping[str, Tensor], keep: int,
                    scope: str = "global") -> dict[str, Tensor]:
    """Masks keeping ``keep`` weights of largest ``|w|``: over all tensors together
    (``scope="global"``) or the same fraction in every tensor (``"layer"``), which
    keeps a layer whose weights are small at initialization from being wiped out."""
    check_choice("scope", scope, SCOPES)
    return score_masks({n: w.detach().abs() for n, w in weights.items()}, keep, scope)

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
        inner = unwrap(model)
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
        return dense_params(model) - (self.numel() - self.num_kept())

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



def weights_by_name(model: nn.Module, shapes: Mapping[str, torch.Size],
                     what: str) -> dict[str, Tensor]:
    """The named weights of ``model``, checked against the expected shapes."""
    inner = unwrap(model)
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

