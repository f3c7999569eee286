"""Mixture-of-experts layers: one gate ([DSK], [TopK]) or one gate per task ([MMoE]).

Experts are any ``nn.Module`` mapping a batch ``(batch, ...)`` to outputs of equal shapes
``(batch, ...)``. The layers return ``(output, aux_loss)``; add ``aux_loss`` (the gates'
regularizers, zero in eval mode) to the training loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from .dispatch import EXECUTIONS, Execution, combine
from .gates import DSelectKGate, Gate

__all__ = ["MixtureOfExperts", "MultiGateMoE", "mlp_experts"]


def mlp_experts(
    num_experts: int,
    in_features: int,
    hidden_features: int | Sequence[int],
    out_features: int,
    activation: Callable[[], nn.Module] = nn.ReLU,
    dropout: float = 0.0,
    bias: bool = True,
) -> nn.ModuleList:
    """``num_experts`` independent MLPs ``in -> hidden... -> out``.

    Each hidden layer is ``Linear, activation()[, Dropout]``; the last layer is linear.
    """
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be a positive int, got num_experts={num_experts!r}")
    hidden = [hidden_features] if isinstance(hidden_features, int) else list(hidden_features)
    widths = [in_features, *hidden, out_features]
    for name, width in zip(("in_features", *["hidden_features"] * len(hidden), "out_features"),
                           widths, strict=True):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"{name} must be a positive int, got {name}={width!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got dropout={dropout}")

    def one() -> nn.Sequential:
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
            if i < len(widths) - 2:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers)

    return nn.ModuleList(one() for _ in range(num_experts))


def _reset(module: nn.Module) -> None:
    """Reset a module through its own ``reset_parameters`` if it has one, else its children."""
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        reset()
        return
    for child in module.children():
        _reset(child)


def _as_experts(experts: Sequence[nn.Module] | nn.ModuleList) -> nn.ModuleList:
    if isinstance(experts, nn.Module) and not isinstance(experts, nn.ModuleList):
        raise TypeError("experts must be a sequence of nn.Module (e.g. an nn.ModuleList)")
    experts = nn.ModuleList(experts)
    if len(experts) < 2:
        raise ValueError(f"need at least 2 experts, got {len(experts)}")
    for i, expert in enumerate(experts):
        if not isinstance(expert, nn.Module):
            raise TypeError(f"expert {i} must be an nn.Module, got {type(expert).__name__}")
    return experts


def _check_execution(execution: str) -> Execution:
    if execution not in EXECUTIONS:
        raise ValueError(f"execution must be one of {EXECUTIONS}, got execution={execution!r}")
    return execution  # type: ignore[return-value]


def _check_gate(gate: object, num_experts: int, what: str = "gate") -> Gate:
    if not isinstance(gate, Gate):
        raise TypeError(f"{what} must be a compactnn.moe Gate, got {type(gate).__name__}")
    if gate.num_experts != num_experts:
        raise ValueError(
            f"{what} has num_experts={gate.num_experts} but there are {num_experts} experts"
        )
    return gate


def _routing(gate: Gate, x: Tensor, routing_input: Tensor | None) -> Tensor | None:
    if gate.is_static:
        return None
    return x if routing_input is None else routing_input


class MixtureOfExperts(nn.Module):
    """``y = sum_e w_e f_e(x)`` with the weights ``w`` of one gate.

    Args:
        experts: the experts, ``nn.Module`` s with equal output shapes.
        gate: a :class:`~compactnn.moe.gates.Gate` over ``len(experts)`` experts. A static
            gate's weights ``(n,)`` are broadcast over the batch.
        execution: ``"dense"`` runs every expert on every row; ``"sparse"`` runs only the
            experts that carry weight, on the rows that need them; ``"auto"`` (default) is
            sparse whenever the weights have exact zeros.

    ``forward(x, routing_input=None)`` returns ``(output, aux_loss)``. A per-example gate
    routes on ``routing_input`` if given, else on ``x``.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module] | nn.ModuleList,
        gate: Gate,
        execution: Execution = "auto",
    ) -> None:
        super().__init__()
        self.experts = _as_experts(experts)
        self.gate = _check_gate(gate, len(self.experts))
        self.execution = _check_execution(execution)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def reset_parameters(self) -> None:
        for expert in self.experts:
            _reset(expert)
        self.gate.reset_parameters()

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, execution={self.execution!r}"

    def forward(self, x: Tensor, routing_input: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weights, aux = self.gate(_routing(self.gate, x, routing_input))
        (output,) = combine(self.experts, x, [weights], self.execution)
        return output, aux


class MultiGateMoE(nn.Module):
    """Multi-gate mixture of experts [MMoE]: shared experts, one gate and tower per task.

    Task ``t`` computes ``tower_t(sum_e w_{t,e} f_e(x))``. The experts run once for all
    tasks (in sparse execution, on the union of the rows any task routes to them).

    Args:
        experts: the shared experts, ``nn.Module`` s with equal output shapes.
        num_tasks: number of tasks ``>= 1``.
        gate: one of
            * a :class:`Gate` used as a template: each task gets a deep copy with freshly
              reset parameters;
            * a sequence of ``num_tasks`` gates;
            * a callable ``task_index -> Gate``;
            * ``None`` (default): a static ``DSelectKGate(n, k=min(2, n))`` per task.
        towers: ``None`` (identity), a sequence of ``num_tasks`` modules, or a callable
            ``task_index -> nn.Module``.
        execution: ``"auto"``, ``"dense"`` or ``"sparse"``, as in :class:`MixtureOfExperts`.

    ``forward(x, routing_input=None)`` returns ``(list of task outputs, aux_loss)`` with
    ``aux_loss`` summed over the gates.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module] | nn.ModuleList,
        num_tasks: int,
        gate: Gate | Sequence[Gate] | Callable[[int], Gate] | None = None,
        towers: Sequence[nn.Module] | Callable[[int], nn.Module] | None = None,
        execution: Execution = "auto",
    ) -> None:
        super().__init__()
        self.experts = _as_experts(experts)
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got num_tasks={num_tasks!r}")
        self.num_tasks = num_tasks
        self.execution = _check_execution(execution)
        n = len(self.experts)

        if gate is None:
            gates = [DSelectKGate(n, k=min(2, n)) for _ in range(num_tasks)]
        elif isinstance(gate, Gate):
            gates = []
            for _ in range(num_tasks):
                g = copy.deepcopy(gate)
                g.reset_parameters()
                gates.append(g)
        elif isinstance(gate, Sequence | nn.ModuleList):
            gates = list(gate)
        elif callable(gate):
            gates = [gate(t) for t in range(num_tasks)]
        else:
            raise TypeError(f"gate must be a Gate, a sequence of gates or a callable, got {gate!r}")
        if len(gates) != num_tasks:
            raise ValueError(f"got {len(gates)} gates for num_tasks={num_tasks}")
        self.gates = nn.ModuleList(
            _check_gate(g, n, what=f"gate {t}") for t, g in enumerate(gates)
        )

        if towers is None:
            tower_list: list[nn.Module] = [nn.Identity() for _ in range(num_tasks)]
        elif isinstance(towers, Sequence | nn.ModuleList):
            tower_list = list(towers)
        elif callable(towers) and not isinstance(towers, nn.Module):
            tower_list = [towers(t) for t in range(num_tasks)]
        else:
            raise TypeError(
                "towers must be None, a sequence of num_tasks modules or a callable, "
                f"got {type(towers).__name__}"
            )
        if len(tower_list) != num_tasks:
            raise ValueError(f"got {len(tower_list)} towers for num_tasks={num_tasks}")
        for t, tower in enumerate(tower_list):
            if not isinstance(tower, nn.Module):
                raise TypeError(f"tower {t} must be an nn.Module, got {type(tower).__name__}")
        self.towers = nn.ModuleList(tower_list)

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    def reset_parameters(self) -> None:
        for expert in self.experts:
            _reset(expert)
        for gate in self.gates:
            gate.reset_parameters()
        for tower in self.towers:
            _reset(tower)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, num_tasks={self.num_tasks}, "
            f"execution={self.execution!r}"
        )

    def gate_weights(
        self, x: Tensor | None = None, routing_input: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """Each task's expert weights (``(n,)`` or ``(batch, n)``) and the summed aux loss."""
        weights = []
        aux = None
        for gate in self.gates:
            if gate.is_static:
                w, a = gate(None)
            else:
                r = routing_input if routing_input is not None else x
                w, a = gate(r)
            weights.append(w)
            aux = a if aux is None else aux + a
        return weights, aux  # type: ignore[return-value]

    def forward(
        self, x: Tensor, routing_input: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        weights, aux = self.gate_weights(x, routing_input)
        mixed = combine(self.experts, x, weights, self.execution)
        outputs = [tower(m) for tower, m in zip(self.towers, mixed, strict=True)]
        return outputs, aux
