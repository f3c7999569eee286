"""Gate banks: ``T`` gates of one kind in one module, computed in one pass.

A bank holds the parameters of ``T`` gates stacked on a leading task axis (static
DSelect-k: ``z_logits`` ``(T, k, m)`` and ``w_logits`` ``(T, k)``) or, for per-example
gates, one ``nn.Linear`` from the routing input to all ``T`` gates' outputs, task-major
(rows ``t*r .. (t+1)*r - 1`` are task ``t``'s ``r`` rows of the single gate's map). It runs
the same functions as the single gates over the extra axis, so task ``t`` of a bank equals
a separate gate holding slice ``t`` of its parameters, in value and gradient.

``bank(x=None) -> (weights, aux_loss)`` with weights ``(T, n)`` (static) or
``(T, batch, n)`` and ``aux_loss`` summed over the tasks; :meth:`GateBank.task_forward`
keeps the per-task auxiliary losses ``(T,)``.

Parameters are named as in the single gates, so a bank's state converts to and from ``T``
gates' states (:meth:`GateBank.split_state`, :meth:`GateBank.stack_states`); a bank loads a
state dict saved from ``T`` separate gates (keys ``"<t>.<name>"``) directly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_int

from .base import Gate, check_routing_input
from .dselect_k import (
    DSelectKGate,
    all_code_outputs,
    dselect_k_regularization,
    init_dselect_k_,
    mix_selectors,
    num_bits,
    smooth_step,
)
from .dselect_k_schedule import (
    SCHEDULE_DEFAULTS,
    project_logits_,
    saturation_fraction,
    scheduled_values,
    uses_steps,
)
from .softmax import SoftmaxGate
from .topk import NoisyTopKGate, noisy_route, topk_aux

__all__ = ["DSelectKBank", "GateBank", "NoisyTopKBank", "SoftmaxBank", "gate_bank"]

_PER_TASK_KEY = re.compile(r"^(\d+)\.(.+)$")


class GateBank(nn.Module):
    """``num_tasks`` gates of type :attr:`gate_type` with one configuration.

    Subclasses build the parameters; a name containing ``"proj."`` is a per-example
    linear map whose rows are task-major, every other parameter is stacked on axis 0.
    """

    gate_type: type[Gate]

    def __init__(self, num_tasks: int, num_experts: int, **options: Any) -> None:
        super().__init__()
        self.num_tasks = check_int("num_tasks", num_tasks, minimum=1)
        # The single gate validates the options and is the template of the task views.
        template = self.gate_type(num_experts, **options)
        self._config = template.config()
        self.num_experts = template.num_experts
        self.input_dim = template.input_dim
        self.max_nonzeros = template.max_nonzeros

    @property
    def is_static(self) -> bool:
        return self.input_dim is None

    def config(self) -> dict[str, Any]:
        """The single gates' constructor arguments (without ``num_tasks``)."""
        return dict(self._config)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, " + ", ".join(
            f"{k}={v!r}" for k, v in self._config.items())

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """All tasks' weights ``(T, [batch,] n)`` and the auxiliary loss summed over tasks."""
        weights, aux = self.task_forward(x)
        return weights, aux.sum()

    def task_forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """All tasks' weights and each task's auxiliary loss ``(T,)`` (0 in eval mode)."""
        raise NotImplementedError  # pragma: no cover

    def _routing_input(self, x: Tensor | None) -> Tensor | None:
        return check_routing_input(x, self.input_dim, type(self).__name__)

    def _per_task(self, y: Tensor, *shape: int) -> Tensor:
        """A task-major linear output ``(batch, T * prod(shape))`` as ``(batch, T, *shape)``.

        Per-example banks compute batch-first, on contiguous memory, and return their
        weights as a ``(T, batch, n)`` view (which the batched mixing reads back as the
        contiguous ``(batch, T, n)`` it needs)."""
        return y.view(y.shape[0], self.num_tasks, *shape)

    # -- conversion to and from separate gates

    @staticmethod
    def _is_rows(name: str) -> bool:
        return "proj." in name

    def split_state(self, state: Mapping[str, Tensor]) -> list[dict[str, Tensor]]:
        """This bank's state (keys as in :meth:`state_dict`) as ``T`` single gates' states."""
        out: list[dict[str, Tensor]] = [{} for _ in range(self.num_tasks)]
        for name, value in state.items():
            if value.dim() == 0:  # a counter shared by all tasks (steps_done)
                parts = (value,) * self.num_tasks
            else:
                parts = (value.chunk(self.num_tasks, dim=0) if self._is_rows(name)
                         else value.unbind(0))
            if len(parts) != self.num_tasks:
                raise ValueError(f"{name} of shape {tuple(value.shape)} does not split into "
                                 f"{self.num_tasks} tasks")
            for t, part in enumerate(parts):
                out[t][name] = part
        return out

    def stack_states(self, states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """``T`` single gates' states as one bank state."""
        if len(states) != self.num_tasks:
            raise ValueError(f"got {len(states)} gate states for num_tasks={self.num_tasks}")
        names = list(states[0])
        for t, s in enumerate(states):
            if sorted(s) != sorted(names):
                raise ValueError(f"gate {t} has parameters {sorted(s)}, gate 0 has "
                                 f"{sorted(names)}: the gates differ in kind")
        return {name: states[0][name].clone() if states[0][name].dim() == 0
                else (torch.cat if self._is_rows(name) else torch.stack)(
                    [s[name] for s in states], dim=0) for name in names}

    def gate(self, t: int) -> Gate:
        """A separate gate holding a *copy* of task ``t``'s parameters (a snapshot for
        inspection: training it does not change the bank)."""
        t = check_int("t", t, minimum=-self.num_tasks, maximum=self.num_tasks - 1)
        t %= self.num_tasks
        reference = next(iter(self.parameters()))
        single = self.gate_type(**self._config).to(reference.device, reference.dtype)
        state = {k: v.detach().clone() for k, v in self.split_state(self.state_dict())[t].items()}
        single.load_state_dict(state)
        single.train(self.training)
        return single

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, t: int) -> Gate:
        return self.gate(t)

    def __iter__(self) -> Iterator[Gate]:
        return (self.gate(t) for t in range(self.num_tasks))

    @classmethod
    def from_gates(cls, gates: Sequence[Gate]) -> GateBank:
        """A bank holding copies of ``gates``' parameters (same kind and configuration)."""
        gates = list(gates)
        if not gates:
            raise ValueError("need at least one gate to build a bank")
        for t, g in enumerate(gates):
            if type(g) is not cls.gate_type:
                raise TypeError(f"gate {t} is a {type(g).__name__}; {cls.__name__} holds "
                                f"{cls.gate_type.__name__}s")
            if g.config() != gates[0].config():
                raise ValueError(f"gate {t} has configuration {g.config()}, gate 0 has "
                                 f"{gates[0].config()}: a bank holds gates of one configuration")
        reference = next(iter(gates[0].parameters()))
        bank = cls(len(gates), **gates[0].config()).to(reference.device, reference.dtype)
        bank.load_state_dict(bank.stack_states([g.state_dict() for g in gates]))
        return bank

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A state saved from T separate gates (keys "<prefix><t>.<name>") is stacked.
        per_task: dict[int, dict[str, Tensor]] = {}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            match = _PER_TASK_KEY.match(key[len(prefix):])
            if match:
                per_task.setdefault(int(match.group(1)), {})[match.group(2)] = state_dict.pop(key)
        if per_task:
            if sorted(per_task) != list(range(self.num_tasks)):
                raise ValueError(
                    f"state holds separate gates {sorted(per_task)} under {prefix!r}, but this "
                    f"bank has {self.num_tasks} tasks")
            stacked = self.stack_states([per_task[t] for t in range(self.num_tasks)])
            state_dict.update({prefix + k: v for k, v in stacked.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class DSelectKBank(GateBank):
    """``T`` :class:`DSelectKGate` s: ``z_logits`` ``(T, k, m)``, ``w_logits`` ``(T, k)``, or
    ``z_proj`` to ``T*k*m`` and ``w_proj`` to ``T*k`` outputs (task-major, then
    selector-major as in the single gate). Arguments as :class:`DSelectKGate`."""

    gate_type = DSelectKGate

    def __init__(self, num_tasks: int, num_experts: int, **options: Any) -> None:
        super().__init__(num_tasks, num_experts, **options)
        c = self._config
        self.k, self.gamma = c["k"], c["gamma"]
        self.schedule = {key: c.get(key, default) for key, default in SCHEDULE_DEFAULTS.items()}
        if uses_steps(self.schedule):  # one counter: every task's gate takes each step
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        else:
            self.steps_done = None
        self.num_binary = num_bits(self.num_experts)
        T, k, m = self.num_tasks, self.k, self.num_binary
        if self.input_dim is None:
            self.z_logits = nn.Parameter(torch.empty(T, k, m))
            self.w_logits = nn.Parameter(torch.empty(T, k))
            self.z_proj = self.w_proj = None
        else:
            self.register_parameter("z_logits", None)
            self.register_parameter("w_logits", None)
            self.z_proj = nn.Linear(self.input_dim, T * k * m)
            self.w_proj = nn.Linear(self.input_dim, T * k)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_dselect_k_(self, self.gamma)

    def logits(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Selector logits ``(T, k, m)`` and weight logits ``(T, k)`` (static), or
        ``(batch, T, k, m)`` and ``(batch, T, k)`` (per-example: batch first)."""
        x = self._routing_input(x)
        if x is None:
            return self.z_logits, self.w_logits
        return (self._per_task(self.z_proj(x), self.k, self.num_binary),
                self._per_task(self.w_proj(x), self.k))

    def current(self) -> tuple[float, float, bool]:
        """``(gamma, entropy_reg, warming_up)`` at the bank's current training step."""
        step = 0 if self.steps_done is None else int(self.steps_done)
        return scheduled_values(self.schedule, self.gamma, self._config["entropy_reg"], step)

    def saturation(self, x: Tensor | None = None, per_task: bool = False) -> float | Tensor:
        """The fraction of selector logits on the smooth-step's flat part at the current
        width, over all tasks (or ``(T,)``, one per task, with ``per_task``)."""
        with torch.no_grad():
            z, _ = self.logits(x)
        gamma = self.current()[0]
        if not per_task:
            return saturation_fraction(z, gamma)
        z = z if self.input_dim is None else z.transpose(0, 1)
        return torch.tensor([saturation_fraction(zt, gamma) for zt in z])

    def selector_outputs(self, x: Tensor | None = None) -> Tensor:
        """Reachable selector outputs ``(T, [batch,] k, n)``."""
        z, _ = self.logits(x)
        r = all_code_outputs(smooth_step(z, self.current()[0]))[..., : self.num_experts]
        return r if self.input_dim is None else r.transpose(0, 1)

    def task_forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        gamma, entropy_reg, warming_up = self.current()
        if self.training and warming_up:
            project_logits_(self.z_logits, gamma, self.schedule["warmup_margin"])
        z, w = self.logits(x)
        r = all_code_outputs(smooth_step(z, gamma))[..., : self.num_experts]
        weights = mix_selectors(r, w)
        per_example = self.input_dim is not None
        if not self.training:
            aux = weights.new_zeros(self.num_tasks)
        else:
            aux = dselect_k_regularization(
                r, num_experts=self.num_experts, entropy_reg=entropy_reg,
                penalty_eps=self._config["penalty_eps"], per_example=per_example,
                reduction=self._config["reduction"])
            if self.steps_done is not None:
                self.steps_done += 1
        return (weights.transpose(0, 1) if per_example else weights), aux


class SoftmaxBank(GateBank):
    """``T`` :class:`SoftmaxGate` s: ``logits`` ``(T, n)`` or ``proj`` to ``T*n`` outputs."""

    gate_type = SoftmaxGate

    def __init__(self, num_tasks: int, num_experts: int, **options: Any) -> None:
        super().__init__(num_tasks, num_experts, **options)
        if self.input_dim is None:
            self.logits = nn.Parameter(torch.zeros(self.num_tasks, self.num_experts))
            self.proj = None
        else:
            self.register_parameter("logits", None)
            self.proj = nn.Linear(self.input_dim, self.num_tasks * self.num_experts)
        self.reset_parameters()

    # Zero logits, or nn.Linear's default U(+-1/sqrt(fan_in)) with fan_in = input_dim as
    # in each gate: the single gate's initialization, on the same parameter names.
    reset_parameters = SoftmaxGate.reset_parameters

    def task_forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._routing_input(x)
        logits = self.logits if x is None else self._per_task(self.proj(x), self.num_experts)
        weights = torch.softmax(logits, dim=-1)
        weights = weights if x is None else weights.transpose(0, 1)
        return weights, weights.new_zeros(self.num_tasks)


class NoisyTopKBank(GateBank):
    """``T`` :class:`NoisyTopKGate` s: ``gate_logits``/``noise_logits`` ``(T, n)``, or bias-free
    ``gate_proj``/``noise_proj`` to ``T*n`` outputs. Each task draws its own noise."""

    gate_type = NoisyTopKGate

    def __init__(self, num_tasks: int, num_experts: int, **options: Any) -> None:
        super().__init__(num_tasks, num_experts, **options)
        c = self._config
        self.k, self.noisy = c["k"], c["noisy"]
        T, n = self.num_tasks, self.num_experts
        if self.input_dim is None:
            self.gate_logits = nn.Parameter(torch.zeros(T, n))
            self.noise_logits = nn.Parameter(torch.zeros(T, n))
            self.gate_proj = self.noise_proj = None
        else:
            self.register_parameter("gate_logits", None)
            self.register_parameter("noise_logits", None)
            self.gate_proj = nn.Linear(self.input_dim, T * n, bias=False)
            self.noise_proj = nn.Linear(self.input_dim, T * n, bias=False)
        self.reset_parameters()

    # Zero initialization, and noise shaped like the logits ((T, n) or (batch, T, n)),
    # exactly as in the single gate.
    reset_parameters = NoisyTopKGate.reset_parameters
    draw_noise = NoisyTopKGate.draw_noise

    def task_forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._routing_input(x)
        if x is None:
            clean, raw_noise = self.gate_logits, self.noise_logits
        else:
            n = self.num_experts
            clean = self._per_task(self.gate_proj(x), n)
            raw_noise = self._per_task(self.noise_proj(x), n)
        weights, logits, top_values, noise_std = noisy_route(self, clean, raw_noise)
        if not self.training:
            aux = weights.new_zeros(self.num_tasks)
        else:
            aux = topk_aux(weights, clean, logits, noise_std, top_values, k=self.k,
                           importance_reg=self._config["importance_reg"],
                           load_reg=self._config["load_reg"], per_example=x is not None)
        return (weights if x is None else weights.transpose(0, 1)), aux


_BANKS: dict[type[Gate], type[GateBank]] = {
    DSelectKGate: DSelectKBank, SoftmaxGate: SoftmaxBank, NoisyTopKGate: NoisyTopKBank}


def gate_bank(template: Gate, num_tasks: int) -> GateBank:
    """A bank of ``num_tasks`` gates configured like ``template``, each freshly initialized
    (as ``num_tasks`` deep copies of ``template`` with reset parameters would be)."""
    bank_type = _BANKS.get(type(template))
    if bank_type is None:
        raise TypeError(f"no bank for gates of type {type(template).__name__}; "
                        f"banks exist for {', '.join(t.__name__ for t in _BANKS)}")
    reference = next(iter(template.parameters()))
    bank = bank_type(num_tasks, **template.config())
    return bank.to(reference.device, reference.dtype).train(template.training)
