"""The structure a checkpoint records for its low-rank layers: each layer's type and
constructor arguments (:func:`layer_config`), and the checks that a recorded structure
passes before anything is built from it (:func:`parse_structure`: exactly the keys a
layer's config has, each value of its type and in range). Used by :mod:`compactnn.io`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from compactnn._checks import check_module
from compactnn.lowrank import LowRankConv1d, LowRankConv2d, LowRankLayer, LowRankLinear

__all__ = ["check_structure_arg", "construct", "layer_config", "parse_structure"]

_TYPES: dict[str, type[LowRankLayer]] = {"LowRankLinear": LowRankLinear,
                                         "LowRankConv1d": LowRankConv1d,
                                         "LowRankConv2d": LowRankConv2d}
# No real layer has a dimension beyond this; refusing larger values early keeps
# overflowing sizes out of the constructors (the tensor headers bound the rest).
_MAX_DIM = 2**31 - 1


def layer_config(layer: LowRankLayer) -> dict[str, Any]:
    """Constructor arguments that rebuild ``layer`` (JSON-serializable)."""
    check_module("layer", layer, LowRankLayer)
    if _TYPES.get(type(layer).__name__) is not type(layer):
        raise TypeError(f"no saved form for {type(layer).__name__}; checkpoints hold "
                        f"{', '.join(_TYPES)}")
    return layer.config()


def construct(kind: str, config: dict[str, Any]) -> LowRankLayer:
    return _TYPES[kind].from_config(config)


def _size(v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"must be an int, got {v!r}")
    if not minimum <= v <= _MAX_DIM:
        raise ValueError(f"must lie in [{minimum}, {_MAX_DIM}], got {v}")
    return v


def _pair(check: Callable[[Any], int]) -> Callable[[Any], tuple[int, int] | int]:
    def pair(v: Any) -> tuple[int, int] | int:
        if isinstance(v, list | tuple):
            if len(v) != 2:
                raise ValueError(f"must be an int or a pair of ints, got {v!r}")
            return (check(v[0]), check(v[1]))
        return check(v)
    return pair


def _padding(v: Any) -> str | tuple[int, int] | int:
    if isinstance(v, str):
        return v  # the constructor checks the word
    return _pair(lambda x: _size(x, minimum=0))(v)


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {v!r}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"must be a string, got {v!r}")
    return v


# Exactly the keys ``layer_config`` writes; never ``device``/``dtype``, which
# the model decides.
_SCHEMA: dict[str, dict[str, Callable[[Any], Any]]] = {
    "LowRankLinear": {"in_features": _size, "out_features": _size, "rank": _size,
                      "bias": _flag},
    "LowRankConv2d": {"in_channels": _size, "out_channels": _size,
                      "kernel_size": _pair(_size), "stride": _pair(_size),
                      "padding": _padding, "dilation": _pair(_size), "groups": _size,
                      "bias": _flag, "padding_mode": _text, "rank": _size, "scheme": _text},
    "LowRankConv1d": {"in_channels": _size, "out_channels": _size, "kernel_size": _size,
                      "stride": _size, "padding": lambda v: v if isinstance(v, str)
                      else _size(v, minimum=0), "dilation": _size, "groups": _size,
                      "bias": _flag, "padding_mode": _text, "rank": _size},
}


def check_structure_arg(structure: Any) -> Any:
    if not isinstance(structure, dict | str):
        raise TypeError("structure must be a dict (from model_structure) or its JSON text, "
                        f"got {type(structure).__name__}")
    return structure


def parse_structure(raw: Any, where: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{name: (type, config)}`` from the recorded structure, every key and type
    checked; raises ``ValueError`` naming ``where`` and the offending entry."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: 'lowrank_layers' is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: 'lowrank_layers' must map layer names to "
                         f"{{'type', 'config'}}, got {type(raw).__name__}")
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, spec in raw.items():
        at = f"{where}: layer {name!r}"
        if not name:
            raise ValueError(f"{at}: the model itself cannot be a recorded layer")
        if not isinstance(spec, dict) or set(spec) != {"type", "config"}:
            got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
            raise ValueError(f"{at}: entry must have exactly the keys 'type' and 'config', "
                             f"got {got}")
        kind, config = spec["type"], spec["config"]
        if not isinstance(kind, str) or kind not in _SCHEMA:
            raise ValueError(f"{at}: unknown low-rank layer type {kind!r}; known: "
                             f"{', '.join(_SCHEMA)}")
        if not isinstance(config, dict):
            raise ValueError(f"{at}: 'config' must be an object, got {type(config).__name__}")
        schema = _SCHEMA[kind]
        unknown = sorted(set(config) - set(schema))
        missing = sorted(set(schema) - set(config))
        if unknown or missing:
            raise ValueError(f"{at}: {kind} config has unknown keys {unknown} and lacks "
                             f"{missing}; allowed: {', '.join(schema)}")
        checked = {}
        for key, check in schema.items():
            try:
                checked[key] = check(config[key])
            except ValueError as e:
                raise ValueError(f"{at}: {key} {e}") from None
        out[name] = (kind, checked)
    return out
