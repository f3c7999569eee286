"""Running experts given gate weights: dense, sparse (conditional computation) or with a
fixed capacity per expert.

A mixture computes ``y_t = sum_e w_t[..., e] * f_e(x)`` for ``T`` weight sets ``w_t`` (one
per task) over shared experts ``f_e``. The weights come stacked, ``(T, n)`` (static gates,
broadcast over the batch) or ``(T, batch, n)`` (per-example gates); the outputs are
stacked too, ``(T, batch, ...)``. Experts are an :class:`~compactnn.moe.experts.MLPBank`
(stacked weights, batched products) or any sequence of ``nn.Module`` s with equal output
shapes (run one by one).

* :func:`dense_mix` runs every expert on every row, then mixes all tasks with one
  batched product.
* :func:`sparse_mix` runs only the experts that carry weight, each on only the rows that
  need it. With per-example weights, the (expert, row) pairs with a nonzero weight for some
  task are found once and sorted by expert; ``x`` is gathered once, each active expert runs
  on its contiguous slice, and the weighted outputs are summed back per row. The gather and
  the per-row sum are written with ``index_select`` in both directions (the gradient of a
  row gather is a per-row sum and vice versa) rather than a scatter-add, so each row's sum
  is taken in a fixed order and results are deterministic on every device. With static
  weights it skips the experts whose weight is zero for every task. The number of rows each
  expert sees depends on the data, so shapes are dynamic.
* :func:`capacity_mix` gives each expert a fixed number ``C`` of row slots (GShard /
  Switch style): each expert takes the ``C`` rows with the largest weight for it (the
  largest over tasks); routed pairs beyond ``C`` are dropped (their weight is treated as
  0) and counted. All shapes depend only on the batch size, so compilers can trace it.

Dense and sparse give the same outputs (to float tolerance) and the same gradients with
respect to the expert parameters, the inputs and the gate parameters: a weight that is
exactly zero contributes nothing, and DSelect-k, Top-k and softmax weights that are
exactly zero also have zero derivative. Capacity execution equals them when nothing is
dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float, check_int

from .experts import MLPBank

__all__ = [
    "EXECUTIONS",
    "Execution",
    "RowLayout",
    "capacity_mix",
    "combine",
    "dense_combine",
    "dense_mix",
    "expert_capacity",
    "has_zeros",
    "mix",
    "row_layout",
    "sparse_combine",
    "sparse_mix",
    "stack_weights",
]

Execution = Literal["auto", "dense", "sparse", "capacity"]
EXECUTIONS = ("auto", "dense", "sparse", "capacity")

Experts = MLPBank | Sequence[nn.Module]


def _num_experts(experts: Experts) -> int:
    return experts.num_members if isinstance(experts, MLPBank) else len(experts)


def stack_weights(weights: Sequence[Tensor] | Tensor, num_experts: int, batch: int) -> Tensor:
    """Check ``T`` weight sets and stack them: ``(T, n)`` if all are static, else
    ``(T, batch, n)`` (static ones broadcast over the batch)."""
    if isinstance(weights, Tensor):
        if weights.dim() not in (2, 3) or weights.shape[-1] != num_experts:
            raise ValueError(f"stacked weights must have shape (tasks, {num_experts}) or "
                             f"(tasks, batch, {num_experts}), got {tuple(weights.shape)}")
        if weights.dim() == 3 and weights.shape[1] != batch:
            raise ValueError(f"weights have batch size {weights.shape[1]} but the input has "
                             f"{batch}")
        return weights
    if len(weights) == 0:
        raise ValueError("need at least one weight tensor")
    for w in weights:
        if w.dim() not in (1, 2) or w.shape[-1] != num_experts:
            raise ValueError(f"weights must have shape ({num_experts},) or (batch, "
                             f"{num_experts}), got {tuple(w.shape)}")
        if w.dim() == 2 and w.shape[0] != batch:
            raise ValueError(f"weights have batch size {w.shape[0]} but the input has {batch}")
    if all(w.dim() == 1 for w in weights):
        return torch.stack(list(weights))
    return torch.stack([w.expand(batch, num_experts) for w in weights])


def has_zeros(weights: Sequence[Tensor] | Tensor) -> bool:
    """True when some expert weight is exactly zero (this synchronizes with the device)."""
    if isinstance(weights, Tensor):
        return bool((weights == 0).any())
    return any(bool((w == 0).any()) for w in weights)


def _check_same_shape(outputs: Sequence[tuple[int, Tensor]]) -> None:
    first_index, first = outputs[0]
    for index, y in outputs[1:]:
        if y.shape[1:] != first.shape[1:]:
            raise ValueError(
                "experts must have equal output shapes: expert "
                f"{first_index} gives {tuple(first.shape[1:])} per row, expert {index} gives "
                f"{tuple(y.shape[1:])}")


def _run_each(experts: Sequence[nn.Module], ids: Sequence[int],
              inputs: Sequence[Tensor]) -> Tensor:
    """``experts[ids[i]](inputs[i])`` stacked: ``(len(ids), rows, ...)``."""
    outs = [(e, experts[e](xi)) for e, xi in zip(ids, inputs, strict=True)]
    _check_same_shape(outs)
    return torch.stack([y for _, y in outs])


def _mix_outputs(y: Tensor, w: Tensor) -> Tensor:
    """``out[t, b] = sum_e w[t, (b,) e] * y[e, b]`` for ``y`` ``(E, batch, ...)``."""
    e, batch = y.shape[0], y.shape[1]
    # the row width is named, not inferred (-1): an empty batch has 0 elements
    feat = math.prod(y.shape[2:])
    flat = y.reshape(e, batch, feat)
    if w.dim() == 2:  # static: one (T, E) x (E, batch*F) product
        out = (w @ flat.reshape(e, batch * feat)).view(w.shape[0], batch, feat)
    else:  # per-example: a (T, E) x (E, F) product per row
        out = torch.bmm(w.transpose(0, 1), flat.transpose(0, 1)).transpose(0, 1)
    return out.reshape(w.shape[0], *y.shape[1:])


def dense_mix(experts: Experts, x: Tensor, weights: Tensor) -> Tensor:
    """Every expert on every row; stacked weights ``(T, [batch,] n)`` to ``(T, batch, ...)``."""
    n = _num_experts(experts)
    weights = stack_weights(weights, n, x.shape[0])
    if isinstance(experts, MLPBank):
        y = experts(x)
    else:
        y = _run_each(experts, range(n), [x] * n)
    return _mix_outputs(y, weights)


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
        return (_GatherRows.apply(grad, rows, slot_pair, slot_valid, ctx.slots),
                None, None, None, None)


def sparse_mix(experts: Experts, x: Tensor, weights: Tensor) -> Tensor:
    """Only the experts that carry weight, each on only the rows that need it.

    Equal to :func:`dense_mix` in value and gradients. If no expert carries any weight it
    falls back to the dense computation (whose result is then all zeros), since the
    output shape is only known by running an expert.
    """
    n = _num_experts(experts)
    batch = x.shape[0]
    weights = stack_weights(weights, n, batch)
    if weights.dim() == 2:
        ids = (weights != 0).any(dim=0).nonzero().flatten()
        if ids.numel() == 0:
            return dense_mix(experts, x, weights)
        if isinstance(experts, MLPBank):
            y = experts(x, members=ids)
        else:
            id_list = ids.tolist()
            y = _run_each(experts, id_list, [x] * len(id_list))
        return _mix_outputs(y, weights.index_select(1, ids))

    active = (weights != 0).any(dim=0)
    if not bool(active.any()):
        return dense_mix(experts, x, weights)
    layout = row_layout(active)
    index_args = (layout.rows, layout.slot_pair, layout.slot_valid, layout.slots)
    routed = _GatherRows.apply(x, *index_args)
    if isinstance(experts, MLPBank):
        y = experts.forward_rows(routed, layout.counts)
    else:
        pieces: list[tuple[int, Tensor]] = []
        start = 0
        for e, count in enumerate(layout.counts):
            if count:
                pieces.append((e, experts[e](routed[start : start + count])))
                start += count
        _check_same_shape(pieces)
        y = torch.cat([p for _, p in pieces]) if len(pieces) > 1 else pieces[0][1]
    pair_weights = weights[:, layout.rows, layout.experts]  # (T, P)
    flat = y.reshape(y.shape[0], 1, -1)  # (P, 1, F)
    z = flat * pair_weights.t().unsqueeze(-1)  # (P, T, F)
    out = _SumRows.apply(z, *index_args)  # (batch, T, F)
    return out.transpose(0, 1).reshape(weights.shape[0], batch, *y.shape[1:])


def expert_capacity(batch: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Row slots per expert: ``ceil(capacity_factor * batch * k / num_experts)``, at most
    ``batch`` (with ``k`` routed experts per row, ``capacity_factor = 1`` is the balanced
    share, and ``num_experts / k`` leaves room for any routing)."""
    check_int("batch", batch, minimum=1)
    check_int("num_experts", num_experts, minimum=1)
    check_int("k", k, minimum=1)
    capacity_factor = check_float("capacity_factor", capacity_factor, minimum=0.0,
                                  min_inclusive=False)
    return min(batch, max(1, math.ceil(capacity_factor * batch * k / num_experts)))


def capacity_mix(experts: Experts, x: Tensor, weights: Tensor,
                 capacity: int) -> tuple[Tensor, Tensor]:
    """Each expert on its ``capacity`` highest-weight rows; returns ``(outputs, dropped)``
    with ``dropped`` the number of routed (row, expert) pairs that did not fit."""
    n = _num_experts(experts)
    batch = x.shape[0]
    weights = stack_weights(weights, n, batch)
    capacity = check_int("capacity", capacity, minimum=1, maximum=batch)
    tasks = weights.shape[0]
    full = weights if weights.dim() == 3 else weights.unsqueeze(1).expand(tasks, batch, n)
    priority = full.detach().abs().amax(dim=0)  # (batch, n): a row's claim on an expert
    top, rows = priority.t().topk(capacity, dim=1)  # (n, C)
    valid = top > 0
    dropped = (priority > 0).sum() - valid.sum()
    routed = x.index_select(0, rows.reshape(-1)).view(n, capacity, *x.shape[1:])
    if isinstance(experts, MLPBank):
        y = experts(routed)
    else:
        y = _run_each(experts, range(n), list(routed.unbind(0)))
    # The slot outputs go back to their (expert, row) cells of a dense (n, batch, ...)
    # tensor, zero elsewhere, and the tasks mix it with the dense path's batched product
    # under weights masked to the kept pairs: no (slots x tasks) intermediate.
    kept = torch.zeros(n, batch, dtype=full.dtype, device=full.device)
    kept = kept.scatter(1, rows, valid.to(full.dtype))  # (n, batch): 1 where a pair ran
    cell = (rows + torch.arange(n, device=rows.device).unsqueeze(1) * batch).reshape(-1)
    flat = y.reshape(n * capacity, -1)
    cells = torch.zeros(n * batch, flat.shape[1], dtype=flat.dtype, device=flat.device)
    cells = cells.index_add(0, cell, flat).view(n, batch, *y.shape[2:])
    out = _mix_outputs(cells, full * kept.t())
    return out, dropped


def mix(experts: Experts, x: Tensor, weights: Tensor, execution: Execution = "auto", *,
        capacity: int | None = None) -> tuple[Tensor, Tensor | None]:
    """Stacked outputs ``(T, batch, ...)`` and, for capacity execution, the dropped count.

    ``execution="auto"`` runs sparse whenever some weight is exactly zero; ``"capacity"``
    needs ``capacity`` (see :func:`expert_capacity`).
    """
    check_choice("execution", execution, EXECUTIONS)
    if execution == "capacity":
        if capacity is None:
            raise ValueError("execution='capacity' needs capacity (row slots per expert)")
        return capacity_mix(experts, x, weights, capacity)
    if execution == "dense" or (execution == "auto" and not has_zeros(weights)):
        return dense_mix(experts, x, weights), None
    return sparse_mix(experts, x, weights), None


def dense_combine(experts: Experts, x: Tensor, weights: Sequence[Tensor]) -> list[Tensor]:
    """:func:`dense_mix` for a list of weight sets; one output per set."""
    return list(dense_mix(experts, x, stack_weights(weights, _num_experts(experts),
                                                    x.shape[0])).unbind(0))


def sparse_combine(experts: Experts, x: Tensor, weights: Sequence[Tensor]) -> list[Tensor]:
    """:func:`sparse_mix` for a list of weight sets; one output per set."""
    return list(sparse_mix(experts, x, stack_weights(weights, _num_experts(experts),
                                                     x.shape[0])).unbind(0))


def combine(experts: Experts, x: Tensor, weights: Sequence[Tensor],
            execution: Execution = "auto") -> list[Tensor]:
    """Dispatch to :func:`dense_combine` or :func:`sparse_combine` (``"auto"``: sparse
    whenever some weight is exactly zero)."""
    check_choice("execution", execution, ("auto", "dense", "sparse"))
    if execution == "dense" or (execution == "auto" and not has_zeros(weights)):
        return dense_combine(experts, x, weights)
    return sparse_combine(experts, x, weights)
