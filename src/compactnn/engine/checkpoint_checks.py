"""Checks of a training checkpoint's contents against the live run before
anything is applied.

A checkpoint's JSON metadata is data from a file: a torch ``load_state_dict``
would copy a scheduler's keys straight into its attributes and take an
optimizer's hyper-parameters as they come. Here only the keys the live object
already has are accepted, each with the kind of value it holds now (a finite
number where it has a number, a bool where it has a bool, a list of the same
length...), and the optimizer's per-parameter tensors must have the shapes of
the parameters they belong to. Every failure is a ``ValueError`` naming the
file and the entry.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_loop_state", "check_optimizer_state", "check_scheduler_state"]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _like(where: str, key: str, value: Any, live: Any) -> Any:
    """``value`` from the file, checked to be the same kind of value as ``live``."""
    if isinstance(live, bool) or (live is None and isinstance(value, bool)):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if live is None:
        if value is not None:
            raise ValueError(f"{where}: {key} must be null, got {value!r}")
        return value
    if _is_number(live):
        if not _is_number(value) or not math.isfinite(value):
            raise ValueError(f"{where}: {key} must be a finite number, got {value!r}")
        return type(live)(value) if isinstance(live, int) and float(value).is_integer() \
            else value
    if isinstance(live, str):
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string, got {value!r}")
        return value
    if isinstance(live, list | tuple):
        if not isinstance(value, list | tuple) or len(value) != len(live):
            raise ValueError(f"{where}: {key} must be a list of {len(live)} entries, "
                             f"got {value!r}")
        items = [_like(where, f"{key}[{i}]", v, lv)
                 for i, (v, lv) in enumerate(zip(value, live, strict=True))]
        return tuple(items) if isinstance(live, tuple) else items
    if isinstance(live, Tensor):
        if not isinstance(value, Tensor) or value.shape != live.shape:
            raise ValueError(f"{where}: {key} must be a tensor of shape "
                             f"{tuple(live.shape)}, got {_describe(value)}")
        return value
    raise ValueError(f"{where}: {key} holds a {type(live).__name__}, which a checkpoint "
                     "cannot restore")


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)[:60]


def check_scheduler_state(state: Any, scheduler: Any, where: str) -> dict[str, Any]:
    """The scheduler state to apply: only the live scheduler's own keys, each like
    its live value (learning-rate functions are code and never come from a file)."""
    live = scheduler.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{where}: scheduler state must be a table, got {_describe(state)}")
    unknown = sorted(set(state) - set(live))
    if unknown:
        raise ValueError(f"{where}: unknown scheduler entry {unknown[0]!r}")
    checked = {k: _like(where, f"scheduler.{k}", v, live[k]) for k, v in state.items()}
    if "last_epoch" in checked and checked["last_epoch"] < -1:
        raise ValueError(f"{where}: scheduler.last_epoch must be >= -1, got "
                         f"{checked['last_epoch']}")
    if any(fn is not None for fn in checked.get("lr_lambdas", [])):
        raise ValueError(f"{where}: scheduler.lr_lambdas must be null")
    return checked


def check_optimizer_state(state: Any, optimizer: torch.optim.Optimizer, where: str) -> None:
    """Refuse an optimizer state that does not belong to ``optimizer``: other
    parameter groups, hyper-parameters of the wrong kind or not finite, a negative
    learning rate, or per-parameter tensors of the wrong shape or not finite."""
    live = optimizer.state_dict()
    if not isinstance(state, dict) or set(state) != {"state", "param_groups"}:
        raise ValueError(f"{where}: optimizer state must have 'state' and 'param_groups'")
    groups = state["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(live["param_groups"]):
        raise ValueError(f"{where}: optimizer has {len(live['param_groups'])} parameter "
                         f"groups, the file {len(groups) if isinstance(groups, list) else 0}")
    shapes: dict[int, tuple[int, ...]] = {}
    for g, (group, live_group, params) in enumerate(zip(
            groups, live["param_groups"], optimizer.param_groups, strict=True)):
        if not isinstance(group, dict) or set(group) != set(live_group):
            raise ValueError(f"{where}: optimizer group {g} has other entries than this "
                             "optimizer's")
        for key, value in group.items():
            if key == "params":
                if value != live_group["params"]:
                    raise ValueError(f"{where}: optimizer group {g} holds other parameters")
                continue
            _like(where, f"optimizer group {g} {key}", value, live_group[key])
        if group["lr"] < 0:
            raise ValueError(f"{where}: optimizer group {g} lr must be >= 0, got {group['lr']}")
        for idx, p in zip(live_group["params"], params["params"], strict=True):
            shapes[idx] = tuple(p.shape)
    per_param = state["state"]
    if not isinstance(per_param, dict):
        raise ValueError(f"{where}: optimizer 'state' must be a table")
    for idx, entry in per_param.items():
        if idx not in shapes or not isinstance(entry, dict):
            raise ValueError(f"{where}: optimizer state for unknown parameter {idx!r}")
        for key, value in entry.items():
            name = f"optimizer state {idx}.{key}"
            if _is_number(value):
                _like(where, name, value, 0.0)
                continue
            if not isinstance(value, Tensor):
                raise ValueError(f"{where}: {name} must be a tensor or a number, got "
                                 f"{_describe(value)}")
            if value.ndim and tuple(value.shape) != shapes[idx]:
                raise ValueError(f"{where}: {name} has shape {tuple(value.shape)}, its "
                                 f"parameter {shapes[idx]}")
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{where}: {name} holds non-finite values")


def check_loop_state(state: Any, where: str) -> dict[str, Any]:
    """The loop's position and running sums: non-negative integers and finite sums."""
    if not isinstance(state, dict):
        raise ValueError(f"{where}: the loop state must be a table")
    for key in ("epoch", "batch", "step"):
        v = state.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{where}: state.{key} must be an integer >= 0, got {v!r}")
    running = state.get("running")
    ok = isinstance(running, dict) and set(running) == {"count", "sums"} and \
        isinstance(running["count"], int) and not isinstance(running["count"], bool) and \
        running["count"] >= 0 and isinstance(running["sums"], dict) and all(
            isinstance(k, str) and _is_number(v) and math.isfinite(v)
            for k, v in running["sums"].items())
    if not ok:
        raise ValueError(f"{where}: state.running must hold a count and finite sums")
    return state
