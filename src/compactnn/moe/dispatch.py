"""Running experts given gate weights: dense, or sparse (conditional computation).

A mixture computes ``y_t = sum_e w_t[..., e] * f_e(x)`` for one or more weight sets
``w_t`` (one per task) over shared experts ``f_e``. Weights are of shape ``(n,)`` (static
gate, broadcast over the batch) or ``(batch, n)`` (per-example gate).

* :func:`dense_combine` runs every expert on every row.
* :func:`sparse_combine` runs only the experts that carry weight, each on only the rows
  that need it. With per-example weights, the (expert, row) pairs with a nonzero weight
  are found once and sorted by expert; ``x`` is gathered once, each active expert runs on
  its contiguous slice, and the weighted outputs are summed back per row. Both the gather
  and the per-row sum are written with ``index_select`` only, in each direction (the
  gradient of a row gather is a per-row sum and vice versa): no scatter-add kernel, whose
  CPU implementation was found to stall badly with 2 threads on a busy machine, and the
  sum of each row is taken in a fixed order, so results are deterministic on every
  device. With static weights it simply skips the experts whose weight is zero.

Both give the same outputs (to float tolerance) and the same gradients with respect to the
expert parameters, the inputs and the gate parameters: a weight that is exactly zero
contributes nothing to the output, and DSelect-k, Top-k and softmax weights that are
exactly zero also have zero derivative with respect to their gate parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "Execution",
    "RowLayout",
    "combine",
    "dense_combine",
    "has_zeros",
    "row_layout",
    "sparse_combine",
]

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


class RowLayout(NamedTuple):
    """Where the nonzero (expert, row) pairs of a ``(batch, n)`` activity mask live.

    Pairs are numbered ``0..P-1`` in expert-major order (by expert, then row).

    Attributes:
        experts: expert of each pair, ``(P,)``.
        rows: row of each pair, ``(P,)``.
        counts: number of pairs of each expert (a Python list, length ``n``).
        slots: ``slots`` slots per row, the most pairs any row has.
        slot_pair: the pair in slot ``j`` of row ``b`` at ``b * slots + j``, ``(batch*slots,)``
            (pair 0 for an empty slot).
        slot_valid: whether each slot holds a pair, or None when all do.
    """

    experts: Tensor
    rows: Tensor
    counts: list[int]
    slots: int
    slot_pair: Tensor
    slot_valid: Tensor | None


def row_layout(active: Tensor) -> RowLayout:
    """Index computation for sparse execution, done once for all experts and tasks."""
    batch, num_experts = active.shape
    pairs = active.t().nonzero()
    experts, rows = pairs[:, 0], pairs[:, 1]
    counts = active.sum(dim=0).tolist()
    slots = int(active.sum(dim=1).max())
    # pair index of every (row, expert) cell, valid where active
    pair_of_cell = (active.t().reshape(-1).cumsum(0) - 1).view(num_experts, batch).t()
    # each row's active experts first, in expert order (stable sort of the 0/1 mask)
    order = torch.sort(active.to(torch.uint8), dim=1, descending=True, stable=True).indices
    order = order[:, :slots]
    slot_pair = pair_of_cell.gather(1, order).clamp_min(0).reshape(-1)
    valid = active.gather(1, order)
    slot_valid = None if bool(valid.all()) else valid.reshape(-1)
    return RowLayout(experts, rows, counts, slots, slot_pair, slot_valid)


def _sum_rows(z: Tensor, slot_pair: Tensor, slot_valid: Tensor | None, slots: int) -> Tensor:
    gathered = z.index_select(0, slot_pair).view(-1, slots, *z.shape[1:])
    if slot_valid is not None:
        mask = slot_valid.view(-1, slots, *([1] * (z.dim() - 1)))
        gathered = torch.where(mask, gathered, torch.zeros((), dtype=z.dtype, device=z.device))
    return gathered.sum(dim=1)


class _GatherRows(torch.autograd.Function):
    """``x[rows]`` for the pairs; its gradient is the per-row sum :class:`_SumRows`."""

    @staticmethod
    def forward(ctx, x, rows, slot_pair, slot_valid, slots):
        ctx.save_for_backward(rows, slot_pair, slot_valid)
        ctx.slots = slots
        return x.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad):
        rows, slot_pair, slot_valid = ctx.saved_tensors
        return _SumRows.apply(grad, rows, slot_pair, slot_valid, ctx.slots), None, None, None, None


class _SumRows(torch.autograd.Function):
    """``out[b] = sum of z[p] over the pairs p of row b`` (the same as
    ``zeros.index_add(0, rows, z)``), computed as a gather of each row's slots; its
    gradient is the row gather :class:`_GatherRows`."""

    @staticmethod
    def forward(ctx, z, rows, slot_pair, slot_valid, slots):
        ctx.save_for_backward(rows, slot_pair, slot_valid)
        ctx.slots = slots
        return _sum_rows(z, slot_pair, slot_valid, slots)

    @staticmethod
    def backward(ctx, grad):
        rows, slot_pair, slot_valid = ctx.saved_tensors
        return (
            _GatherRows.apply(grad, rows, slot_pair, slot_valid, ctx.slots),
            None,
            None,
            None,
            None,
        )


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
    if not bool(active.any()):
        return dense_combine(experts, x, weights)
    layout = row_layout(active)
    index_args = (layout.rows, layout.slot_pair, layout.slot_valid, layout.slots)

    routed = _GatherRows.apply(x, *index_args)
    pieces: list[tuple[int, Tensor]] = []
    start = 0
    for e, count in enumerate(layout.counts):
        if count:
            pieces.append((e, experts[e](routed[start : start + count])))
            start += count
    _check_same_shape(pieces)
    y = torch.cat([piece for _, piece in pieces]) if len(pieces) > 1 else pieces[0][1]

    shape = (-1, *([1] * (y.dim() - 1)))
    return [
        _SumRows.apply(y * w[layout.rows, layout.experts].reshape(shape), *index_args)
        for w in full
    ]


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
