"""Sparse execution equals dense execution, in values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn.moe import (
    DSelectKGate,
    MixtureOfExperts,
    MultiGateMoE,
    NoisyTopKGate,
    SoftmaxGate,
    combine,
    dense_combine,
    mlp_experts,
    sparse_combine,
)
from compactnn.moe.dispatch import row_layout


class RowCounter(nn.Module):
    """Wraps an expert and records how many rows it saw."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.inner(x)


class ShapedExpert(nn.Module):
    """An expert with a (batch, 2, 3) output."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x)).view(-1, 2, 3)


def saturated_dselect(n: int, k: int, d: int, scale: float = 4.0, **kw) -> DSelectKGate:
    gate = DSelectKGate(n, k=k, input_dim=d, **kw)
    with torch.no_grad():
        gate.z_proj.weight.normal_(0, scale)
        gate.w_proj.weight.normal_()
    return gate


def saturated_static(n: int, k: int) -> DSelectKGate:
    gate = DSelectKGate(n, k=k)
    with torch.no_grad():
        gate.z_logits.copy_(torch.randn(k, gate.num_binary).sign())
        gate.w_logits.normal_()
    return gate


def grads(model: nn.Module, x: torch.Tensor, outputs, aux) -> list[torch.Tensor]:
    outputs = outputs if isinstance(outputs, list) else [outputs]
    torch.manual_seed(123)
    loss = aux + sum((o * torch.randn_like(o)).sum() for o in outputs)
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, [x, *params], allow_unused=True, materialize_grads=True))


def assert_same(a, b) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "make_gate",
    [
        lambda: saturated_dselect(8, 2, 5),
        lambda: saturated_dselect(6, 3, 5, entropy_reg=0.1),
        lambda: saturated_dselect(5, 2, 5, scale=0.8),  # partly saturated
        lambda: NoisyTopKGate(7, k=2, input_dim=5, importance_reg=0.1),
        lambda: saturated_static(8, 2),
        lambda: saturated_static(5, 1),
    ],
)
def test_sparse_equals_dense_values_and_gradients(make_gate) -> None:
    torch.manual_seed(0)
    gate = make_gate()
    if isinstance(gate, NoisyTopKGate):
        with torch.no_grad():
            gate.gate_proj.weight.normal_()
        gate.noisy = False
    n = gate.num_experts
    experts = mlp_experts(n, 5, 7, 3)
    dense = MixtureOfExperts(experts, gate, execution="dense").double()
    sparse = MixtureOfExperts(experts, gate, execution="sparse").double()
    x = torch.randn(40, 5, dtype=torch.float64, requires_grad=True)
    out_d, aux_d = dense(x)
    out_s, aux_s = sparse(x)
    torch.testing.assert_close(out_s, out_d, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(aux_s, aux_d)
    assert_same(grads(sparse, x, out_s, aux_s), grads(dense, x, out_d, aux_d))


def test_sparse_runs_only_needed_rows() -> None:
    torch.manual_seed(0)
    gate = saturated_dselect(8, 2, 4, scale=6.0)
    experts = [RowCounter(e) for e in mlp_experts(8, 4, 6, 2)]
    moe = MixtureOfExperts(experts, gate, execution="auto")
    x = torch.randn(64, 4)
    weights, _ = gate(x)
    moe(x)
    seen = [sum(e.rows) for e in experts]
    assert seen == (weights != 0).sum(0).tolist()
    assert sum(seen) < 3 * 64
    # dense runs everyone on everything
    moe.execution = "dense"
    for e in experts:
        e.rows.clear()
    moe(x)
    assert [sum(e.rows) for e in experts] == [64] * 8


def test_static_sparse_skips_zero_experts() -> None:
    gate = DSelectKGate(8, k=1)
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor([[1.0, -1.0, 1.0]]))  # expert 5
    experts = [RowCounter(e) for e in mlp_experts(8, 4, 6, 2)]
    moe = MixtureOfExperts(experts, gate)
    x = torch.randn(10, 4)
    out, _ = moe(x)
    assert [len(e.rows) for e in experts] == [0, 0, 0, 0, 0, 1, 0, 0]
    torch.testing.assert_close(out, experts[5](x))


def test_auto_uses_dense_without_zeros() -> None:
    experts = [RowCounter(e) for e in mlp_experts(4, 3, 5, 2)]
    moe = MixtureOfExperts(experts, SoftmaxGate(4, input_dim=3))
    moe(torch.randn(6, 3))
    assert [e.rows for e in experts] == [[6]] * 4


def test_multi_task_sparse_equals_dense_with_mixed_gates() -> None:
    torch.manual_seed(0)
    n, d = 8, 5
    gates = [
        saturated_dselect(n, 2, d),
        saturated_static(n, 2),
        NoisyTopKGate(n, k=1, input_dim=d, noisy=False),
    ]
    with torch.no_grad():
        gates[2].gate_proj.weight.normal_()
    experts = mlp_experts(n, d, 6, 4)
    towers = [nn.Linear(4, 1) for _ in range(3)]
    dense = MultiGateMoE(experts, 3, gate=gates, towers=towers, execution="dense").double()
    sparse = MultiGateMoE(experts, 3, gate=gates, towers=towers, execution="sparse").double()
    x = torch.randn(30, d, dtype=torch.float64, requires_grad=True)
    out_d, aux_d = dense(x)
    out_s, aux_s = sparse(x)
    for a, b in zip(out_s, out_d, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert_same(grads(sparse, x, out_s, aux_s), grads(dense, x, out_d, aux_d))


def test_multi_dimensional_expert_outputs() -> None:
    torch.manual_seed(0)
    experts = [ShapedExpert(4) for _ in range(4)]
    x = torch.randn(12, 4, requires_grad=True)
    weights = torch.zeros(12, 4)
    weights[torch.arange(12), torch.randint(0, 4, (12,))] = torch.rand(12)
    static = torch.tensor([0.0, 0.3, 0.0, 0.7])
    for w in (weights, static):
        (d,) = dense_combine(experts, x, [w])
        (s,) = sparse_combine(experts, x, [w])
        assert s.shape == (12, 2, 3)
        torch.testing.assert_close(s, d)


def test_all_zero_weights_fall_back_to_zero_output() -> None:
    experts = mlp_experts(4, 3, 5, 2)
    x = torch.randn(5, 3)
    for w in (torch.zeros(5, 4), torch.zeros(4)):
        (out,) = sparse_combine(experts, x, [w])
        assert out.shape == (5, 2) and out.eq(0).all()


def test_dispatch_errors() -> None:
    experts = mlp_experts(4, 3, 5, 2)
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="execution must be one of"):
        combine(experts, x, [torch.ones(4)], execution="fast")
    with pytest.raises(ValueError, match="weights must have shape"):
        combine(experts, x, [torch.ones(5, 3)])
    with pytest.raises(ValueError, match="batch size 6"):
        combine(experts, x, [torch.ones(6, 4)])
    mismatched = [*mlp_experts(2, 3, 5, 2), nn.Linear(3, 4)]
    for execution in ("dense", "sparse"):
        with pytest.raises(ValueError, match="equal output shapes"):
            combine(mismatched, x, [torch.full((5, 3), 1 / 3)], execution=execution)
        with pytest.raises(ValueError, match="equal output shapes"):
            combine(mismatched, x, [torch.full((3,), 1 / 3)], execution=execution)


def test_row_layout() -> None:
    active = torch.tensor(
        [[True, False, True], [False, False, False], [False, True, True], [True, False, False]]
    )
    layout = row_layout(active)
    # pairs in expert-major order: (0, 0), (0, 3), (1, 2), (2, 0), (2, 2)
    assert layout.experts.tolist() == [0, 0, 1, 2, 2]
    assert layout.rows.tolist() == [0, 3, 2, 0, 2]
    assert layout.counts == [2, 1, 2]
    assert layout.slots == 2
    slots = layout.slot_pair.view(4, 2)
    valid = layout.slot_valid.view(4, 2)
    assert valid.tolist() == [[True, True], [False, False], [True, True], [True, False]]
    assert slots[0].tolist() == [0, 3] and slots[2].tolist() == [2, 4] and slots[3, 0] == 1


def test_sparse_second_derivatives_match_dense() -> None:
    torch.manual_seed(0)
    experts = nn.ModuleList(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)) for _ in range(4)
    ).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(6, 4, dtype=torch.float64)
    weights[weights < 0.5] = 0.0
    weights[0] = 0.0  # a row with no expert at all
    weights.requires_grad_(True)

    assert torch.autograd.gradcheck(lambda x: sparse_combine(experts, x, [weights])[0], (x,))
    assert torch.autograd.gradgradcheck(lambda x: sparse_combine(experts, x, [weights])[0], (x,))
    # Gradients with respect to the weight tensor itself agree on its nonzero entries only:
    # the dense computation also differentiates the zero entries (their experts' outputs),
    # which a gate's parameters never see (a zero weight has zero derivative).
    (s,) = sparse_combine(experts, x, [weights])
    (d,) = dense_combine(experts, x, [weights])
    v = torch.randn_like(s)
    gs = torch.autograd.grad((s * v).sum(), [x, weights], create_graph=True)
    gd = torch.autograd.grad((d * v).sum(), [x, weights], create_graph=True)
    torch.testing.assert_close(gs[0], gd[0])
    nonzero = weights != 0
    torch.testing.assert_close(gs[1][nonzero], gd[1][nonzero])
    assert gs[1][~nonzero].eq(0).all()
    # second order: d/dx of <grad_x, u>
    u = torch.randn_like(x)
    (hs,) = torch.autograd.grad((gs[0] * u).sum(), x)
    (hd,) = torch.autograd.grad((gd[0] * u).sum(), x)
    torch.testing.assert_close(hs, hd)
