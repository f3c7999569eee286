"""Mixture-of-experts layers: one gate ([DSK], [TopK]) or one gate per task ([MMoE]).

Experts are an :class:`~compactnn.moe.experts.MLPBank` (what :func:`mlp_experts` returns:
stacked weights, batched products) or any sequence of ``nn.Module`` s mapping a batch
``(batch, ...)`` to outputs of equal shapes. The layers return ``(output, aux_loss)``; add
``aux_loss`` (the gates' regularizers, zero in eval mode) to the training loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float, check_int

from .dispatch import EXECUTIONS, Execution, expert_capacity, mix, stack_weights
from .experts import MLPBank, mlp_experts
from .gates import DSelectKGate, Gate, GateBank, gate_bank

__all__ = ["MixtureOfExperts", "MultiGateMoE", "mlp_experts"]

Experts = MLPBank | Sequence[nn.Module]


def _reset(module: nn.Module) -> None:
    """Reset a module through its own ``reset_parameters`` if it has one, else its children."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for child in module.children():
        _reset(child)


def _as_experts(experts: Experts) -> MLPBank | nn.ModuleList:
    if isinstance(experts, MLPBank):
        result: MLPBank | nn.ModuleList = experts
    elif isinstance(experts, nn.Module) and not isinstance(experts, nn.ModuleList):
        raise TypeError("experts must be an MLPBank or a sequence of nn.Module "
                        f"(e.g. an nn.ModuleList), got {type(experts).__name__}")
    else:
        for i, expert in enumerate(experts):
            if not isinstance(expert, nn.Module):
                raise TypeError(f"expert {i} must be an nn.Module, got {type(expert).__name__}")
        result = nn.ModuleList(experts)
    if len(result) < 2:
        raise ValueError(f"need at least 2 experts, got {len(result)}")
    return result


def _check_gate(gate: object, num_experts: int, what: str = "gate") -> Gate | GateBank:
    if not isinstance(gate, Gate | GateBank):
        raise TypeError(f"{what} must be a compactnn.moe Gate, got {type(gate).__name__}")
    if gate.num_experts != num_experts:
        raise ValueError(
            f"{what} has num_experts={gate.num_experts} but there are {num_experts} experts")
    return gate


def _routing_width(gates: Sequence[Gate | GateBank]) -> int:
    """Routed experts per row, an upper bound: the sum of the gates' nonzeros."""
    return sum(g.max_nonzeros * (g.num_tasks if isinstance(g, GateBank) else 1) for g in gates)


class _Mixture(nn.Module):
    """What both layers share: experts, execution mode, capacity and the dropped count."""

    def _setup(self, experts: Experts, execution: str, capacity_factor: float) -> None:
        self.experts = _as_experts(experts)
        self.execution: Execution = check_choice("execution", execution, EXECUTIONS)
        self.capacity_factor = check_float("capacity_factor", capacity_factor, minimum=0.0,
                                           min_inclusive=False)
        # Routed (row, expert) pairs dropped by the last capacity-mode forward.
        self.register_buffer("dropped", torch.zeros((), dtype=torch.long), persistent=False)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def _mix(self, x: Tensor, weights: Tensor, k: int) -> Tensor:
        if x.shape[0] == 0:
            # no rows: nothing to route or drop, and capacity slots are undefined;
            # the dense path still runs the experts for the output's trailing shape
            with torch.no_grad():
                self.dropped.zero_()
            return mix(self.experts, x, weights, "dense")[0]
        capacity = None
        if self.execution == "capacity":
            capacity = expert_capacity(x.shape[0], self.num_experts, min(k, self.num_experts),
                                       self.capacity_factor)
        out, dropped = mix(self.experts, x, weights, self.execution, capacity=capacity)
        if dropped is not None:
            with torch.no_grad():
                self.dropped.copy_(dropped)
        return out


def _routing(gate: Gate | GateBank, x: Tensor, routing_input: Tensor | None) -> Tensor | None:
    if gate.is_static:
        return None
    return x if routing_input is None else routing_input


def _token_axes(moe: MixtureOfExperts, x: Tensor,
                routing_input: Tensor | None) -> tuple[int, ...] | None:
    """The leading axes routed position by position, or None for a plain batch.

    A per-example gate routes on vectors, so a routing tensor ``(batch, tokens, ..., d)``
    means one routing decision per position: its leading axes are flattened into rows
    (``x`` must share them). An :class:`MLPBank` maps rows of features, so ``x`` with
    more than two axes is flattened the same way under a static gate too."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a Tensor, got {type(x).__name__}")
    if routing_input is not None and not isinstance(routing_input, Tensor):
        raise TypeError(f"routing_input must be a Tensor, got {type(routing_input).__name__}")
    if moe.gate.is_static:
        return tuple(x.shape[:-1]) if x.dim() > 2 and isinstance(moe.experts, MLPBank) else None
    r = x if routing_input is None else routing_input
    if r.dim() <= 2:
        return None
    lead = tuple(r.shape[:-1])
    if tuple(x.shape[:len(lead)]) != lead:
        raise ValueError(f"x has shape {tuple(x.shape)} but routing_input {tuple(r.shape)}: "
                         f"per-token routing needs x to start with the axes {lead}")
    if isinstance(moe.experts, MLPBank) and x.dim() != len(lead) + 1:
        raise ValueError(f"MLPBank experts map feature rows: x must have shape (*{lead}, "
                         f"{moe.experts.in_features}), got {tuple(x.shape)}")
    return lead


class MixtureOfExperts(_Mixture):
    """``y = sum_e w_e f_e(x)`` with the weights ``w`` of one gate.

    Args:
        experts: an :class:`MLPBank` or ``nn.Module`` s with equal output shapes.
        gate: a :class:`~compactnn.moe.gates.Gate` over ``len(experts)`` experts. A static
            gate's weights ``(n,)`` are broadcast over the batch.
        execution: ``"dense"`` runs every expert on every row; ``"sparse"`` runs only the
            experts that carry weight, on the rows that need them; ``"auto"`` (default) is
            sparse whenever the weights have exact zeros; ``"capacity"`` gives each expert
            ``ceil(capacity_factor * batch * k / n)`` row slots (``k`` the gate's
            ``max_nonzeros``), drops routed rows beyond them (counted in ``self.dropped``)
            and has static shapes.
        capacity_factor: ``> 0``, for ``execution="capacity"``.

    ``forward(x, routing_input=None)`` returns ``(output, aux_loss)``. A per-example gate
    routes on ``routing_input`` if given, else on ``x``. Sequences route per token: a
    routing tensor ``(batch, tokens, d)`` (or more leading axes) is flattened to rows,
    each token gets its own weights, capacity counts tokens, and the output keeps the
    leading axes, exactly as the same layer on the flattened rows. The gate's ``aux_loss``
    is then taken over all tokens of the batch.
    """

    def __init__(self, experts: Experts, gate: Gate, *, execution: Execution = "auto",
                 capacity_factor: float = 1.0) -> None:
        super().__init__()
        self._setup(experts, execution, capacity_factor)
        self.gate = _check_gate(gate, len(self.experts))

    def reset_parameters(self) -> None:
        _reset(self.experts)
        self.gate.reset_parameters()

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, execution={self.execution!r}"

    def forward(self, x: Tensor, routing_input: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, aux, _ = self.routed(x, routing_input)
        return out, aux

    def routed(self, x: Tensor, routing_input: Tensor | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`forward` that also returns the gate's weights, ``(n,)`` (static) or
        ``(rows, n)`` with the token axes flattened into rows."""
        lead = _token_axes(self, x, routing_input)
        if lead is not None:  # per-token routing: every leading position is a row
            x = x.reshape(-1, *x.shape[len(lead):])
            if routing_input is not None:
                routing_input = routing_input.reshape(-1, routing_input.shape[-1])
        weights, aux = self.gate(_routing(self.gate, x, routing_input))
        out = self._mix(x, weights.unsqueeze(0), self.gate.max_nonzeros)[0]
        if lead is not None:
            out = out.reshape(*lead, *out.shape[1:])
        return out, aux, weights


class MultiGateMoE(_Mixture):
    """Multi-gate mixture of experts [MMoE]: shared experts, one gate and tower per task.

    Task ``t`` computes ``tower_t(sum_e w_{t,e} f_e(x))``. The experts run once for all
    tasks (in sparse execution, on the union of the rows any task routes to them).

    Args:
        experts: the shared experts: an :class:`MLPBank` (batched) or ``nn.Module`` s with
            equal output shapes.
        num_tasks: number of tasks ``>= 1``.
        gate: one of
            * a :class:`Gate` used as a template: the tasks get a gate bank
              (:func:`~compactnn.moe.gates.gate_bank`) of ``num_tasks`` freshly initialized
              gates of its kind and configuration, computed in one pass;
            * a :class:`~compactnn.moe.gates.GateBank` of ``num_tasks`` gates;
            * a sequence of ``num_tasks`` gates, or a callable ``task_index -> Gate`` (run
              one by one);
            * ``None`` (default): a bank of static ``DSelectKGate(n, k=min(2, n))``.
        towers: ``None`` (identity), an :class:`MLPBank` of ``num_tasks`` members (e.g.
            :func:`~compactnn.moe.experts.mlp_towers`, batched), a sequence of ``num_tasks``
            modules, or a callable ``task_index -> nn.Module``.
        execution: ``"auto"``, ``"dense"``, ``"sparse"`` or ``"capacity"``, as in
            :class:`MixtureOfExperts` (``k`` is the sum of the gates' nonzeros, at most n).
        capacity_factor: ``> 0``, for ``execution="capacity"``.

    ``forward(x, routing_input=None)`` returns ``(list of task outputs, aux_loss)`` with
    ``aux_loss`` summed over the gates. :meth:`mix` is the batched path without towers:
    the stacked mixtures ``(T, batch, ...)``.
    """

    def __init__(self, experts: Experts, num_tasks: int, *,
                 gate: Gate | GateBank | Sequence[Gate] | Callable[[int], Gate] | None = None,
                 towers: MLPBank | Sequence[nn.Module] | Callable[[int], nn.Module] | None = None,
                 execution: Execution = "auto", capacity_factor: float = 1.0) -> None:
        super().__init__()
        self._setup(experts, execution, capacity_factor)
        self.num_tasks = check_int("num_tasks", num_tasks, minimum=1)
        n = len(self.experts)

        if gate is None:
            gate = DSelectKGate(n, k=min(2, n))
        if isinstance(gate, GateBank):
            if gate.num_tasks != num_tasks:
                raise ValueError(f"gate bank has num_tasks={gate.num_tasks}, "
                                 f"expected {num_tasks}")
            gates: GateBank | nn.ModuleList = _check_gate(gate, n)  # type: ignore[assignment]
        elif isinstance(gate, Gate):
            gates = gate_bank(_check_gate(gate, n), num_tasks)
        else:
            if isinstance(gate, Sequence | nn.ModuleList):
                gate_list = list(gate)
            elif callable(gate):
                gate_list = [gate(t) for t in range(num_tasks)]
            else:
                raise TypeError("gate must be a Gate, a GateBank, a sequence of gates or a "
                                f"callable, got {type(gate).__name__}")
            if len(gate_list) != num_tasks:
                raise ValueError(f"got {len(gate_list)} gates for num_tasks={num_tasks}")
            gates = nn.ModuleList(
                _check_gate(g, n, what=f"gate {t}") for t, g in enumerate(gate_list))
        self.gates = gates

        if towers is None:
            tower_mod: MLPBank | nn.ModuleList = nn.ModuleList(
                nn.Identity() for _ in range(num_tasks))
        elif isinstance(towers, MLPBank):
            if towers.num_members != num_tasks:
                raise ValueError(f"got {towers.num_members} towers for num_tasks={num_tasks}")
            tower_mod = towers
        elif isinstance(towers, Sequence | nn.ModuleList):
            tower_mod = nn.ModuleList(towers)
        elif callable(towers) and not isinstance(towers, nn.Module):
            tower_mod = nn.ModuleList(towers(t) for t in range(num_tasks))
        else:
            raise TypeError("towers must be None, an MLPBank, a sequence of num_tasks modules "
                            f"or a callable, got {type(towers).__name__}")
        if len(tower_mod) != num_tasks:
            raise ValueError(f"got {len(tower_mod)} towers for num_tasks={num_tasks}")
        if isinstance(tower_mod, nn.ModuleList):
            for t, tower in enumerate(tower_mod):
                if not isinstance(tower, nn.Module):
                    raise TypeError(f"tower {t} must be an nn.Module, got {type(tower).__name__}")
        self.towers = tower_mod

    @property
    def is_static(self) -> bool:
        """True when every task's gate is static (needs no routing input)."""
        if isinstance(self.gates, GateBank):
            return self.gates.is_static
        return all(g.is_static for g in self.gates)

    def reset_parameters(self) -> None:
        _reset(self.experts)
        if isinstance(self.gates, GateBank):
            self.gates.reset_parameters()
        else:
            for gate in self.gates:
                gate.reset_parameters()
        _reset(self.towers)

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, num_tasks={self.num_tasks}, "
                f"execution={self.execution!r}")

    def routing_weights(self, x: Tensor | None = None,
                        routing_input: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """All tasks' expert weights stacked, ``(T, n)`` when every gate is static, else
        ``(T, batch, n)``, and the summed aux loss. Per-example gates route on
        ``routing_input`` if given, else on ``x``."""
        r = routing_input if routing_input is not None else x
        if isinstance(self.gates, GateBank):
            return self.gates(None if self.gates.is_static else r)
        weights, aux = self.gate_weights(x, routing_input)
        batch = None if r is None else r.shape[0]
        if batch is None and not all(w.dim() == 1 for w in weights):
            raise ValueError("per-example gates need a routing input")
        return stack_weights(weights, self.num_experts, 1 if batch is None else batch), aux

    def gate_weights(self, x: Tensor | None = None,
                     routing_input: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """Each task's expert weights (``(n,)`` or ``(batch, n)``) and the summed aux loss."""
        r = routing_input if routing_input is not None else x
        if isinstance(self.gates, GateBank):
            weights, aux = self.gates(None if self.gates.is_static else r)
            return list(weights.unbind(0)), aux
        out, aux = [], None
        for gate in self.gates:
            w, a = gate(None if gate.is_static else r)
            out.append(w)
            aux = a if aux is None else aux + a
        return out, aux  # type: ignore[return-value]

    def mix(self, x: Tensor, routing_input: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The batched path: every task's mixture of expert outputs, stacked
        ``(T, batch, ...)``, and the summed aux loss (towers not applied)."""
        weights, aux = self.routing_weights(x, routing_input)
        gates = [self.gates] if isinstance(self.gates, GateBank) else list(self.gates)
        return self._mix(x, weights, _routing_width(gates)), aux

    def apply_towers(self, mixed: Tensor) -> list[Tensor]:
        """Task ``t``'s tower on ``mixed[t]``; one output per task."""
        if isinstance(self.towers, MLPBank):
            return self.towers.split(self.towers(mixed))
        return [tower(m) for tower, m in zip(self.towers, mixed.unbind(0), strict=True)]

    def forward(self, x: Tensor,
                routing_input: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        mixed, aux = self.mix(x, routing_input)
        return self.apply_towers(mixed), aux

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Bank-layout state loaded into per-module gates, experts or towers: split it.
        for name in ("gates", "experts", "towers"):
            child = getattr(self, name)
            if isinstance(child, nn.ModuleList):
                _split_bank_state(state_dict, prefix + name + ".", child, name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _split_bank_state(state: dict, prefix: str, modules: nn.ModuleList, what: str) -> None:
    """Rewrite bank keys under ``prefix`` (``weights.0``, ``z_logits``, ``proj.weight``...)
    as the keys of the per-module ``modules``, or explain why that is impossible."""
    keys = [k for k in state if k.startswith(prefix)]
    bank_keys = [k for k in keys if not k[len(prefix):].split(".")[0].isdigit()]
    if not bank_keys:
        return
    sub = {k[len(prefix):]: state[k] for k in bank_keys}
    first = modules[0]
    if not isinstance(first, Gate | nn.Sequential):
        raise ValueError(f"the state holds {what} as a bank ({sorted(sub)}), which converts "
                         f"only to gates or nn.Sequential MLPs, not {type(first).__name__}")
    if isinstance(first, Gate):
        bank = gate_bank(first, len(modules))
        parts = bank.split_state(sub)
    else:
        linears = [m for m in first if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"the state holds {what} as an MLP bank; module 0 has no "
                             "nn.Linear layers to take it")
        outs = [[m for m in mod if isinstance(m, nn.Linear)][-1].out_features
                for mod in modules]
        bank = MLPBank(len(modules), linears[0].in_features,
                       [m.out_features for m in linears[:-1]], outs,
                       bias=linears[0].bias is not None)
        parts = bank.split_state(sub)
        positions = [i for i, m in enumerate(first) if isinstance(m, nn.Linear)]
        remap = dict(zip(bank.linear_positions(), positions, strict=True))
        parts = [{f"{remap[int(k.split('.')[0])]}.{k.split('.')[1]}": v for k, v in p.items()}
                 for p in parts]
    for k in bank_keys:
        del state[k]
    for t, part in enumerate(parts):
        for k, v in part.items():
            state[f"{prefix}{t}.{k}"] = v
