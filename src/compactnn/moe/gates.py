"""Gates for mixtures of experts: DSelect-k [DSK], softmax [MMoE] and noisy Top-k [TopK].

Every gate shares one interface (:class:`Gate`):

* ``gate(x=None) -> (weights, aux_loss)``. A *static* gate (``input_dim=None``) has one
  weight vector per gate (one gate per task) and needs no routing input; its weights have
  shape ``(num_experts,)``. A *per-example* gate maps a routing input ``x`` of shape
  ``(batch, input_dim)`` to weights of shape ``(batch, num_experts)``.
* ``aux_loss`` is a scalar tensor: the gate's training regularizer, to be added to the
  task loss by the caller. Gates never call ``backward``. It is zero in eval mode
  (``self.training`` False), as in the official DSelect-k code, which adds its
  regularizers only when training; :meth:`DSelectKGate.regularization` computes it on demand.

References:
    [DSK] Hazimeh et al. DSelect-k: Differentiable Selection in the Mixture of Experts
    with Applications to Multi-Task Learning. NeurIPS 2021, arXiv 2106.03760.
    [MMoE] Ma et al. Modeling Task Relationships in Multi-task Learning with Multi-gate
    Mixture-of-Experts. KDD 2018.
    [TopK] Shazeer et al. Outrageously Large Neural Networks: The Sparsely-Gated
    Mixture-of-Experts Layer. ICLR 2017.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ENTROPY_EPS",
    "DSelectKGate",
    "Gate",
    "NoisyTopKGate",
    "SoftmaxGate",
    "cv_squared",
    "smooth_step",
]

#: Constant inside the logarithm of the entropy regularizer, as in the official DSelect-k code.
ENTROPY_EPS = 1e-6

Reduction = Literal["sum", "mean"]


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value}")
    return value


def _check_num_experts(num_experts: object) -> int:
    return _check_int("num_experts", num_experts, 2)


def _check_k(k: object, num_experts: int) -> int:
    k = _check_int("k", k, 1)
    if k > num_experts:
        raise ValueError(f"k must be <= num_experts={num_experts}, got k={k}")
    return k


def _check_input_dim(input_dim: object) -> int | None:
    if input_dim is None:
        return None
    return _check_int("input_dim", input_dim, 1)


def _check_nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value}")
    return value


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value}")
    return value


# --------------------------------------------------------------------------- functions


def smooth_step(t: Tensor, gamma: float = 1.0) -> Tensor:
    """The smooth-step function of [DSK] (section 3.1, eq. 2).

    ``S(t) = 0`` for ``t <= -gamma/2``, ``1`` for ``t >= gamma/2`` and
    ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2`` in between. It is continuously differentiable,
    and reaches exactly 0 and 1 (where its derivative is exactly 0).
    """
    gamma = _check_positive("gamma", gamma)
    # The cubic is evaluated on t clamped to its region, so huge logits cannot overflow
    # (inf * 0 would put NaN in the gradient of the branch that torch.where discards).
    inner = t.clamp(-gamma / 2, gamma / 2)
    cubic = (-2.0 / gamma**3) * inner**3 + (1.5 / gamma) * inner + 0.5
    zero = torch.zeros((), dtype=t.dtype, device=t.device)
    one = torch.ones((), dtype=t.dtype, device=t.device)
    return torch.where(t <= -gamma / 2, zero, torch.where(t >= gamma / 2, one, cubic))


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``Var(x) / (mean(x)^2 + eps)`` over the last dim.

    The population variance is used; this is the balancing measure of [TopK] (eq. 6-7).
    """
    mean = x.mean(dim=-1)
    var = x.var(dim=-1, unbiased=False)
    return var / (mean**2 + eps)


def _all_code_outputs(s: Tensor) -> Tensor:
    """Outputs of single-expert selectors for all ``2**m`` codes ([DSK] eq. 3).

    ``s`` holds smooth-step activations with the bits on the last axis, shape ``(..., m)``.
    Code ``c`` gets ``prod_j (s_j if bit j of c is 1 else 1 - s_j)`` with the codes written
    most-significant-bit first (``s[..., 0]`` is the top bit), as ``numpy.binary_repr`` does
    in the official code. The result, shape ``(..., 2**m)``, sums to 1 over the last axis.
    """
    out = torch.ones_like(s[..., :1])
    for j in range(s.shape[-1]):
        bit = s[..., j : j + 1]
        # Appending bit j as the new least significant bit of every code seen so far.
        out = torch.stack((out * (1 - bit), out * bit), dim=-1).flatten(-2)
    return out


def _reduce_batch(value: Tensor, reduction: Reduction) -> Tensor:
    """Sum (official) or mean over the leading batch axis of a per-example quantity."""
    return value.sum() if reduction == "sum" else value.sum() / value.shape[0]


# --------------------------------------------------------------------------- base class


class Gate(nn.Module):
    """Common interface of all gates.

    Attributes:
        num_experts: the number of experts ``n``.
        input_dim: width of the routing input, or ``None`` for a static gate.
        max_nonzeros: an upper bound on the nonzeros per weight vector once the gate is
            sparse (``k`` for DSelect-k and Top-k, ``n`` for softmax).
    """

    num_experts: int
    input_dim: int | None
    max_nonzeros: int

    @property
    def is_static(self) -> bool:
        """True when the gate has one weight vector and needs no routing input."""
        return self.input_dim is None

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Return ``(weights, aux_loss)``."""
        raise NotImplementedError

    def reset_parameters(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def _routing_input(self, x: Tensor | None) -> Tensor | None:
        """Validate the routing input: ignored by static gates, required by per-example ones."""
        if self.input_dim is None:
            return None
        if x is None:
            raise ValueError(
                f"{type(self).__name__} is per-example (input_dim={self.input_dim}) and needs "
                "a routing input x of shape (batch, input_dim)"
            )
        if not isinstance(x, Tensor):
            raise TypeError(f"routing input must be a Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"routing input must have shape (batch, {self.input_dim}), "
                f"got {tuple(x.shape)}"
            )
        return x

    def _zero(self, like: Tensor) -> Tensor:
        return torch.zeros((), dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------- DSelect-k


class DSelectKGate(Gate):
    """The DSelect-k gate of [DSK]: smooth, and exactly sparse once its selectors saturate.

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
    over the batch instead, so their scale does not grow with the batch size: this is the
    one choice offered here that the official code does not offer.

    Args:
        num_experts: ``n >= 2``.
        k: number of selectors, ``1 <= k <= n``: at most ``k`` nonzero weights once sparse.
        gamma: width of the smooth-step's cubic region, ``> 0``.
        input_dim: width of the routing input, or ``None`` for a static gate.
        entropy_reg: weight ``>= 0`` of the entropy regularizer (0 disables it).
        reduction: ``"sum"`` (official) or ``"mean"`` over the batch, per-example gate only.
        penalty_eps: floor of the reachable mass in the unreachable-code penalty.
    """

    def __init__(
        self,
        num_experts: int,
        k: int,
        gamma: float = 1.0,
        input_dim: int | None = None,
        entropy_reg: float = 0.0,
        reduction: Reduction = "sum",
        penalty_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_experts = _check_num_experts(num_experts)
        self.k = _check_k(k, self.num_experts)
        self.max_nonzeros = self.k
        self.gamma = _check_positive("gamma", gamma)
        self.input_dim = _check_input_dim(input_dim)
        self.entropy_reg = _check_nonnegative("entropy_reg", entropy_reg)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got reduction={reduction!r}")
        self.reduction: Reduction = reduction
        self.penalty_eps = _check_positive("penalty_eps", penalty_eps)
        self.num_binary = max(1, math.ceil(math.log2(self.num_experts)))
        self.power_of_2 = self.num_experts == 2**self.num_binary

        if self.input_dim is None:
            self.z_logits = nn.Parameter(torch.empty(self.k, self.num_binary))
            self.w_logits = nn.Parameter(torch.empty(self.k))
            self.z_proj = None
            self.w_proj = None
        else:
            self.register_parameter("z_logits", None)
            self.register_parameter("w_logits", None)
            self.z_proj = nn.Linear(self.input_dim, self.k * self.num_binary)
            self.w_proj = nn.Linear(self.input_dim, self.k)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialization: ``U(-gamma/100, gamma/100)`` for z, ``U(-0.05, 0.05)`` for w."""
        z_bound = self.gamma / 100
        with torch.no_grad():
            if self.input_dim is None:
                self.z_logits.uniform_(-z_bound, z_bound)
                self.w_logits.uniform_(-0.05, 0.05)
            else:
                self.z_proj.weight.uniform_(-z_bound, z_bound)
                self.z_proj.bias.uniform_(-z_bound, z_bound)
                self.w_proj.weight.uniform_(-0.05, 0.05)
                self.w_proj.bias.uniform_(-0.05, 0.05)

    def extra_repr(self) -> str:
        s = f"num_experts={self.num_experts}, k={self.k}, gamma={self.gamma}"
        s += f", input_dim={self.input_dim}"
        if self.entropy_reg:
            s += f", entropy_reg={self.entropy_reg}"
        if self.input_dim is not None:
            s += f", reduction={self.reduction!r}"
        return s

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
        r = _all_code_outputs(smooth_step(z, self.gamma))
        return r if all_codes else r[..., : self.num_experts]

    def _weights_from(self, r: Tensor, w: Tensor) -> Tensor:
        return (torch.softmax(w, dim=-1).unsqueeze(-1) * r).sum(dim=-2)

    def regularization(self, selector_outputs: Tensor) -> Tensor:
        """Entropy regularizer plus unreachable-code penalty for reachable selector outputs.

        ``selector_outputs`` has shape ``(k, n)`` (static) or ``(batch, k, n)``.
        """
        aux = self._zero(selector_outputs)
        per_example = selector_outputs.dim() == 3
        if self.entropy_reg > 0:
            entropy = -(selector_outputs * torch.log(selector_outputs + ENTROPY_EPS))
            entropy = entropy.sum(dim=(-2, -1))
            if per_example:
                entropy = _reduce_batch(entropy, self.reduction)
            aux = aux + self.entropy_reg * entropy
        if not self.power_of_2:
            mass = selector_outputs.sum(dim=-1).clamp_min(self.penalty_eps)
            penalty = (1.0 / mass).sum(dim=-1)
            if per_example:
                penalty = _reduce_batch(penalty, self.reduction)
            aux = aux + penalty
        return aux

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Expert weights ``q`` ([DSK] eq. 4) and the auxiliary loss."""
        z, w = self.logits(x)
        r = _all_code_outputs(smooth_step(z, self.gamma))[..., : self.num_experts]
        weights = self._weights_from(r, w)
        aux = self.regularization(r) if self.training else self._zero(weights)
        return weights, aux


# --------------------------------------------------------------------------- softmax (MMoE)


class SoftmaxGate(Gate):
    """The dense softmax gate of [MMoE] (eq. 6): ``softmax(W_g x)``.

    Static (``input_dim=None``): one logit vector, initialized to zero (uniform weights).
    Per-example: ``nn.Linear(input_dim, n)`` with PyTorch's default initialization.
    It has no regularizer: ``aux_loss`` is always 0.
    """

    def __init__(self, num_experts: int, input_dim: int | None = None) -> None:
        super().__init__()
        self.num_experts = _check_num_experts(num_experts)
        self.max_nonzeros = self.num_experts
        self.input_dim = _check_input_dim(input_dim)
        if self.input_dim is None:
            self.logits = nn.Parameter(torch.zeros(self.num_experts))
            self.proj = None
        else:
            self.register_parameter("logits", None)
            self.proj = nn.Linear(self.input_dim, self.num_experts)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.input_dim is None:
            with torch.no_grad():
                self.logits.zero_()
        else:
            self.proj.reset_parameters()

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, input_dim={self.input_dim}"

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._routing_input(x)
        logits = self.logits if x is None else self.proj(x)
        weights = torch.softmax(logits, dim=-1)
        return weights, self._zero(weights)


# --------------------------------------------------------------------------- noisy top-k


class NoisyTopKGate(Gate):
    """The noisy Top-k gate of [TopK] (section 2.1, eq. 3-5) with its balancing losses.

    ``H(x) = x W_g + eps * softplus(x W_noise)``, ``eps ~ N(0, 1)`` (noise in training mode
    only, and only if ``noisy=True``); the ``k`` largest entries of ``H`` are kept, the
    others set to ``-inf``, and a softmax gives the weights, which are exactly zero outside
    the top ``k``. ``W_g`` and ``W_noise`` are initialized to zero as in [TopK]
    (appendix A). A static gate has free parameter vectors in place of ``x W_g`` and
    ``x W_noise``, and one noise draw per call.

    Auxiliary loss (training mode only), summed:

    * importance loss ``w_importance * CV(Importance)^2`` where ``Importance_i`` is the sum
      over the batch of the gate weights of expert ``i`` (eq. 6-7);
    * load loss ``w_load * CV(Load)^2`` (appendix A, eq. 8-11) with ``Load_i = sum_x
      Phi((x W_g)_i - kth_excluding(H(x), k, i)) / softplus((x W_noise)_i))``, ``Phi`` the
      standard normal CDF and ``kth_excluding`` the ``k``-th largest entry of ``H(x)``
      other than entry ``i``. It needs the noise, so it is computed only in training mode
      with ``noisy=True`` and ``k < n``, and is zero otherwise.

    ``CV^2`` is ``Var / (mean^2 + 1e-10)`` with the population variance. For a static gate
    the "batch" is the single weight vector.

    Args:
        num_experts: ``n >= 2``.
        k: experts kept per example, ``1 <= k <= n``.
        input_dim: width of the routing input, or ``None`` for a static gate.
        noisy: add the trainable noise in training mode.
        w_importance: weight ``>= 0`` of the importance loss (0.1 in [TopK]'s experiments).
        w_load: weight ``>= 0`` of the load loss (off by default).
    """

    def __init__(
        self,
        num_experts: int,
        k: int = 2,
        input_dim: int | None = None,
        noisy: bool = True,
        w_importance: float = 0.1,
        w_load: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_experts = _check_num_experts(num_experts)
        self.k = _check_k(k, self.num_experts)
        self.max_nonzeros = self.k
        self.input_dim = _check_input_dim(input_dim)
        self.noisy = bool(noisy)
        self.w_importance = _check_nonnegative("w_importance", w_importance)
        self.w_load = _check_nonnegative("w_load", w_load)
        if self.input_dim is None:
            self.gate_logits = nn.Parameter(torch.zeros(self.num_experts))
            self.noise_logits = nn.Parameter(torch.zeros(self.num_experts))
        else:
            self.gate_logits = nn.Parameter(torch.zeros(self.input_dim, self.num_experts))
            self.noise_logits = nn.Parameter(torch.zeros(self.input_dim, self.num_experts))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero initialization of ``W_g`` and ``W_noise``, as in [TopK]."""
        with torch.no_grad():
            self.gate_logits.zero_()
            self.noise_logits.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, k={self.k}, input_dim={self.input_dim}, "
            f"noisy={self.noisy}, w_importance={self.w_importance}, w_load={self.w_load}"
        )

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._routing_input(x)
        if x is None:
            clean = self.gate_logits
            raw_noise = self.noise_logits
        else:
            clean = x @ self.gate_logits
            raw_noise = x @ self.noise_logits
        use_noise = self.training and self.noisy
        if use_noise:
            noise_std = F.softplus(raw_noise)
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean

        top_values, top_indices = logits.topk(min(self.k + 1, self.num_experts), dim=-1)
        top_k_weights = torch.softmax(top_values[..., : self.k], dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, top_indices[..., : self.k], top_k_weights)

        if not self.training:
            return weights, self._zero(weights)
        batched = weights if weights.dim() == 2 else weights.unsqueeze(0)
        aux = self._zero(weights)
        if self.w_importance > 0:
            aux = aux + self.w_importance * cv_squared(batched.sum(dim=0))
        if self.w_load > 0 and use_noise and self.k < self.num_experts:
            load = self._load(clean, logits, noise_std, top_values)
            batched_load = load if load.dim() == 2 else load.unsqueeze(0)
            aux = aux + self.w_load * cv_squared(batched_load.sum(dim=0))
        return weights, aux

    def _load(self, clean: Tensor, noisy: Tensor, noise_std: Tensor, top_values: Tensor) -> Tensor:
        """``P(x, i)`` of [TopK] eq. 9: the probability that expert ``i`` stays in the top k
        when its own noise is redrawn and the other entries are held fixed."""
        threshold_if_in = top_values[..., self.k : self.k + 1]  # (k+1)-th largest
        threshold_if_out = top_values[..., self.k - 1 : self.k]  # k-th largest
        is_in = noisy > threshold_if_in
        normal = torch.distributions.Normal(
            torch.zeros((), dtype=clean.dtype, device=clean.device),
            torch.ones((), dtype=clean.dtype, device=clean.device),
        )
        std = noise_std.clamp_min(torch.finfo(clean.dtype).tiny)
        prob_if_in = normal.cdf((clean - threshold_if_in) / std)
        prob_if_out = normal.cdf((clean - threshold_if_out) / std)
        return torch.where(is_in, prob_if_in, prob_if_out)
