"""The noisy Top-k gate of [TopK] with its importance and load balancing losses.

The maths is written once, in functions over arbitrary leading axes, shared by one gate
and by a bank of ``T`` gates (:mod:`compactnn.moe.gates.bank`).

[TopK] Shazeer et al. Outrageously Large Neural Networks: The Sparsely-Gated
Mixture-of-Experts Layer. ICLR 2017.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_bool

from .base import Gate, check_input_dim, check_k, check_num_experts, check_reg

__all__ = ["NoisyTopKGate", "cv_squared", "load_probability", "noisy_route", "topk_aux",
           "topk_route"]


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``Var(x) / (mean(x)^2 + eps)`` over the last dim.

    The population variance is used; this is the balancing measure of [TopK] (eq. 6-7).
    Half-precision inputs are computed in float32 and the result cast back: ``eps``
    underflows to 0 in float16 (and the squares overflow), which turns an all-zero
    ``x`` (an empty batch's importance) into 0/0 = NaN.
    """
    wide = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = wide.mean(dim=-1)
    var = wide.var(dim=-1, unbiased=False)
    return (var / (mean**2 + eps)).to(x.dtype)


def topk_route(clean: Tensor, noise: Tensor | None, noise_std: Tensor | None,
               k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``k`` largest of ``H = clean + noise * noise_std`` (or ``clean``) over the
    last axis and softmax them; the others get weight exactly 0.

    Returns ``(weights, H, top_values)`` with the ``min(k+1, n)`` largest entries of ``H``
    (the load loss needs the ``(k+1)``-th)."""
    logits = clean if noise is None else clean + noise * noise_std
    n = clean.shape[-1]
    top_values, top_indices = logits.topk(min(k + 1, n), dim=-1)
    top_k_weights = torch.softmax(top_values[..., :k], dim=-1)
    weights = torch.zeros_like(logits).scatter(-1, top_indices[..., :k], top_k_weights)
    return weights, logits, top_values



def noisy_route(gate: nn.Module, clean: Tensor, raw_noise: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """:func:`topk_route` with the gate's training noise: ``eps * softplus(raw_noise)``,
    ``eps`` from ``gate.draw_noise``, only in training mode and when ``gate.noisy``.
    Returns the route and the noise scale (``None`` without noise)."""
    if gate.training and gate.noisy:
        noise_std = F.softplus(raw_noise)
        noise = gate.draw_noise(clean)
    else:
        noise_std = noise = None
    weights, logits, top_values = topk_route(clean, noise, noise_std, gate.k)
    return weights, logits, top_values, noise_std

def load_probability(clean: Tensor, noisy: Tensor, noise_std: Tensor, top_values: Tensor,
                      k: int) -> Tensor:
    """``P(x, i)`` of [TopK] eq. 9: the probability that expert ``i`` stays in the top k
    when its own noise is redrawn and the other entries are held fixed."""
    threshold_if_in = top_values[..., k : k + 1]  # (k+1)-th largest
    threshold_if_out = top_values[..., k - 1 : k]  # k-th largest
    # One check here, instead of torch.distributions' own (which syncs just the same
    # but reports a NaN as a failed "support" check deep inside the normal CDF).
    if not bool(torch.isfinite(clean).all() & torch.isfinite(noisy).all()
                & torch.isfinite(noise_std).all()):
        raise ValueError("noisy Top-k gate: non-finite gate logits for the load loss; the "
                         "routing input (or the gate's parameters) holds NaN or infinity")
    is_in = noisy > threshold_if_in
    normal = torch.distributions.Normal(
        torch.zeros((), dtype=clean.dtype, device=clean.device),
        torch.ones((), dtype=clean.dtype, device=clean.device),
        validate_args=False,
    )
    std = noise_std.clamp_min(torch.finfo(clean.dtype).tiny)
    prob_if_in = normal.cdf((clean - threshold_if_in) / std)
    prob_if_out = normal.cdf((clean - threshold_if_out) / std)
    return torch.where(is_in, prob_if_in, prob_if_out)


def topk_aux(weights: Tensor, clean: Tensor, logits: Tensor, noise_std: Tensor | None,
             top_values: Tensor, *, k: int, importance_reg: float, load_reg: float,
             per_example: bool) -> Tensor:
    """Importance and load losses of weights ``([batch,] ..., n)``; with ``per_example``
    the first axis is the batch and is summed. ``noise_std`` is None when no noise was
    drawn (then the load loss, which needs the noise, is 0). Returns one value per
    remaining leading index."""
    lead = weights.shape[1:-1] if per_example else weights.shape[:-1]
    aux = torch.zeros(lead, dtype=weights.dtype, device=weights.device)
    if importance_reg > 0:
        importance = weights.sum(dim=0) if per_example else weights
        aux = aux + importance_reg * cv_squared(importance)
    n = weights.shape[-1]
    if load_reg > 0 and noise_std is not None and k < n:
        load = load_probability(clean, logits, noise_std, top_values, k)
        load = load.sum(dim=0) if per_example else load
        aux = aux + load_reg * cv_squared(load)
    return aux


class NoisyTopKGate(Gate):
    """The noisy Top-k gate of [TopK] (section 2.1, eq. 3-5) with its balancing losses.

    ``H(x) = x W_g + eps * softplus(x W_noise)``, ``eps ~ N(0, 1)`` (noise in training mode
    only, and only if ``noisy=True``); the ``k`` largest entries of ``H`` are kept, the
    others set to ``-inf``, and a softmax gives the weights, which are exactly zero outside
    the top ``k``. ``W_g`` and ``W_noise`` are the bias-free linear maps ``gate_proj`` and
    ``noise_proj``, initialized to zero as in [TopK] (appendix A). A static gate has free
    parameter vectors ``gate_logits`` and ``noise_logits`` in their place, and one noise
    draw per call.

    Auxiliary loss (training mode only), summed:

    * importance loss ``importance_reg * CV(Importance)^2`` where ``Importance_i`` is the
      sum over the batch of the gate weights of expert ``i`` (eq. 6-7);
    * load loss ``load_reg * CV(Load)^2`` (appendix A, eq. 8-11) with ``Load_i = sum_x
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
        noisy: (a bool) add the trainable noise in training mode.
        importance_reg: weight ``>= 0`` of the importance loss (0.1 in [TopK]'s experiments).
        load_reg: weight ``>= 0`` of the load loss (off by default).
    """

    def __init__(self, num_experts: int, *, k: int = 2, input_dim: int | None = None,
                 noisy: bool = True, importance_reg: float = 0.1,
                 load_reg: float = 0.0) -> None:
        super().__init__()
        self.num_experts = check_num_experts(num_experts)
        self.k = check_k(k, self.num_experts)
        self.max_nonzeros = self.k
        self.input_dim = check_input_dim(input_dim)
        self.noisy = check_bool("noisy", noisy)
        self.importance_reg = check_reg("importance_reg", importance_reg)
        self.load_reg = check_reg("load_reg", load_reg)
        if self.input_dim is None:
            self.gate_logits = nn.Parameter(torch.zeros(self.num_experts))
            self.noise_logits = nn.Parameter(torch.zeros(self.num_experts))
            self.gate_proj = self.noise_proj = None
        else:
            self.register_parameter("gate_logits", None)
            self.register_parameter("noise_logits", None)
            self.gate_proj = nn.Linear(self.input_dim, self.num_experts, bias=False)
            self.noise_proj = nn.Linear(self.input_dim, self.num_experts, bias=False)
        self.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"num_experts": self.num_experts, "k": self.k, "input_dim": self.input_dim,
                "noisy": self.noisy, "importance_reg": self.importance_reg,
                "load_reg": self.load_reg}

    def reset_parameters(self) -> None:
        """Zero initialization of ``W_g`` and ``W_noise``, as in [TopK]."""
        with torch.no_grad():
            for p in self.parameters(recurse=True):
                p.zero_()

    def draw_noise(self, like: Tensor) -> Tensor:
        """Standard normal noise shaped like ``like`` (a method, so tests can fix it)."""
        return torch.randn_like(like)

    def forward(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self._routing_input(x)
        if x is None:
            clean, raw_noise = self.gate_logits, self.noise_logits
        else:
            clean, raw_noise = self.gate_proj(x), self.noise_proj(x)
        weights, logits, top_values, noise_std = noisy_route(self, clean, raw_noise)
        if not self.training:
            return weights, weights.new_zeros(())
        aux = topk_aux(weights, clean, logits, noise_std, top_values, k=self.k,
                       importance_reg=self.importance_reg, load_reg=self.load_reg,
                       per_example=x is not None)
        return weights, aux

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of per-example gates written before the routers were nn.Linear hold
        # the (input_dim, n) matrices as gate_logits / noise_logits: x @ W == Linear(W.T).
        if self.input_dim is not None:
            for old, new in (("gate_logits", "gate_proj.weight"),
                             ("noise_logits", "noise_proj.weight")):
                value = state_dict.get(prefix + old)
                if value is not None and value.dim() == 2 and prefix + new not in state_dict:
                    state_dict[prefix + new] = state_dict.pop(prefix + old).t()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
