"""Running experts given gate weights: dense, or sparse (conditional computation).

A mixture computes ``y_t = sum_e w_t[..., e] * f_e(x)`` for one or more weight sets
``w_t`` (one per task) over shared experts ``f_e``. Weights are of shape ``(n,)`` (static
gate, broadcast over the batch) or ``(batch, n)`` (per-example gate).

* :func:`dense_combine` runs every expert on every row.
* :func:`sparse_combine` runs only the experts that carry weight, each on only the rows
  that need it: rows are sorted by expert once, gathered with one ``index_select``, each
  active expert runs on its contiguous slice, and its weighted results are added back to
  their rows with ``index_add_``. With static weights it simply skips the experts whose
  weight is zero.

Both give the same outputs (to float tolerance) and the same gradients with respect to the
expert parameters, the inputs and the gate parameters: a weight that is exactly zero
contributes nothing to the output, and DSelect-k, Top-k and softmax weights that are
exactly zero also have zero derivative with respect to their gate parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

__all__ = ["Execution", "combine", "dense_combine", "has_zeros", "sparse_combine"]

Execution = Literal["auto", "dense", "sparse"]
EXECUTIONS = ("auto", "dense", "sparse")


def _check_weights(weights: Sequence[Tensor], num_experts: int, batch: int) -> None:
    if len(weights) == 0:
        raise ValueError("need at least one weight tensor")
    for w in weights:
        if w.shape[-1] != num_experts or w.dim() not in (1, 2):
            raise ValueError(
                f"weights must have shape ({num_experts},) or (batch, {num_experts}), "
                f"got {tuple(w.shape)}"
            )
        if w.dim() == 2 and w.shape[0] != batch:
            raise ValueError(f"weights have batch size {w.shape[0]} but the input has {batch}")


def _check_same_shape(outputs: Sequence[tuple[int, Tensor]]) -> None:
    first_index, first = outputs[0]
    for index, y in outputs[1:]:
        if y.shape[1:] != first.shape[1:]:
            raise ValueError(
                "experts must have equal output shapes: expert "
                f"{first_index} gives {tuple(first.shape[1:])} per row, expert {index} gives "
                f"{tuple(y.shape[1:])}"
            )


def _column(w: Tensor, e: int, ndim: int) -> Tensor:
    """Weight of expert ``e`` shaped to broadcast against an expert output of rank ``ndim``."""
    if w.dim() == 1:
        return w[e]
    return w[:, e].reshape(-1, *([1] * (ndim - 1)))


def has_zeros(weights: Sequence[Tensor]) -> bool:
    """True when some expert weight is exactly zero (this synchronizes with the device)."""
    return any(bool((w == 0).any()) for w in weights)


def dense_combine(
    experts: Sequence[nn.Module], x: Tensor, weights: Sequence[Tensor]
) -> list[Tensor]:
    """Every expert on every row; one output ``sum_e w[..., e] * f_e(x)`` per weight set."""
    _check_weights(weights, len(experts), x.shape[0])
    outputs: list[Tensor | None] = [None] * len(weights)
    first: list[tuple[int, Tensor]] = []
    for e, expert in enumerate(experts):
        y = expert(x)
        if not first:
            first.append((e, y))
        else:
            _check_same_shape([first[0], (e, y)])
        for t, w in enumerate(weights):
            term = _column(w, e, y.dim()) * y
            outputs[t] = term if outputs[t] is None else outputs[t] + term
    return outputs  # type: ignore[return-value]


def sparse_combine(
    experts: Sequence[nn.Module], x: Tensor, weights: Sequence[Tensor]
) -> list[Tensor]:
    """Only the experts that carry weight, each on only the rows that need it.

    Equal to :func:`dense_combine` in value and gradients. If no expert carries any weight
    it falls back to the dense computation (whose result is then all zeros), since the
    output shape is only known by running an expert.
    """
    num_experts = len(experts)
    _check_weights(weights, num_experts, x.shape[0])
    if all(w.dim() == 1 for w in weights):
        return _sparse_static(experts, x, weights)

    batch = x.shape[0]
    full = [w if w.dim() == 2 else w.expand(batch, num_experts) for w in weights]
    active = full[0] != 0
    for w in full[1:]:
        active = active | (w != 0)
    # (expert, row) pairs sorted by expert, then row: one index computation for all experts.
    pairs = active.t().nonzero()
    if pairs.shape[0] == 0:
        return dense_combine(experts, x, weights)
    expert_ids, rows = pairs[:, 0], pairs[:, 1]
    counts = active.sum(dim=0).tolist()

    routed = x.index_select(0, rows)
    scales = [w[rows, expert_ids] for w in full]
    outputs: list[Tensor] = []
    first: tuple[int, Tensor] | None = None
    start = 0
    for e, count in enumerate(counts):
        if not count:
            continue
        stop = start + count
        y = experts[e](routed[start:stop])
        if first is None:
            first = (e, y)
            outputs = [y.new_zeros((batch, *y.shape[1:])) for _ in full]
        else:
            _check_same_shape([first, (e, y)])
        expert_rows = rows[start:stop]
        shape = (-1, *([1] * (y.dim() - 1)))
        for out, scale in zip(outputs, scales, strict=True):
            out.index_add_(0, expert_rows, y * scale[start:stop].reshape(shape))
        start = stop
    return outputs


def _sparse_static(
    experts: Sequence[nn.Module], x: Tensor, weights: Sequence[Tensor]
) -> list[Tensor]:
    """Static weights: run the experts with a nonzero weight in some weight set, on all rows."""
    active = weights[0] != 0
    for w in weights[1:]:
        active = active | (w != 0)
    active_ids = active.nonzero().flatten().tolist()
    if not active_ids:
        return dense_combine(experts, x, weights)
    outputs: list[Tensor | None] = [None] * len(weights)
    first: tuple[int, Tensor] | None = None
    for e in active_ids:
        y = experts[e](x)
        if first is None:
            first = (e, y)
        else:
            _check_same_shape([first, (e, y)])
        for t, w in enumerate(weights):
            term = w[e] * y
            outputs[t] = term if outputs[t] is None else outputs[t] + term
    return outputs  # type: ignore[return-value]


def combine(
    experts: Sequence[nn.Module],
    x: Tensor,
    weights: Sequence[Tensor],
    execution: Execution = "auto",
) -> list[Tensor]:
    """Dispatch to :func:`dense_combine` or :func:`sparse_combine`.

    ``execution="auto"`` runs sparse whenever some weight is exactly zero.
    """
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got execution={execution!r}")
    if execution == "dense" or (execution == "auto" and not has_zeros(weights)):
        return dense_combine(experts, x, weights)
    return sparse_combine(experts, x, weights)
