"""Hostile inputs to the mixture layers and gates: empty batches, NaN routing inputs,
half precision."""

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
    cv_squared,
    gate_bank,
    mlp_experts,
    mlp_towers,
)

GATES = {
    "dselect_k_mean": lambda d: DSelectKGate(4, k=2, input_dim=d, entropy_reg=0.5,
                                             reduction="mean"),
    "dselect_k_sum": lambda d: DSelectKGate(4, k=2, input_dim=d, entropy_reg=0.5,
                                            reduction="sum"),
    "topk": lambda d: NoisyTopKGate(4, k=2, input_dim=d, importance_reg=0.3, load_reg=0.2),
    "softmax": lambda d: SoftmaxGate(4, input_dim=d),
}
EXECUTIONS = ("dense", "sparse", "auto", "capacity")


def _module_experts() -> nn.ModuleList:
    return nn.ModuleList(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
                         for _ in range(4))


@pytest.mark.parametrize("gate", sorted(GATES))
@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("bank", [True, False])
@pytest.mark.parametrize("static", [True, False])
def test_empty_batch_gives_empty_outputs_and_zero_aux(gate, execution, bank, static):
    """0 rows in: (0, out) per output, a per-example gate's aux loss exactly 0 in
    training mode (not 0/0), gradients flow, nothing counted as dropped."""
    torch.manual_seed(0)
    dim = None if static else 3
    experts = mlp_experts(4, 3, [5], 2) if bank else _module_experts()
    moe = MixtureOfExperts(experts, GATES[gate](dim), execution=execution)
    moe.train()
    x, five = torch.zeros(0, 3, requires_grad=True), torch.randn(5, 3)
    # a per-example gate's regularizer sums over the rows: 0 for none; a static gate's
    # depends on its one weight vector only, so it is what any batch gives
    torch.manual_seed(1)
    want = 0.0 if dim else float(moe(five)[1].detach())
    torch.manual_seed(1)
    out, aux = moe(x)
    assert out.shape == (0, 2) and aux.shape == () and float(aux) == want
    assert int(moe.dropped) == 0
    (out.sum() + aux).backward()
    assert x.grad is not None and x.grad.shape == (0, 3)

    experts = mlp_experts(4, 3, [5], 2) if bank else _module_experts()
    towers = mlp_towers(3, 2, [4], [1, 3, 2])
    multi = MultiGateMoE(experts, 3, gate=GATES[gate](dim), towers=towers,
                         execution=execution)
    multi.train()
    torch.manual_seed(2)
    want = 0.0 if dim else float(multi(five)[1].detach())
    torch.manual_seed(2)
    outs, aux = multi(torch.zeros(0, 3))
    assert [tuple(o.shape) for o in outs] == [(0, 1), (0, 3), (0, 2)]
    assert aux.shape == () and float(aux) == want
    torch.manual_seed(2)
    mixed, aux = multi.mix(torch.zeros(0, 3))
    assert mixed.shape == (3, 0, 2) and float(aux) == want


@pytest.mark.parametrize("gate", sorted(GATES))
def test_empty_batch_into_per_module_gates(gate):
    """A list of gates (run one by one) on 0 rows: empty outputs, aux 0."""
    multi = MultiGateMoE(mlp_experts(4, 3, [5], 2), 2, gate=[GATES[gate](3) for _ in "ab"])
    outs, aux = multi(torch.zeros(0, 3))
    assert [tuple(o.shape) for o in outs] == [(0, 2), (0, 2)] and float(aux) == 0.0


def test_empty_batch_keeps_a_rows_trailing_shape():
    """Experts with (batch, 2, 3) outputs: the empty result is (0, 2, 3)."""

    class Shaped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 6)

        def forward(self, x):
            return self.lin(x).view(-1, 2, 3)

    moe = MixtureOfExperts(nn.ModuleList(Shaped() for _ in range(4)),
                           SoftmaxGate(4, input_dim=3), execution="dense")
    out, _ = moe(torch.zeros(0, 3))
    assert out.shape == (0, 2, 3)


@pytest.mark.parametrize("gate", sorted(GATES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gates_on_an_empty_batch_give_zero_aux(gate, dtype):
    """fp32 gives aux 0 on 0 rows; fp16/bf16 must too (an eps of 1e-10 underflows in
    fp16, and 0/0 is NaN)."""
    g = GATES[gate](3).to(dtype)
    g.train()
    w, aux = g(torch.zeros(0, 3, dtype=dtype))
    assert w.shape == (0, 4) and float(aux) == 0.0
    bank = gate_bank(GATES[gate](3), 2).to(dtype)
    bank.train()
    w, aux = bank(torch.zeros(0, 3, dtype=dtype))
    assert w.shape == (2, 0, 4) and float(aux) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cv_squared_in_half_precision_matches_float32(dtype):
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1e-3, 0.0, 2e-3]])
    got = cv_squared(x.to(dtype))
    assert got.dtype == dtype and torch.isfinite(got).all()
    want = cv_squared(x)
    torch.testing.assert_close(got.float(), want.to(dtype).float())
    assert float(got[0]) == 0.0


@pytest.mark.parametrize("make", [lambda: NoisyTopKGate(4, k=2, input_dim=3, load_reg=0.1),
                                  lambda: gate_bank(NoisyTopKGate(4, k=2, input_dim=3,
                                                                  load_reg=0.1), 2)])
def test_noisy_topk_refuses_nan_routing_input_clearly(make):
    """NaN or infinity in the routing input with the load loss on: a ValueError naming
    the routing input, not torch.distributions' failed support check."""
    g = make()
    g.train()
    for bad in (torch.tensor([[0.0, float("nan"), 1.0], [0.0, 0.0, 0.0]]),
                torch.tensor([[0.0, float("inf"), 1.0]])):
        with pytest.raises(ValueError, match=r"non-finite gate logits.*routing input"):
            g(bad)
    g(torch.zeros(2, 3))  # finite input still works


def test_noisy_topk_nan_through_the_layer_names_the_routing_input():
    moe = MixtureOfExperts(mlp_experts(4, 3, [5], 2),
                           NoisyTopKGate(4, k=2, input_dim=3, load_reg=0.1))
    with pytest.raises(ValueError, match=r"non-finite gate logits.*routing input"):
        moe(torch.tensor([[float("nan"), 0.0, 0.0]]))
