"""The dense modules the low-rank layers replace, seen through the same matrix
view: what model surgery needs to cost, rank and convert a dense layer without
re-deriving any layout itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from compactnn.lowrank.base import LowRankLayer
from compactnn.lowrank.conv import (
    CONV_SCHEMES,
    LowRankConv2d,
    conv_matrix_shape,
    conv_weight_to_matrix,
)
from compactnn.lowrank.linear import LowRankLinear

__all__ = ["FACTORIZABLE", "dense_matrix", "dense_matrix_shape", "is_factorizable",
           "to_lowrank"]

#: The dense module types with a low-rank counterpart (exact types: a subclass
#: may change ``forward`` and is not replaced).
FACTORIZABLE: dict[type[nn.Module], type[LowRankLayer]] = {nn.Linear: LowRankLinear,
                                                           nn.Conv2d: LowRankConv2d}


def is_factorizable(module: nn.Module) -> bool:
    """Whether ``module`` is exactly an ``nn.Linear`` or ``nn.Conv2d``."""
    return type(module) in FACTORIZABLE


def _check(module: nn.Module, scheme: str) -> None:
    if not is_factorizable(module):
        raise TypeError(f"only nn.Linear and nn.Conv2d have a low-rank form, got "
                        f"{type(module).__name__}")
    if scheme not in CONV_SCHEMES:
        raise ValueError(f"scheme must be one of {CONV_SCHEMES}, got scheme={scheme!r}")


def dense_matrix_shape(module: nn.Module, scheme: str = "channel") -> tuple[int, int, int]:
    """``(G, m, n)``: the matrix view of ``module``'s weight, as the low-rank layer
    replacing it (with conv ``scheme``) would see it."""
    _check(module, scheme)
    if isinstance(module, nn.Linear):
        return (1, module.out_features, module.in_features)
    return conv_matrix_shape(module.out_channels, module.in_channels, module.kernel_size,
                             module.groups, scheme)


def dense_matrix(module: nn.Module, scheme: str = "channel") -> Tensor:
    """``module``'s weight (detached) as its ``(G, m, n)`` matrix view."""
    _check(module, scheme)
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w.unsqueeze(0)
    return conv_weight_to_matrix(w, module.groups, scheme)


def to_lowrank(module: nn.Module, rank: int | float, init: str | Callable[..., Any] = "spectral",
               scheme: str = "channel", **init_kwargs: Any) -> LowRankLayer:
    """The low-rank counterpart of ``module`` (``from_dense``); ``scheme`` applies to
    convolutions."""
    _check(module, scheme)
    if isinstance(module, nn.Conv2d):
        return LowRankConv2d.from_dense(module, rank, init=init, scheme=scheme, **init_kwargs)
    return LowRankLinear.from_dense(module, rank, init=init, **init_kwargs)
