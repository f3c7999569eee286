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
from compactnn.lowrank.conv1d import LowRankConv1d
from compactnn.lowrank.linear import LowRankLinear

__all__ = ["FACTORIZABLE", "dense_matrix", "dense_matrix_shape", "is_factorizable",
           "is_linear_like", "is_transposed_linear", "linear_view", "to_lowrank"]

#: The dense module types with a low-rank counterpart (exact types: a subclass
#: may change ``forward`` and is not replaced).
FACTORIZABLE: dict[type[nn.Module], type[LowRankLayer]] = {nn.Linear: LowRankLinear,
                                                           nn.Conv2d: LowRankConv2d,
                                                           nn.Conv1d: LowRankConv1d}


def is_transposed_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face ``Conv1D`` (GPT-2 and its relatives): a
    linear map ``y = x W + b`` whose weight is stored transposed, ``(in, out)``.
    Recognised by name and layout so that transformers is not imported here."""
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    return (type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int)
            and isinstance(w, Tensor) and w.dim() == 2 and w.shape[1] == module.nf
            and (b is None or (isinstance(b, Tensor) and tuple(b.shape) == (module.nf,))))


def is_linear_like(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a Hugging Face ``Conv1D``: a matrix applied to the last
    dimension of its input, whatever the leading dimensions (tokens are rows)."""
    return type(module) is nn.Linear or is_transposed_linear(module)


def is_factorizable(module: nn.Module) -> bool:
    """Whether ``module`` is exactly an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``,
    or a Hugging Face ``Conv1D``."""
    return type(module) in FACTORIZABLE or is_transposed_linear(module)


def linear_view(module: nn.Module) -> nn.Module:
    """``module`` itself, or for a Hugging Face ``Conv1D`` an ``nn.Linear`` computing the
    same map whose weight is a transposed view of the original (no copy)."""
    if not is_transposed_linear(module):
        return module
    w = module.weight
    lin = nn.Linear(w.shape[0], w.shape[1], bias=module.bias is not None,
                    device="meta", dtype=w.dtype)
    lin.weight = nn.Parameter(w.detach().t(), requires_grad=w.requires_grad)
    if module.bias is not None:
        lin.bias = nn.Parameter(module.bias.detach(), requires_grad=module.bias.requires_grad)
    lin.train(module.training)
    return lin


def _check(module: nn.Module, scheme: str) -> None:
    if not is_factorizable(module):
        raise TypeError(f"only nn.Linear, nn.Conv1d, nn.Conv2d and Hugging Face Conv1D have a "
                        f"low-rank form, got {type(module).__name__}")
    if scheme not in CONV_SCHEMES:
        raise ValueError(f"scheme must be one of {CONV_SCHEMES}, got scheme={scheme!r}")


def dense_matrix_shape(module: nn.Module, scheme: str = "channel") -> tuple[int, int, int]:
    """``(G, m, n)``: the matrix view of ``module``'s weight, as the low-rank layer
    replacing it (with conv ``scheme``) would see it."""
    _check(module, scheme)
    module = linear_view(module)
    if isinstance(module, nn.Linear):
        return (1, module.out_features, module.in_features)
    if isinstance(module, nn.Conv1d):  # the channel scheme, whatever ``scheme`` says
        return conv_matrix_shape(module.out_channels, module.in_channels,
                                 (1, module.kernel_size[0]), module.groups, "channel")
    return conv_matrix_shape(module.out_channels, module.in_channels, module.kernel_size,
                             module.groups, scheme)


def dense_matrix(module: nn.Module, scheme: str = "channel") -> Tensor:
    """``module``'s weight (detached) as its ``(G, m, n)`` matrix view."""
    _check(module, scheme)
    module = linear_view(module)
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        return w.unsqueeze(0)
    if isinstance(module, nn.Conv1d):
        return conv_weight_to_matrix(w.unsqueeze(2), module.groups, "channel")
    return conv_weight_to_matrix(w, module.groups, scheme)


def to_lowrank(module: nn.Module, rank: int | float, init: str | Callable[..., Any] = "spectral",
               scheme: str = "channel", **init_kwargs: Any) -> LowRankLayer:
    """The low-rank counterpart of ``module`` (``from_dense``); ``scheme`` applies to
    convolutions. A Hugging Face ``Conv1D`` becomes a :class:`LowRankLinear` computing
    the same map (its weight read transposed)."""
    _check(module, scheme)
    module = linear_view(module)
    if isinstance(module, nn.Conv2d):
        return LowRankConv2d.from_dense(module, rank, init=init, scheme=scheme, **init_kwargs)
    if isinstance(module, nn.Conv1d):
        return LowRankConv1d.from_dense(module, rank, init=init, **init_kwargs)
    return LowRankLinear.from_dense(module, rank, init=init, **init_kwargs)
