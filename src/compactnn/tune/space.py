"""Declarative search spaces: what each hyper-parameter of a method may take.

A search space is a mapping ``name -> distribution``, one of

- :class:`LogUniform` ``(low, high)``: ``exp(U(log low, log high))``, for scales such as
  learning rates and regularization weights, where a factor matters more than a
  difference;
- :class:`Uniform` ``(low, high)``;
- :class:`IntRange` ``(low, high, log=False)``: integers in ``[low, high]`` (log-spaced
  with ``log=True``, e.g. batch sizes);
- :class:`Categorical` ``(choices)``: one of a few values (str, int, float, bool).

A space is plain data: :func:`space_to_dict` / :func:`space_from_dict` give a JSON round
trip (the tuner records every space it searched), and :func:`describe` one line per
hyper-parameter for reports. :func:`suggest` draws a configuration from an Optuna trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compactnn._checks import check_bool, check_float, check_int

__all__ = ["Categorical", "IntRange", "LogUniform", "Param", "Uniform", "check_config",
           "check_space", "describe", "space_from_dict", "space_to_dict", "suggest"]


def _bounds(cls: str, low: Any, high: Any, positive: bool = False) -> tuple[float, float]:
    lo = check_float(f"{cls}.low", low, 0.0 if positive else None, min_inclusive=not positive)
    hi = check_float(f"{cls}.high", high)
    if hi <= lo:
        raise ValueError(f"{cls}: high must be > low, got low={lo}, high={hi}")
    return lo, hi


@dataclass(frozen=True)
class Uniform:
    """A float, uniform between ``low`` and ``high``."""

    low: float
    high: float

    _log = False  # a class constant, not a field

    def __post_init__(self) -> None:
        lo, hi = _bounds(type(self).__name__, self.low, self.high, positive=self._log)
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)

    def suggest(self, trial: Any, name: str) -> float:
        return float(trial.suggest_float(name, self.low, self.high, log=self._log))

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and self.low <= value <= self.high)

    def describe(self) -> str:
        return f"{'log-uniform' if self._log else 'uniform'} [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class LogUniform(Uniform):
    """A positive float, uniform in ``log`` between ``low`` and ``high``."""

    _log = True


@dataclass(frozen=True)
class IntRange:
    """An int in ``[low, high]`` (log-spaced when ``log``; then ``low >= 1``)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        check_bool("IntRange.log", self.log)
        lo = check_int("IntRange.low", self.low, 1 if self.log else None)
        hi = check_int("IntRange.high", self.high)
        if hi <= lo:
            raise ValueError(f"IntRange: high must be > low, got low={lo}, high={hi}")

    def suggest(self, trial: Any, name: str) -> int:
        return int(trial.suggest_int(name, self.low, self.high, log=self.log))

    def contains(self, value: Any) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool)
                and self.low <= value <= self.high)

    def describe(self) -> str:
        return f"int{' log' if self.log else ''} [{self.low}, {self.high}]"


_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class Categorical:
    """One of ``choices`` (at least two distinct str / int / float / bool values)."""

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.choices, list | tuple):
            raise TypeError(f"Categorical.choices must be a list or tuple, got "
                            f"{type(self.choices).__name__}")
        choices = tuple(self.choices)
        for c in choices:
            if not isinstance(c, _SCALARS) or (isinstance(c, float) and not math.isfinite(c)):
                raise TypeError(f"Categorical.choices must hold finite str/int/float/bool "
                                f"values, got {c!r}")
        if len(choices) < 2 or len(set(choices)) != len(choices):
            raise ValueError(f"Categorical.choices must hold >= 2 distinct values, got "
                             f"{list(choices)}")
        object.__setattr__(self, "choices", choices)

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)

    def describe(self) -> str:
        return "one of {" + ", ".join(map(str, self.choices)) + "}"


Param = LogUniform | Uniform | IntRange | Categorical
_KINDS = {"log_uniform": LogUniform, "uniform": Uniform, "int": IntRange,
          "categorical": Categorical}
_NAMES = {v: k for k, v in _KINDS.items()}


def check_space(name: str, space: Any) -> dict[str, Param]:
    """A non-empty mapping of str names to distributions, as a plain dict."""
    if not isinstance(space, Mapping):
        raise TypeError(f"{name} must be a mapping of hyper-parameter names to "
                        f"distributions, got {type(space).__name__}")
    if not space:
        raise ValueError(f"{name} is empty: a method needs at least one hyper-parameter "
                         "to search (pass fixed values through the method's `fixed` "
                         "settings instead)")
    out = {}
    for key, dist in space.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"{name}: hyper-parameter names must be non-empty str, got "
                            f"{key!r}")
        if not isinstance(dist, LogUniform | Uniform | IntRange | Categorical):
            raise TypeError(f"{name}[{key!r}] must be LogUniform, Uniform, IntRange or "
                            f"Categorical, got {type(dist).__name__}")
        out[key] = dist
    return out


def suggest(trial: Any, space: Mapping[str, Param]) -> dict[str, Any]:
    """One configuration drawn by an Optuna ``trial`` from ``space`` (in the space's
    order, so that a seeded sampler draws the same values every time)."""
    return {name: dist.suggest(trial, name) for name, dist in space.items()}


def describe(space: Mapping[str, Param]) -> dict[str, str]:
    """``{name: "log-uniform [0.0001, 0.1]", ...}``."""
    return {name: dist.describe() for name, dist in space.items()}


def space_to_dict(space: Mapping[str, Param]) -> dict[str, dict[str, Any]]:
    """A JSON-ready description: ``{name: {"type": "log_uniform", "low": .., ...}}``."""
    out = {}
    for name, dist in check_space("space", space).items():
        d: dict[str, Any] = {"type": _NAMES[type(dist)]}
        if isinstance(dist, Categorical):
            d["choices"] = list(dist.choices)
        else:
            d.update(low=dist.low, high=dist.high)
            if isinstance(dist, IntRange):
                d["log"] = dist.log
        out[name] = d
    return out


def space_from_dict(d: Mapping[str, Mapping[str, Any]]) -> dict[str, Param]:
    """The inverse of :func:`space_to_dict`."""
    if not isinstance(d, Mapping):
        raise TypeError(f"a search space description must be a mapping, got "
                        f"{type(d).__name__}")
    out: dict[str, Param] = {}
    for name, spec in d.items():
        if not isinstance(spec, Mapping) or spec.get("type") not in _KINDS:
            raise ValueError(f"space[{name!r}] must be a mapping with 'type' in "
                             f"{sorted(_KINDS)}, got {spec!r}")
        kw = {k: v for k, v in spec.items() if k != "type"}
        if spec["type"] == "categorical":
            kw["choices"] = tuple(kw.get("choices", ()))
        try:
            out[name] = _KINDS[spec["type"]](**kw)
        except TypeError as e:
            if "unexpected keyword" in str(e) or "missing" in str(e):
                raise ValueError(f"space[{name!r}]: {e}") from None
            raise
    return check_space("space", out)


def check_config(name: str, space: Mapping[str, Param], config: Any) -> dict[str, Any]:
    """``config`` as a dict that sets every parameter of ``space`` to a value inside it."""
    if not isinstance(config, Mapping):
        raise TypeError(f"{name} must be a mapping of parameter values, got "
                        f"{type(config).__name__}")
    missing, extra = sorted(set(space) - set(config)), sorted(set(config) - set(space))
    if missing or extra:
        raise ValueError(f"{name} must set exactly the searched parameters {sorted(space)}; "
                         f"missing {missing}, unknown {extra}")
    for key, param in space.items():
        if not param.contains(config[key]):
            raise ValueError(f"{name}[{key!r}] = {config[key]!r} is outside its space "
                             f"({param.describe()})")
    return dict(config)
