"""The DSelect-k gate [DSK]: smooth, and exactly sparse once its selectors saturate.

The maths is written once, in functions over arbitrary leading axes, so that one gate
(logits ``(k, m)`` or ``(batch, k, m)``) and a bank of ``T`` gates (``(T, k, m)`` or
``(T, batch, k, m)``, see :mod:`compactnn.moe.gates.bank`) compute exactly the same thing.

[DSK] Hazimeh et al. DSelect-k: Differentiable Selection in the Mixture of Experts with
Applications to Multi-Task Learning. NeurIPS 2021, arXiv 2106.03760.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float

from .base import (
    Gate,
    Reduction,
    check_input_dim,
    check_k,
    check_num_experts,
    check_reg,
    reduce_batch,
    zero_like,
)
from .dselect_k_schedule import (
    check_schedule_options,
    non_default,
    project_logits_,
    saturation_fraction,
    scheduled_values,
    uses_steps,
)

__all__ = [
    "ENTROPY_EPS",
    "GAMMA_RANGE",
    "DSelectKGate",
    "all_code_outputs",
    "check_gamma",
    "dselect_k_regularization",
    "init_dselect_k_",
    "mix_selectors",
    "num_bits",
    "smooth_step",
]

#: Constant inside the logarithm of the entropy regularizer, as in the official DSelect-k code.
ENTROPY_EPS = 1e-6

#: Accepted smooth-step widths. Outside it the gate is useless in float32: below, the
#: smooth-step is a hard step whose derivative (``1.5 / gamma``) overflows; above, the
#: official initialization ``U(-gamma/100, gamma/100)`` is not representable and the
#: derivative underflows to 0, so the selectors never learn.
GAMMA_RANGE = (1e-4, 1e4)


def check_gamma(gamma: Any) -> float:
    return check_float("gamma", gamma, minimum=GAMMA_RANGE[0], maximum=GAMMA_RANGE[1])


def num_bits(num_experts: int) -> int:
    """``m = ceil(log2 n)``: the bits of a selector's code."""
    return max(1, math.ceil(math.log2(num_experts)))


def smooth_step(t: Tensor, gamma: float = 1.0) -> Tensor:
    """The smooth-step function of [DSK] (section 3.1, eq. 2).

    ``S(t) = 0`` for ``t <= -gamma/2``, ``1`` for ``t >= gamma/2`` and
    ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2`` in between. It is continuously differentiable,
    and reaches exactly 0 and 1 (where its derivative is exactly 0).

    It is evaluated as ``-2u^3 + 3u/2 + 1/2`` with ``u = t/gamma`` clamped to
    ``[-1/2, 1/2]``: the same polynomial, but no power of ``gamma`` is formed (which
    would under- or overflow) and huge logits cannot overflow the cube. At ``u = +-1/2``
    the polynomial is exactly 0 or 1 in floating point.
    """
    gamma = check_gamma(gamma)
    u = (t / gamma).clamp(-0.5, 0.5)
    return (-2.0 * u * u + 1.5) * u + 0.5


def all_code_outputs(s: Tensor) -> Tensor:
    """Outputs of single-expert selectors for all ``2**m`` codes ([DSK] eq. 3).

    ``s`` holds smooth-step activations with the bits on the last axis, shape ``(..., m)``.
    Code ``c`` gets ``prod_j (s_j if bit j of c is 1 else 1 - s_j)`` with the codes written
    most-significant-bit first (``s[..., 0]`` is the top bit), as ``numpy.binary_repr`` does
    in the official code. The result, shape ``(..., 2**m)``, sums to 1 over the last axis.
    """
    # Bits are added from the least significant (s[..., -1]) up: prepending bit j as the new
    # most significant bit doubles the codes by concatenation, a contiguous copy.
    last = s[..., -1:]
    out = torch.cat((1 - last, last), dim=-1)
    for j in range(s.shape[-1] - 2, -1, -1):
        bit = s[..., j : j + 1]
        out = torch.cat((out * (1 - bit), out * bit), dim=-1)
    return out


def mix_selectors(r: Tensor, w: Tensor) -> Tensor:
    """``q = sum_i softmax(w)_i r_i`` ([DSK] eq. 4): ``r`` ``(..., k, n)``, ``w`` ``(..., k)``."""
    return (torch.softmax(w, dim=-1).unsqueeze(-1) * r).sum(dim=-2)


def dselect_k_regularization(r: Tensor, *, num_experts: int, entropy_reg: float,
                             penalty_eps: float, per_example: bool,
                             reduction: Reduction = "sum") -> Tensor:
    """Entropy regularizer plus unreachable-code penalty of reachable selector outputs
    ``r`` of shape ``(..., k, n)``; with ``per_example`` the first axis is the batch and is
    reduced. Returns one value per remaining leading index (a scalar for one gate, ``(T,)``
    for a bank, whose per-example outputs are ``(batch, T, k, n)``)."""
    lead = r.shape[:-2]
    if per_example:
        lead = lead[1:]
    aux = torch.zeros(lead, dtype=r.dtype, device=r.device)
    if entropy_reg > 0:
        entropy = -(r * torch.log(r + ENTROPY_EPS)).sum(dim=(-2, -1))
        if per_example:
            entropy = reduce_batch(entropy, reduction)
        aux = aux + entropy_reg * entropy
    if num_experts != 2 ** num_bits(num_experts):
        mass = r.sum(dim=-1).clamp_min(penalty_eps)
        penalty = (1.0 / mass).sum(dim=-1)
        if per_example:
            penalty = reduce_batch(penalty, reduction)
        aux = aux + penalty
    return aux


class DSelectKGate(Gate):
    """The DSelect-k gate of [DSK].

    ``m = ceil(log2 n)`` bits encode an expert. Each of the ``k`` single-expert selectors has
    ``m`` logits ``z``; expert ``i`` receives ``r_i(z) = prod_j S(z_j)^{b_j(i)}
    (1 - S(z_j))^{1 - b_j(i)}`` with ``S`` the :func:`smooth_step` and ``b_j(i)`` bit ``j``
    of ``i`` written most-significant-bit first ([DSK] eq. 3). The selectors are mixed by a
    softmax over ``k`` logits ``w``: ``q = sum_i softmax(w)_i r(z_i)`` ([DSK] eq. 4).

    * Static (``input_dim=None``, [DSK] section 3.2): parameters ``z_logits`` of shape
      ``(k, m)`` and ``w_logits`` of shape ``(k,)``; weights of shape ``(n,)``.
    * Per-example (section 3.3): ``z_proj``, a linear map to ``k*m`` outputs read
      selector-major as ``(k, m)``, and ``w_proj``, a linear map to ``k`` outputs; weights of
      shape ``(batch, n)``.

    Initialization follows the official code: ``z`` parameters (for the per-example gate,
    the weight and bias of ``z_proj``) uniform in ``(-gamma/100, gamma/100)``, ``w``
    parameters uniform in ``(-0.05, 0.05)``.

    Auxiliary loss (training mode only, as in the official code):

    * ``entropy_reg * sum_selectors H(r(z_i))`` with ``H(p) = -sum_c p_c log(p_c + 1e-6)``
      over the selector's (reachable) code distribution; it pushes each selector to one-hot.
    * when ``n`` is not a power of two, only codes ``0..n-1`` are experts; weight on the
      other codes is dropped (the weights are *not* renormalized) and the official penalty
      ``sum_selectors 1 / sum_{c<n} r_c(z_i)`` is added (it equals 1 per selector once the
      reachable outputs sum to 1). It is infinite when a selector saturates onto an
      unreachable code; here the denominator is clamped at ``penalty_eps``, so the value
      equals the official one whenever the reachable mass is at least ``penalty_eps``,
      is capped at ``1/penalty_eps`` per selector otherwise, and gradients stay finite
      (zero for a selector whose reachable mass is below ``penalty_eps``, where the
      official gradient is NaN).

    For the per-example gate both terms are per example and the official code *sums* them
    over the batch (``reduction="sum"``, the default). ``reduction="mean"`` averages them
    over the batch instead, so their scale does not grow with the batch size.

    Args:
        num_experts: ``n >= 2``.
        k: number of selectors, ``1 <= k <= n``: at most ``k`` nonzero weights once sparse.
        gamma: width of the smooth-step's cubic region, in ``GAMMA_RANGE``.
        input_dim: width of the routing input, or ``None`` for a static gate.
        entropy_reg: weight ``>= 0`` of the entropy regularizer (0 disables it).
        reduction: ``"sum"`` (official) or ``"mean"`` over the batch, per-example gate only.
        penalty_eps: floor of the reachable mass in the unreachable-code penalty.
        entropy_reg_start, gamma_start, schedule_steps, warmup_steps, warmup_margin:
            schedules and warm-up that keep the routing from freezing early (see
            :mod:`compactnn.moe.gates.dselect_k_schedule`; all off by default). With any of
            them on, the gate counts its training steps in the buffer ``steps_done``.
    """

    def __init__(self, num_experts: int, *, k: int, gamma: float = 1.0,
                 input_dim: int | None = None, entropy_reg: float = 0.0,
                 reduction: Reduction = "sum", penalty_eps: float = 1e-6,
                 **schedule: Any) -> None:
        super().__init__()
        self.num_experts = check_num_experts(num_experts)
        self.k = check_k(k, self.num_experts)
        self.max_nonzeros = self.k
        self.gamma = check_gamma(gamma)
        self.input_dim = check_input_dim(input_dim)
        self.entropy_reg = check_reg("entropy_reg", entropy_reg)
        self.reduction: Reduction = check_choice("reduction", reduction, ("sum", "mean"))
        self.penalty_eps = check_float("penalty_eps", penalty_eps, minimum=0.0,
                                       min_inclusive=False, maximum=1.0)
        self.schedule = check_schedule_options(schedule, static=self.input_dim is None,
                                               check_gamma=check_gamma)
        if uses_steps(self.schedule):
            self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        else:
            self.steps_done = None
        self.num_binary = num_bits(self.num_experts)
        self.power_of_2 = self.num_experts == 2**self.num_binary
        km = self.k * self.num_binary
        if self.input_dim is None:
            self.z_logits = nn.Parameter(torch.empty(self.k, self.num_binary))
            self.w_logits = nn.Parameter(torch.empty(self.k))
            self.z_proj = None
            self.w_proj = None
        else:
            self.register_parameter("z_logits", None)
            self.register_parameter("w_logits", None)
            self.z_proj = nn.Linear(self.input_dim, km)
            self.w_proj = nn.Linear(self.input_dim, self.k)
        self.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"num_experts": self.num_experts, "k": self.k, "gamma": self.gamma,
                "input_dim": self.input_dim, "entropy_reg": self.entropy_reg,
                "reduction": self.reduction, "penalty_eps": self.penalty_eps,
                **non_default(self.schedule)}

    def reset_parameters(self) -> None:
        """Official initialization: ``U(-gamma/100, gamma/100)`` for z, ``U(-0.05, 0.05)`` for w."""
        init_dselect_k_(self, self.gamma)

    def current(self) -> tuple[float, float, bool]:
        """``(gamma, entropy_reg, warming_up)`` at the gate's current training step."""
        step = 0 if self.steps_done is None else int(self.steps_done)
        return scheduled_values(self.schedule, self.gamma, self.entropy_reg, step)

    def saturation(self, x: Tensor | None = None) -> float:
        """The fraction of selector logits on the smooth-step's flat part (zero
        gradient) at the current width; ``x`` the routing batch of a per-example gate."""
        with torch.no_grad():
            z, _ = self.logits(x)
        return saturation_fraction(z, self.current()[0])

    # -- pieces of the forward pass, public for inspection and tests

    def logits(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Selector logits ``Z``, shape ``([batch,] k, m)``, and weight logits, ``([batch,] k)``."""
        x = self._routing_input(x)
        if x is None:
            return self.z_logits, self.w_logits
        z = self.z_proj(x).view(x.shape[0], self.k, self.num_binary)
        return z, self.w_proj(x)

    def selector_outputs(self, x: Tensor | None = None, all_codes: bool = False) -> Tensor:
        """Single-expert selector outputs ``r(S(Z_i))``, shape ``([batch,] k, n)``.

        With ``all_codes=True`` the unreachable codes are kept: shape ``([batch,] k, 2**m)``,
        summing to 1 over the last axis.
        """
        z, _ = self.logits(x)
        r = all_code_outputs(smooth_step(z, self.current()[0]))
        return r if all_codes else r[..., : self.num_experts]

    def regularization(self, selector_outputs: Tensor) -> Tensor:
        """Entropy regularizer plus unreachable-code penalty for reachable selector outputs
        of shape ``(k, n)`` (static) or ``(batch, k, n)``."""
        return dselect_k_regularization(
            selector_outputs, num_experts=self.num_experts, entropy_reg=self.entropy_reg,
            penalty_eps=self.penalty_eps, per_example=selector_outputs.dim() == 3,
            reduction=self.reduction)

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Expert weights ``q`` ([DSK] eq. 4) and the auxiliary loss."""
        gamma, entropy_reg, warming_up = self.current()
        if self.training and warming_up:
            project_logits_(self.z_logits, gamma, self.schedule["warmup_margin"])
        z, w = self.logits(x)
        r = all_code_outputs(smooth_step(z, gamma))[..., : self.num_experts]
        weights = mix_selectors(r, w)
        if self.training:
            aux = dselect_k_regularization(
                r, num_experts=self.num_experts, entropy_reg=entropy_reg,
                penalty_eps=self.penalty_eps, per_example=r.dim() == 3,
                reduction=self.reduction)
            if self.steps_done is not None:
                self.steps_done += 1
        else:
            aux = zero_like(weights)
        return weights, aux


def init_dselect_k_(gate: nn.Module, gamma: float) -> None:
    """The official initialization, for a gate or a bank of gates (same parameter names):
    ``U(-gamma/100, gamma/100)`` for the z parameters, ``U(-0.05, 0.05)`` for the w ones."""
    bound = gamma / 100
    with torch.no_grad():
        if gate.z_proj is None:
            gate.z_logits.uniform_(-bound, bound)
            gate.w_logits.uniform_(-0.05, 0.05)
        else:
            gate.z_proj.weight.uniform_(-bound, bound)
            gate.z_proj.bias.uniform_(-bound, bound)
            gate.w_proj.weight.uniform_(-0.05, 0.05)
            gate.w_proj.bias.uniform_(-0.05, 0.05)
