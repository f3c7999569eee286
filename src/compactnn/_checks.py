"""Argument validators shared by every public entry point.

Each returns the checked (and where harmless, normalised) value, or raises a
``TypeError`` for a wrong type and a ``ValueError`` for a wrong value; the
message always names the argument and the value it got, so a user can find the
offending call without a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_finite",
    "check_float",
    "check_int",
    "check_module",
    "check_tensor",
]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_bool(name: str, value: Any) -> bool:
    """``value`` must be a real ``bool`` (``"no"`` or ``1`` are refused: both are truthy
    or ambiguous, and silently reading them as flags hides typos)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_show(value)} ({type(value).__name__})")
    return value


def check_int(name: str, value: Any, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """An ``int`` (not a ``bool``) in ``[minimum, maximum]``; numpy/torch integer
    scalars are accepted and returned as ``int``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Tensor) and value.ndim == 0 and not value.is_floating_point() \
                and value.dtype != torch.bool:
            value = int(value)
        elif type(value).__module__ == "numpy" and hasattr(value, "dtype") \
                and value.dtype.kind in "iu":
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int, got {_show(value)} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {name}={value}")
    return int(value)


def check_float(name: str, value: Any, minimum: float | None = None,
                maximum: float | None = None, *, min_inclusive: bool = True,
                max_inclusive: bool = True, finite: bool = True) -> float:
    """A real number (``int`` or ``float``, not ``bool`` or ``str``) in the given range.

    ``finite=True`` (the default) refuses NaN and infinities: every coefficient,
    learning rate and scale in this library is meaningless at infinity.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, Tensor) and value.ndim == 0 and value.dtype != torch.bool:
            value = float(value)
        elif type(value).__module__ == "numpy" and hasattr(value, "dtype") \
                and value.dtype.kind in "iuf":
            value = float(value)
        else:
            raise TypeError(f"{name} must be a number, got {_show(value)} "
                            f"({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be finite, got {name}={value}")
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {minimum}, got {name}={value}")
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        op = "<=" if max_inclusive else "<"
        raise ValueError(f"{name} must be {op} {maximum}, got {name}={value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # unhashable or incomparable value
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; "
                         f"got {_show(value)}")
    return value


def check_finite(name: str, tensor: Tensor) -> Tensor:
    """Refuse a tensor holding NaN or infinity."""
    if tensor.is_floating_point() or tensor.is_complex():
        if tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return tensor


def check_tensor(name: str, value: Any, *, shape: Sequence[int | None] | None = None,
                 ndim: int | Sequence[int] | None = None, floating: bool = False,
                 finite: bool = True, allow_meta: bool = False) -> Tensor:
    """A ``torch.Tensor`` with the given shape (``None`` entries match any size) or
    number of dimensions, optionally floating point and finite. Meta tensors hold
    no values and are refused unless ``allow_meta``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device.type == "meta" and not allow_meta:
        raise ValueError(f"{name} is a meta tensor (it holds no values); "
                         "materialize it first (e.g. module.to_empty(device='cpu'))")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            want = " or ".join(map(str, allowed))
            raise ValueError(f"{name} must have {want} dimensions, got shape "
                             f"{tuple(value.shape)}")
    if shape is not None:
        ok = value.ndim == len(shape) and all(
            s is None or s == d for s, d in zip(shape, value.shape, strict=True))
        if not ok:
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if finite:
        check_finite(name, value)
    return value


def check_module(name: str, value: Any, kind: type | tuple[type, ...] = torch.nn.Module) -> Any:
    """``value`` must be an instance of ``kind`` (an ``nn.Module`` by default)."""
    if not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        want = " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"{name} must be a {want}, got {type(value).__name__}")
    return value
