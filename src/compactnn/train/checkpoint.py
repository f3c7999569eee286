"""Training checkpoints in one safetensors file: model (with its low-rank
structure), optimizer, scheduler, random generators and loop state.

Tensors go into the file's tensor table; everything else (hyper-parameters,
counters, the config) into its JSON metadata. Nothing is pickled, so loading
a checkpoint cannot run code. Writes are atomic (temporary file + rename), so
an interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from compactnn.io import model_structure, read_metadata, restore_structure

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_state", "unwrap"]

_FORMAT = "compactnn.checkpoint.v1"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _flatten_optimizer(state: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optim.state.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return {"param_groups": state["param_groups"], "scalars": scalars,
            "indices": [int(i) for i in state["state"]]}


def _unflatten_optimizer(meta: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {i: dict(meta["scalars"].get(str(i), {}))
                                        for i in meta["indices"]}
    for name, value in tensors.items():
        if name.startswith("optim.state."):
            idx, key = name[len("optim.state."):].split(".", 1)
            state[int(idx)][key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state(tensors: dict[str, Tensor]) -> dict[str, Any]:
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    return {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def _set_rng_state(meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if states:
            torch.cuda.set_rng_state_all(states)
    kind, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    state: dict[str, Any] | None = None,
    tensors: dict[str, Tensor] | None = None,
) -> None:
    """Save everything needed to resume training exactly.

    ``state`` is any JSON-serializable dict (epoch, step, config, metrics...);
    ``tensors`` are extra named tensors (e.g. sparsity masks).
    """
    import safetensors.torch as st

    model = unwrap(model)
    table: dict[str, Tensor] = {f"model.{k}": v.detach().cpu().contiguous().clone()
                                for k, v in model.state_dict().items()}
    for k, v in (tensors or {}).items():
        table[f"extra.{k}"] = v.detach().cpu().contiguous().clone()
    meta: dict[str, Any] = {"structure": model_structure(model), "state": state or {}}
    if optimizer is not None:
        meta["optimizer"] = _flatten_optimizer(optimizer.state_dict(), table)
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    meta["rng"] = _rng_state(table)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    st.save_file(table, str(tmp), metadata={"format": _FORMAT, "json": json.dumps(meta)})
    os.replace(tmp, path)


def _read_meta(path: str | Path) -> dict[str, Any]:
    meta_raw = read_metadata(path)
    if meta_raw.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a compactnn training checkpoint")
    return json.loads(meta_raw["json"])


def checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The ``state`` dict saved with a checkpoint, without loading its tensors."""
    return _read_meta(path)["state"]


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (its
    low-rank layers are rebuilt first), ``optimizer`` and ``scheduler``.

    Returns ``(state, extra_tensors)``. Raises ``ValueError`` with one line when
    the file is not a compactnn checkpoint or belongs to another model.
    """
    import safetensors.torch as st

    meta = _read_meta(path)
    target = unwrap(model)
    table = st.load_file(str(path), device=str(map_location))
    try:
        restore_structure(target, meta["structure"])
        target.load_state_dict({k[len("model."):]: v for k, v in table.items()
                                if k.startswith("model.")})
    except (RuntimeError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"checkpoint {path} does not fit this model ({first}); "
                         "use a fresh output folder or the matching config") from None
    if optimizer is not None and "optimizer" in meta:
        optimizer.load_state_dict(_unflatten_optimizer(meta["optimizer"], table))
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    if restore_rng:
        _set_rng_state(meta["rng"], table)
    extras = {k[len("extra."):]: v for k, v in table.items() if k.startswith("extra.")}
    return meta["state"], extras
