"""Inspecting trained gates: per-task expert weights, sparsity, selector entropies, heat map.

matplotlib is imported lazily, inside :func:`plot_task_expert_weights` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .gates import DSelectKBank, DSelectKGate, Gate, GateBank
from .layers import MixtureOfExperts, MultiGateMoE

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "gate_weights",
    "nonzeros_per_example",
    "nonzeros_per_task",
    "plot_task_expert_weights",
    "selector_entropies",
    "task_expert_weights",
]


Gates = MultiGateMoE | MixtureOfExperts | Gate | GateBank | Sequence[Gate]


def _gates(model: Gates) -> list[Gate | GateBank]:
    if isinstance(model, MultiGateMoE):
        return [model.gates] if isinstance(model.gates, GateBank) else list(model.gates)
    if isinstance(model, MixtureOfExperts):
        return [model.gate]
    if isinstance(model, Gate | GateBank):
        return [model]
    gates = list(model)
    if not all(isinstance(g, Gate) for g in gates):
        raise TypeError("expected a MultiGateMoE, a MixtureOfExperts, a Gate, a GateBank "
                        "or gates")
    return gates


@torch.no_grad()
def gate_weights(
    model: Gates, x: Tensor | None = None
) -> Tensor:
    """Every task's weights for routing input ``x``, shape ``(tasks, batch, n)``.

    Static gates are broadcast over the batch (``batch = 1`` when ``x`` is None, in which
    case all gates must be static). Computed without gradients.
    """
    gates = _gates(model)
    if x is None and not all(g.is_static for g in gates):
        raise ValueError("per-example gates need a routing input x")
    batch = 1 if x is None else x.shape[0]
    rows = []
    for gate in gates:
        w, _ = gate(None if gate.is_static else x)
        if isinstance(gate, GateBank):
            w = w if w.dim() == 3 else w.unsqueeze(1)
            rows.extend(w.expand(gate.num_tasks, batch, gate.num_experts).unbind(0))
        else:
            rows.append(w.expand(batch, gate.num_experts))
    return torch.stack(rows)


def task_expert_weights(
    model: Gates, x: Tensor | None = None
) -> Tensor:
    """The task x expert weight matrix, shape ``(tasks, n)``: a static gate's weights, or a
    per-example gate's weights averaged over the batch ``x``."""
    return gate_weights(model, x).mean(dim=1)


def nonzeros_per_example(
    model: Gates, x: Tensor | None = None
) -> Tensor:
    """Number of experts with nonzero weight for each task and example, ``(tasks, batch)``."""
    return (gate_weights(model, x) != 0).sum(dim=-1)


def nonzeros_per_task(
    model: Gates, x: Tensor | None = None
) -> Tensor:
    """Number of experts each task uses for at least one example of ``x``, ``(tasks,)``."""
    return (gate_weights(model, x) != 0).any(dim=1).sum(dim=-1)


@torch.no_grad()
def selector_entropies(gate: DSelectKGate | DSelectKBank, x: Tensor | None = None) -> Tensor:
    """Entropy (nats) of each DSelect-k selector's code distribution, over the reachable
    codes as in the regularizer of [DSK]: shape ``(k,)`` static, ``(batch, k)`` per-example,
    with a leading task axis ``(T, ...)`` for a :class:`DSelectKBank`.

    0 means the selector is one-hot (saturated onto one expert); ``log n`` is uniform.
    """
    if not isinstance(gate, DSelectKGate | DSelectKBank):
        raise TypeError("selector entropies need a DSelectKGate or DSelectKBank, got "
                        f"{type(gate).__name__}")
    r = gate.selector_outputs(x)
    return -(torch.where(r > 0, r * torch.log(r), torch.zeros_like(r))).sum(dim=-1)


def plot_task_expert_weights(
    weights: Tensor | Any,
    ax: Axes | None = None,
    task_names: Sequence[str] | None = None,
    expert_names: Sequence[str] | None = None,
    annotate: bool = True,
    cmap: str = "viridis",
    title: str | None = "Expert weights per task",
) -> Axes:
    """Heat map of a task x expert weight matrix (e.g. from :func:`task_expert_weights`).

    Returns the matplotlib ``Axes``; a new figure is made when ``ax`` is None.
    """
    import matplotlib.pyplot as plt  # lazy: matplotlib is an optional dependency

    if isinstance(weights, Tensor):
        weights = weights.detach().cpu().numpy()
    import numpy as np

    matrix = np.asarray(weights, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ValueError(f"weights must be a (tasks, experts) matrix, got shape {matrix.shape}")
    tasks, experts = matrix.shape
    if task_names is not None and len(task_names) != tasks:
        raise ValueError(f"got {len(task_names)} task names for {tasks} tasks")
    if expert_names is not None and len(expert_names) != experts:
        raise ValueError(f"got {len(expert_names)} expert names for {experts} experts")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.5 * experts + 2), max(2.5, 0.4 * tasks + 1.5)))
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=max(1e-12, float(matrix.max())),
                      aspect="auto")
    ax.figure.colorbar(image, ax=ax, label="weight")
    ax.set_xticks(range(experts), labels=expert_names or [str(e) for e in range(experts)])
    ax.set_yticks(range(tasks), labels=task_names or [f"task {t}" for t in range(tasks)])
    ax.set_xlabel("expert")
    ax.set_ylabel("task")
    if title:
        ax.set_title(title)
    if annotate:
        threshold = 0.5 * matrix.max()
        for t in range(tasks):
            for e in range(experts):
                value = matrix[t, e]
                if value != 0:
                    ax.text(e, t, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if value > threshold else "white")
    return ax
