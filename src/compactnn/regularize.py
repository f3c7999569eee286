"""Frobenius decay [FNL, Sec. 3.2] and optimizer parameter groups for
factorized models.

Weight decay on the factors, ``lam/2 (|U|^2 + |V|^2)``, upper-bounds
``lam |UV|_*`` and so penalizes the nuclear norm of the product. Frobenius
decay penalizes the product itself, ``lam/2 |U V|_F^2``, like weight decay on
the dense layer. It is computed from two ``r x r`` Gram matrices,
``|U V|_F^2 = trace((U^T U)(V V^T))``, never from ``U V``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_float, check_module
from compactnn.lowrank.base import LowRankLayer

__all__ = ["frobenius_norm_sq", "frobenius_decay", "lowrank_layers", "param_groups"]


def lowrank_layers(model: nn.Module) -> Iterator[tuple[str, LowRankLayer]]:
    """``(name, layer)`` for every low-rank layer in ``model`` (DDP and
    ``torch.compile`` wrappers included, as they are ordinary modules)."""
    check_module("model", model)
    for name, module in model.named_modules():
        if isinstance(module, LowRankLayer):
            yield name, module


def frobenius_norm_sq(layer: LowRankLayer) -> Tensor:
    """``|U V|_F^2`` summed over the layer's groups, as
    ``trace((U^T U)(V V^T))`` from two ``r x r`` Gram matrices [FNL, Eq. 4].

    Half-precision factors are computed, and the result returned, in float32: the
    squared norm of an ordinary layer easily exceeds float16's largest value (65504)."""
    u, v = layer.factor_matrices()
    if u.dtype in (torch.float16, torch.bfloat16):
        u, v = u.float(), v.float()
    gram_u = u.transpose(-2, -1) @ u  # (G, r, r)
    gram_v = v @ v.transpose(-2, -1)  # (G, r, r)
    return (gram_u * gram_v).sum()  # trace(A B) = sum(A * B^T), both symmetric


def frobenius_decay(model: nn.Module, coef: float) -> Tensor:
    """The loss term ``coef/2 * sum_layers |U V|_F^2`` [FNL, Sec. 3.2].

    Add it to the training loss; its gradients are ``coef U V V^T`` and
    ``coef U^T U V``. A plain function of the parameters, so it works under DDP
    (call it on the wrapped or unwrapped model) and ``torch.compile``. Use it
    with zero weight decay on the factors (see :func:`param_groups`); [FNL]
    sets ``coef`` to the weight decay the dense model would use. The term is float32
    when the factors are float16/bfloat16 (see :func:`frobenius_norm_sq`).
    """
    check_module("model", model)
    # NaN or infinity would silently poison the loss (inf * 0 is NaN)
    check_float("coef", coef, 0.0)
    total: Tensor | None = None
    for _, layer in lowrank_layers(model):
        term = frobenius_norm_sq(layer)
        total = term if total is None else total + term
    if total is None:
        # almost always a mistake: the dense model was passed instead of the factorized one
        warnings.warn(f"frobenius_decay: the model ({type(model).__name__}) has no low-rank "
                      "layer, so the decay is 0; pass the factorized model "
                      "(compactnn.factorize) or use weight decay", UserWarning, stacklevel=2)
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return 0.5 * coef * total


def param_groups(
    model: nn.Module,
    weight_decay: float,
    factor_weight_decay: float = 0.0,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: low-rank factors ``U``/``V`` with
    ``factor_weight_decay`` (0 by default, as with Frobenius decay in [FNL]) and
    every other trainable parameter with ``weight_decay``.

    Pass the result to any ``torch.optim`` optimizer; ``group_options`` (e.g.
    ``lr``) are added to both groups.
    """
    check_module("model", model)
    check_float("weight_decay", weight_decay, 0.0)
    check_float("factor_weight_decay", factor_weight_decay, 0.0)
    factor_ids: set[int] = set()
    for _, layer in lowrank_layers(model):
        factor_ids.update({id(layer.U), id(layer.V)})
    factors, others, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (factors if id(p) in factor_ids else others).append(p)
    groups = [{"params": others, "weight_decay": weight_decay, **group_options}]
    if factors:
        groups.append({"params": factors, "weight_decay": factor_weight_decay,
                       **group_options})
    return groups
