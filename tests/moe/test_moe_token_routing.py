"""Per-token routing of MixtureOfExperts: (batch, tokens, dim) inputs equal the layer on
the flattened rows, for every gate and execution mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn.moe import (
    BalancedTopKGate,
    DSelectKGate,
    MixtureOfExperts,
    NoisyTopKGate,
    SoftmaxGate,
    mlp_experts,
)

N, D = 6, 5


def _gate(kind: str, input_dim: int | None = D):
    if kind == "softmax":
        return SoftmaxGate(N, input_dim=input_dim)
    if kind == "dselect_k":
        gate = DSelectKGate(N, k=2, input_dim=input_dim, entropy_reg=0.1, reduction="mean")
        with torch.no_grad():  # some selectors saturated: a mix of sparse and dense tokens
            (gate.z_proj.weight if input_dim else gate.z_logits).normal_(0, 2.0)
        return gate
    if kind == "noisy_topk":
        return NoisyTopKGate(N, k=2, input_dim=input_dim, importance_reg=0.1, load_reg=0.1)
    gate = BalancedTopKGate(N, k=2, input_dim=input_dim, balance_reg=0.5)
    if input_dim is None:
        with torch.no_grad():
            gate.logits.normal_()
    return gate


GATES = ("softmax", "dselect_k", "noisy_topk", "topk")
EXECUTIONS = ("auto", "dense", "sparse", "capacity")


@pytest.mark.parametrize("kind", GATES)
@pytest.mark.parametrize("execution", EXECUTIONS)
def test_tokens_equal_flattened_rows(kind: str, execution: str) -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(mlp_experts(N, D, 7, 3), _gate(kind), execution=execution,
                           capacity_factor=0.8)
    x = torch.randn(3, 4, D, requires_grad=True)
    torch.manual_seed(1)  # the noisy gate draws the same noise in both calls
    out, aux = moe(x)
    dropped = moe.dropped.clone()
    grads = torch.autograd.grad((out**2).sum() + aux, [x, *moe.parameters()],
                                allow_unused=True)
    flat = x.detach().reshape(12, D).requires_grad_(True)
    torch.manual_seed(1)
    ref, ref_aux = moe(flat)
    ref_grads = torch.autograd.grad((ref**2).sum() + ref_aux, [flat, *moe.parameters()],
                                    allow_unused=True)
    assert out.shape == (3, 4, 3)
    assert torch.equal(out, ref.reshape(3, 4, 3))
    assert torch.equal(aux, ref_aux)
    assert torch.equal(moe.dropped, dropped)
    assert torch.equal(grads[0], ref_grads[0].reshape(3, 4, D))
    for g, r in zip(grads[1:], ref_grads[1:], strict=True):
        assert (g is None and r is None) or torch.equal(g, r)


@pytest.mark.parametrize("kind", GATES)
def test_each_token_gets_its_own_mixture(kind: str) -> None:
    """The reference computed token by token: ``y[b, t] = sum_e w_e(x[b, t]) f_e(x[b, t])``."""
    torch.manual_seed(0)
    experts = mlp_experts(N, D, 7, 3)
    moe = MixtureOfExperts(experts, _gate(kind), execution="dense").eval()
    x = torch.randn(2, 5, D)
    out, aux = moe(x)
    assert aux.item() == 0  # eval mode
    for b in range(2):
        for t in range(5):
            w, _ = moe.gate(x[b, t : t + 1])
            want = sum(w[0, e] * experts[e](x[b, t : t + 1])[0] for e in range(N))
            torch.testing.assert_close(out[b, t], want)


def test_capacity_counts_tokens() -> None:
    """Capacity is per token of the whole batch: ceil(f * B*T * k / n) slots."""
    torch.manual_seed(0)
    gate = _gate("topk")
    moe = MixtureOfExperts(mlp_experts(N, D, 7, 3), gate, execution="capacity",
                           capacity_factor=0.5)
    x = torch.randn(4, 6, D)
    moe(x)
    w, _ = gate(x.reshape(-1, D))
    per_expert = (w != 0).sum(dim=0)
    capacity = -(-0.5 * 24 * 2 // N)  # ceil
    assert int(moe.dropped) == int((per_expert - capacity).clamp_min(0).sum())


def test_separate_routing_input_per_token() -> None:
    torch.manual_seed(0)
    experts = mlp_experts(N, 4, 7, 3)
    moe = MixtureOfExperts(experts, SoftmaxGate(N, input_dim=D))
    x, r = torch.randn(2, 3, 4), torch.randn(2, 3, D)
    out, _ = moe(x, routing_input=r)
    ref, _ = moe(x.reshape(6, 4), routing_input=r.reshape(6, D))
    assert torch.equal(out, ref.reshape(2, 3, 3))
    with pytest.raises(ValueError, match="per-token routing"):
        moe(torch.randn(3, 2, 4), routing_input=r)


def test_static_gate_with_bank_flattens_tokens() -> None:
    torch.manual_seed(0)
    moe = MixtureOfExperts(mlp_experts(N, D, 7, 3), _gate("dselect_k", input_dim=None))
    x = torch.randn(2, 3, D)
    out, _ = moe(x)
    ref, _ = moe(x.reshape(6, D))
    assert torch.equal(out, ref.reshape(2, 3, 3))


def test_module_experts_keep_their_own_shapes() -> None:
    """Separate modules under a static gate see the 3-D batch as before (no flattening)."""
    torch.manual_seed(0)
    experts = [nn.Linear(D, 3) for _ in range(N)]
    moe = MixtureOfExperts(experts, SoftmaxGate(N))
    x = torch.randn(2, 4, D)
    out, _ = moe(x)
    w = torch.softmax(moe.gate.logits, 0)
    torch.testing.assert_close(out, sum(w[e] * experts[e](x) for e in range(N)))


def test_bank_needs_feature_rows() -> None:
    moe = MixtureOfExperts(mlp_experts(N, D, 7, 3), SoftmaxGate(N, input_dim=D))
    with pytest.raises(ValueError, match="MLPBank experts map feature rows"):
        moe(torch.randn(2, 3, 4, D), routing_input=torch.randn(2, 3, D))
    with pytest.raises(TypeError, match="routing_input must be a Tensor"):
        moe(torch.randn(2, 3, D), routing_input=[1.0])


def test_empty_token_batch() -> None:
    moe = MixtureOfExperts(mlp_experts(N, D, 7, 3), _gate("topk"), execution="capacity")
    out, aux = moe(torch.randn(0, 4, D))
    assert out.shape == (0, 4, 3) and aux.item() == 0
