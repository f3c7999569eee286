"""Save and load factorized models with safetensors.

The file holds the state dict and, in its metadata, the structure needed to
rebuild the low-rank layers (their names, types and constructor arguments).
Loading fills a model built from your own code, so nothing is unpickled:

    save_model(lowrank_model, "model.safetensors")
    model = load_model(MyNet(), "model.safetensors")   # MyNet() is dense
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactnn import __version__
from compactnn.lowrank import LowRankConv2d, LowRankLayer, LowRankLinear

__all__ = ["save_model", "load_model", "layer_config", "model_structure", "read_metadata",
           "restore_structure"]

_FORMAT = "compactnn.lowrank.v1"
_TYPES: dict[str, type[LowRankLayer]] = {"LowRankLinear": LowRankLinear,
                                         "LowRankConv2d": LowRankConv2d}


def _safetensors():
    try:
        import safetensors.torch as st
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("saving and loading need safetensors: pip install safetensors") from e
    return st


def layer_config(layer: LowRankLayer) -> dict[str, Any]:
    """Constructor arguments that rebuild ``layer`` (JSON-serializable)."""
    if isinstance(layer, LowRankLinear):
        return {"in_features": layer.in_features, "out_features": layer.out_features,
                "rank": layer.rank, "bias": layer.bias is not None}
    if isinstance(layer, LowRankConv2d):
        return {**layer.conv_kwargs(), "rank": layer.rank, "scheme": layer.scheme}
    raise TypeError(f"no saved form for {type(layer).__name__}")


def _build(kind: str, config: dict[str, Any]) -> LowRankLayer:
    if kind not in _TYPES:
        raise ValueError(f"unknown low-rank layer type {kind!r} in checkpoint")
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return _TYPES[kind](**cfg)


def model_structure(model: nn.Module) -> dict[str, Any]:
    """``{name: {"type", "config"}}`` for every low-rank layer of ``model``."""
    return {name: {"type": type(m).__name__, "config": layer_config(m)}
            for name, m in model.named_modules() if isinstance(m, LowRankLayer)}


def restore_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Swap freshly built low-rank layers into ``model`` where ``structure`` (from
    :func:`model_structure`) records them. All names are checked first."""
    modules = dict(model.named_modules())
    missing = [n for n in structure if n not in modules]
    if missing:
        raise ValueError(f"checkpoint has low-rank layers {missing} that the model lacks; "
                         "is it the same architecture?")
    def matches(module: nn.Module, spec: dict[str, Any]) -> bool:
        return (type(module).__name__ == spec["type"]
                and json.loads(json.dumps(layer_config(module))) == spec["config"])

    # Layers that already match are kept, so optimizers holding them stay valid.
    built = {name: _build(spec["type"], spec["config"]) for name, spec in structure.items()
             if not matches(modules[name], spec)}
    for name, new in built.items():
        old = modules[name]
        ref = next(old.parameters(), None)
        if ref is not None:
            new = new.to(device=ref.device, dtype=ref.dtype)
        # every path to the module (a shared module is saved under each of them)
        paths = [p for p, m in model.named_modules(remove_duplicate=False) if m is old]
        for path in paths:
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def save_model(model: nn.Module, path: str | Path,
               metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s state dict and low-rank structure to a safetensors file.
    ``metadata`` (str -> str) is stored beside it."""
    st = _safetensors()
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "format": _FORMAT, "compactnn_version": __version__,
            "lowrank_layers": json.dumps(model_structure(model))}
    st.save_file(tensors, str(path), metadata=meta)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (no tensors are read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as e:
        raise ValueError(f"{path} is not a safetensors file ({e})") from None


def load_model(model: nn.Module, path: str | Path, strict: bool = True,
               map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the low-rank layers recorded in ``path`` inside ``model`` (a dense
    or already-factorized instance of the same architecture), then load the
    weights. Returns ``model`` (modified in place)."""
    st = _safetensors()
    meta = read_metadata(path)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a compactnn checkpoint (format={meta.get('format')!r})")
    restore_structure(model, json.loads(meta["lowrank_layers"]))
    state = st.load_file(str(path), device=str(map_location))
    model.load_state_dict(state, strict=strict)
    return model
