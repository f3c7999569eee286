"""Depth-aware initialization: a weight scale that depends on each layer's depth
and on the total depth, so that the variance of the pre-activations grows from
the first layer to the last along a chosen profile instead of staying constant
[DAI].

The schedule (ours: the paper's exact formula was not available to us; this
follows its description -- depth and total depth enter the scale, the variance
increases from the first to the last layer, flexibly). For ``L`` weight layers
``l = 0 .. L-1`` and ``t_l = l / (L - 1)``:

    v_l = 1 + (ratio - 1) * t_l ** power          (v_0 = 1, v_{L-1} = ratio)
    Var(W_l) = gain^2 * (v_l / v_{l-1}) / fan_in_l     (v_{-1} = 1)

``gain`` is ``torch.nn.init.calculate_gain(nonlinearity)`` (sqrt 2 for ReLU).
Biases are set to zero. In a plain ReLU network with zero biases the
pre-activation variance then obeys ``q_l = fan_in Var(W_l) E[x_{l-1}^2]`` and
``E[x^2] = q / 2``, hence ``q_l = (v_l / v_{l-1}) q_{l-1}`` and

    q_l = v_l * q_0,

so ``v`` *is* the profile of pre-activation variances (relative to the first
layer). ``ratio=1`` is Kaiming/He normal initialization (fan-in) exactly;
``ratio > 1`` lets the variance grow with depth, ``power`` shapes where the
growth happens (1: evenly, > 1: late, < 1: early).

A low-rank layer (``U @ V``) gets balanced Gaussian factors whose *product* has
the entry variance above (``r Var U Var V = Var(W)``, ``m Var U = n Var V``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from compactnn._checks import check_choice, check_float, check_int, check_module
from compactnn._modules import unwrap
from compactnn.lowrank import LowRankLayer, register_initializer

__all__ = ["depth_aware_", "depth_aware_layer_", "depth_aware_schedule", "weight_layers"]

NONLINEARITIES = ("relu", "leaky_relu", "tanh", "sigmoid", "linear", "selu")


def depth_aware_schedule(num_layers: int, ratio: float = 2.0, power: float = 1.0
                         ) -> list[float]:
    """The target pre-activation variance profile ``v_0 .. v_{L-1}`` (``v_0 = 1``,
    ``v_{L-1} = ratio``; one layer: ``[1.0]``)."""
    n = check_int("num_layers", num_layers, minimum=1)
    ratio = check_float("ratio", ratio, minimum=0.0, min_inclusive=False)
    power = check_float("power", power, minimum=0.0, min_inclusive=False)
    if n == 1:
        return [1.0]
    return [1.0 + (ratio - 1.0) * (i / (n - 1)) ** power for i in range(n)]


def _is_weight_layer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear | nn.Conv2d | LowRankLayer)


def weight_layers(model: nn.Module, include: str | Sequence[str] | None = None,
                  exclude: str | Sequence[str] | None = None) -> list[str]:
    """Names of the Linear / Conv2d / low-rank layers that count as depth, in
    registration order (the forward order of sequential models: check it for
    others). ``include`` / ``exclude``: a regex on whole names or a list of names."""
    names = [n for n, m in model.named_modules() if n and _is_weight_layer(m)]
    # a low-rank layer's own submodules (if any) are not separate depth
    names = [n for n in names if not any(n.startswith(p + ".") for p in names)]

    def matcher(pat, arg):
        if isinstance(pat, str):
            rx = re.compile(pat)
            return lambda n: rx.fullmatch(n) is not None
        if isinstance(pat, Sequence) and all(isinstance(p, str) for p in pat):
            return lambda n: any(n == p or n.endswith("." + p) for p in pat)
        raise TypeError(f"{arg} must be a regex string or a list of names, got {pat!r}")

    if include is not None:
        keep = matcher(include, "include")
        names = [n for n in names if keep(n)]
    if exclude is not None:
        drop = matcher(exclude, "exclude")
        names = [n for n in names if not drop(n)]
    if not names:
        raise ValueError("no Linear, Conv2d or low-rank layer selected (check include/exclude)")
    return names


def _fan_in(m: nn.Module) -> int:
    if isinstance(m, LowRankLayer):
        return m.dense_fan_in()
    return m.weight[0].numel()  # in_features, or in_channels/groups * kh * kw


@torch.no_grad()
def _set(m: nn.Module, var: float, generator: torch.Generator | None) -> None:
    if isinstance(m, LowRankLayer):
        g, rows, cols = m.matrix_shape
        r = m.rank // g
        std_u = (var * cols / (r * rows)) ** 0.25
        std_v = (var * rows / (r * cols)) ** 0.25
        ref = m.U
        u = torch.randn(g, rows, r, generator=generator, dtype=ref.dtype) * std_u
        v = torch.randn(g, r, cols, generator=generator, dtype=ref.dtype) * std_v
        m.set_factor_matrices(u.to(ref.device), v.to(ref.device))
    else:
        w = m.weight
        w.copy_(torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
                * math.sqrt(var))
    if getattr(m, "bias", None) is not None:
        m.bias.zero_()


def _variances(fans: list[int], ratio: float, power: float, nonlinearity: str) -> list[float]:
    v = depth_aware_schedule(len(fans), ratio, power)
    gain2 = nn.init.calculate_gain(nonlinearity) ** 2
    prev = [1.0, *v[:-1]]
    return [gain2 * (vi / pi) / f for vi, pi, f in zip(v, prev, fans, strict=True)]


def depth_aware_(model: nn.Module, *, ratio: float = 2.0, power: float = 1.0,
                 nonlinearity: str = "relu", include: str | Sequence[str] | None = None,
                 exclude: str | Sequence[str] | None = None,
                 generator: torch.Generator | None = None) -> dict[str, float]:
    """Initialize every selected weight layer of ``model`` in place with the
    depth-aware schedule (module docstring); returns ``{layer name: Var(W)}``.

    Layers are counted in registration order; ``include`` / ``exclude`` choose
    them (default: every Linear, Conv2d and low-rank layer). All arguments are
    checked before any weight changes.
    """
    check_module("model", model)
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    inner = unwrap(model)
    names = weight_layers(inner, include, exclude)
    mods = [inner.get_submodule(n) for n in names]
    variances = _variances([_fan_in(m) for m in mods], ratio, power, nonlinearity)
    for m, var in zip(mods, variances, strict=True):
        _set(m, var, generator)
    return dict(zip(names, variances, strict=True))


@register_initializer("depth_aware")
@torch.no_grad()
def depth_aware_layer_(layer: nn.Module, weight: Any = None, bias: Any = None, *,
                       index: int, num_layers: int, ratio: float = 2.0, power: float = 1.0,
                       nonlinearity: str = "relu",
                       generator: torch.Generator | None = None) -> float:
    """One layer's share of the schedule: layer ``index`` of ``num_layers``.

    Registered as the initializer ``"depth_aware"`` (``weight`` / ``bias``, which
    the registry passes, are ignored: the scheme is data-free; the layer's bias
    is zeroed). For a low-rank layer it sets the factors so that their product
    has the scheduled variance. Returns the weight (or product) variance set.
    """
    if not _is_weight_layer(layer):
        raise TypeError(f"layer must be nn.Linear, nn.Conv2d or a low-rank layer, got "
                        f"{type(layer).__name__}")
    n = check_int("num_layers", num_layers, minimum=1)
    i = check_int("index", index, minimum=0, maximum=n - 1)
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    v = depth_aware_schedule(n, ratio, power)
    prev = 1.0 if i == 0 else v[i - 1]
    var = nn.init.calculate_gain(nonlinearity) ** 2 * (v[i] / prev) / _fan_in(layer)
    _set(layer, var, generator)
    return var
