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

from compactnn._modules import unwrap
from compactnn.config import ConfigError
from compactnn.io import model_structure, read_metadata, restore_structure

__all__ = ["check_same_config", "checkpoint_state", "flatten_state", "load_checkpoint",
           "save_checkpoint", "unflatten_state"]

_FORMAT = "compactnn.checkpoint.v1"


def flatten_state(obj: Any, tensors: dict[str, Tensor], prefix: str) -> Any:
    """Split a nested state (dicts, lists, tuples, tensors, scalars) into a
    JSON-serializable skeleton and a table of tensors named ``prefix.<path>``.
    Non-string dict keys (an optimizer's parameter indices) and tuples survive
    the round trip through :func:`unflatten_state`."""
    if isinstance(obj, Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        items = [[k, flatten_state(v, tensors, f"{prefix}.{k}")] for k, v in obj.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return dict(items)
        return {"__items__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten_state(v, tensors, f"{prefix}.{i}")
                              for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]
    return obj


def unflatten_state(obj: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__items__" in obj:
            return {k: unflatten_state(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(unflatten_state(v, tensors) for v in obj["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    return obj


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
    extra: dict[str, Any] | None = None,
) -> None:
    """Save everything needed to resume training exactly.

    ``state`` is any JSON-serializable dict (epoch, step, config, metrics...);
    ``extra`` any nested state with tensors (e.g. a pruning schedule's
    ``state_dict()``), restored by :func:`load_checkpoint`.
    """
    import safetensors.torch as st

    model = unwrap(model)
    table: dict[str, Tensor] = {f"model.{k}": v.detach().cpu().contiguous().clone()
                                for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {"structure": model_structure(model), "state": state or {},
                            "extra": flatten_state(extra or {}, table, "extra")}
    if optimizer is not None:
        meta["optimizer"] = flatten_state(optimizer.state_dict(), table, "optim")
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


def check_same_config(path: str | Path, config: dict[str, Any],
                      run_keys: set[str]) -> None:
    """Refuse to resume from ``path`` when its saved ``state["config"]`` differs from
    ``config`` in any key but ``run_keys`` (those a resume may change), naming them."""
    saved = {k: v for k, v in checkpoint_state(path)["config"].items() if k not in run_keys}
    now = {k: v for k, v in config.items() if k not in run_keys}
    if saved != now:
        diff = sorted(k for k in now.keys() | saved.keys() if now.get(k) != saved.get(k))
        raise ConfigError(f"{path} was written with a different config ({', '.join(diff)} "
                          "differ); use another out folder or resume=false")


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

    Returns ``(state, extra)``. Raises ``ValueError`` with one line when
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
        optimizer.load_state_dict(unflatten_state(meta["optimizer"], table))
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    if restore_rng:
        _set_rng_state(meta["rng"], table)
    return meta["state"], unflatten_state(meta["extra"], table)
