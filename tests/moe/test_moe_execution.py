"""Dense, sparse and capacity execution with expert banks and gate banks: equal to the
per-module path in values and gradients (float64); capacity drops and counts overflow;
dense and capacity compile with torch.compile(fullgraph=True)."""

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
    capacity_mix,
    dense_mix,
    expert_capacity,
    mlp_experts,
    mlp_towers,
    sparse_mix,
)

D, N = 6, 8


def sparse_weights(tasks: int, batch: int, k: int = 2, static: bool = False) -> torch.Tensor:
    """Random weights with exactly k nonzeros per (task, row): no ties, like Top-k."""
    shape = (tasks, N) if static else (tasks, batch, N)
    logits = torch.randn(*shape, dtype=torch.float64)
    top = logits.topk(k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, top.indices, torch.softmax(top.values, -1))


def all_grads(loss, tensors):
    """Gradients, with zeros for tensors the loss does not reach (experts never run)."""
    got = torch.autograd.grad(loss, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, got, strict=True)]


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("execution", ["sparse", "capacity"])
def test_bank_and_module_experts_agree_in_every_execution(static: bool, execution: str) -> None:
    torch.manual_seed(0)
    tasks, batch = 3, 10
    bank = mlp_experts(N, D, [7], 4).double()
    modules = nn.ModuleList(bank.member(e) for e in range(N))  # independent copies
    x = torch.randn(batch, D, dtype=torch.float64, requires_grad=True)
    w = sparse_weights(tasks, batch, static=static).requires_grad_(True)
    reference = dense_mix(modules, x, w)  # every expert on every row, one by one
    probe = torch.randn_like(reference)
    ref_grads = all_grads((reference * probe).sum(), [x, w, *modules.parameters()])
    for experts in (bank, modules):
        if execution == "sparse":
            out = sparse_mix(experts, x, w)
        else:  # room for every routed pair: nothing is dropped
            out, dropped = capacity_mix(experts, x, w, capacity=batch)
            assert dropped.item() == 0
        torch.testing.assert_close(out, reference)
        got = all_grads((out * probe).sum(), [x, w, *experts.parameters()])
        torch.testing.assert_close(got[0], ref_grads[0])
        # the weight tensor's own gradient differs at zero weights (see docs); compare the
        # entries that carry weight
        mask = w != 0
        torch.testing.assert_close(got[1][mask], ref_grads[1][mask])
        if experts is modules:
            for g, r in zip(got[2:], ref_grads[2:], strict=True):
                torch.testing.assert_close(g, r)
        else:
            states = []
            per = len(list(modules[0].parameters()))
            for e, m in enumerate(modules):
                names = [k for k, _ in m.named_parameters()]
                states.append(dict(zip(names, ref_grads[2 + e * per:2 + (e + 1) * per],
                                       strict=True)))
            want = bank.stack_states(states)
            for (name, _), g in zip(bank.named_parameters(), got[2:], strict=True):
                torch.testing.assert_close(g, want[name])


def test_dense_bank_equals_modules() -> None:
    torch.manual_seed(1)
    bank = mlp_experts(N, D, 5, 3).double()
    x = torch.randn(9, D, dtype=torch.float64)
    for w in (sparse_weights(4, 9), torch.rand(4, N, dtype=torch.float64)):
        copies = [bank.member(e) for e in range(N)]
        torch.testing.assert_close(dense_mix(bank, x, w), dense_mix(copies, x, w))


def test_capacity_drops_the_lowest_priority_rows_and_counts_them() -> None:
    torch.manual_seed(2)
    tasks, batch, k = 2, 12, 2
    bank = mlp_experts(N, D, 5, 3).double()
    x = torch.randn(batch, D, dtype=torch.float64)
    w = sparse_weights(tasks, batch, k)
    capacity = expert_capacity(batch, N, k, 1.0)
    assert capacity == 3  # ceil(1.0 * 12 * 2 / 8)
    out, dropped = capacity_mix(bank, x, w, capacity)
    # reference: each expert keeps its `capacity` rows of largest weight over the tasks
    priority = w.amax(dim=0)
    kept = torch.zeros_like(priority, dtype=torch.bool)
    for e in range(N):
        active = (priority[:, e] > 0).nonzero().flatten()
        order = priority[active, e].argsort(descending=True)
        kept[active[order[:capacity]], e] = True
    assert dropped.item() == int((priority > 0).sum() - kept.sum()) > 0
    torch.testing.assert_close(out, dense_mix(bank, x, w * kept))


def test_layers_in_capacity_mode_count_drops_and_validate() -> None:
    torch.manual_seed(3)
    gate = NoisyTopKGate(N, k=2, input_dim=D, noisy=False)
    with torch.no_grad():
        gate.gate_proj.weight.normal_()
    moe = MixtureOfExperts(mlp_experts(N, D, 5, 3), gate, execution="capacity",
                           capacity_factor=0.5)
    out, _ = moe(torch.randn(32, D))
    assert out.shape == (32, 3) and moe.dropped.item() > 0
    roomy = MixtureOfExperts(moe.experts, gate, execution="capacity", capacity_factor=N / 2)
    x = torch.randn(32, D)
    torch.testing.assert_close(roomy(x)[0], MixtureOfExperts(moe.experts, gate,
                                                             execution="dense")(x)[0])
    assert roomy.dropped.item() == 0
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="capacity_factor"):
            MixtureOfExperts(moe.experts, gate, execution="capacity", capacity_factor=bad)
        with pytest.raises(ValueError, match="capacity_factor"):
            expert_capacity(8, 4, 2, bad)
    with pytest.raises(ValueError, match="capacity"):
        capacity_mix(moe.experts, x, torch.rand(1, N), capacity=0)


def make_bank_model(execution: str, dtype=torch.float32) -> MultiGateMoE:
    torch.manual_seed(4)
    return MultiGateMoE(mlp_experts(N, D, 5, 3), 3,
                        gate=DSelectKGate(N, k=2, input_dim=D, entropy_reg=0.01),
                        towers=mlp_towers(3, 3, [4], [1, 2, 1]), execution=execution).to(dtype)


@pytest.mark.parametrize("execution", ["dense", "capacity"])
def test_compile_fullgraph(execution: str) -> None:
    torch._dynamo.reset()
    model = make_bank_model(execution)
    model.capacity_factor = N / 2  # capacity with room for all
    with torch.no_grad():
        model.gates.z_proj.weight.normal_(0, 3.0)  # saturated selectors: sparse weights
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(16, D)
    outs, aux = model(x)
    outs_c, aux_c = compiled(x)
    for a, b in zip(outs_c, outs, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(aux_c, aux)
    params = list(model.parameters())
    g = torch.autograd.grad(sum((o**2).sum() for o in outs) + aux, params)
    g_c = torch.autograd.grad(sum((o**2).sum() for o in outs_c) + aux_c, params)
    for a, b in zip(g_c, g, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make_gate", [
    lambda: DSelectKGate(N, k=2, input_dim=D, entropy_reg=0.1),
    lambda: DSelectKGate(N, k=3, entropy_reg=0.1),
    lambda: SoftmaxGate(N, input_dim=D),
    lambda: NoisyTopKGate(N, k=2, input_dim=D, noisy=False),
])
def test_bank_layer_state_converts_to_and_from_per_module_layout(make_gate) -> None:
    torch.manual_seed(5)
    banked = MultiGateMoE(mlp_experts(N, D, 5, 3), 3, gate=make_gate(),
                          towers=mlp_towers(3, 3, [4], 2)).double()
    separate = MultiGateMoE(nn.ModuleList(banked.experts.member(e) for e in range(N)), 3,
                            gate=[make_gate() for _ in range(3)],
                            towers=[banked.towers.member(t) for t in range(3)]).double()
    x = torch.randn(7, D, dtype=torch.float64)
    # bank layout -> per-module layout
    separate.load_state_dict(banked.state_dict())
    banked.eval(), separate.eval()
    for a, b in zip(banked(x)[0], separate(x)[0], strict=True):
        torch.testing.assert_close(a, b)
    # per-module layout -> bank layout
    with torch.no_grad():
        for p in separate.parameters():
            p.add_(0.1 * torch.randn_like(p))
    banked.load_state_dict(separate.state_dict())
    for a, b in zip(banked(x)[0], separate(x)[0], strict=True):
        torch.testing.assert_close(a, b)


def test_bank_state_into_arbitrary_modules_is_refused_clearly() -> None:
    banked = MultiGateMoE(mlp_experts(4, D, 5, 3), 2)
    odd = MultiGateMoE(nn.ModuleList(nn.Linear(D, 3) for _ in range(4)), 2)
    with pytest.raises(ValueError, match="converts only to gates or nn.Sequential"):
        odd.load_state_dict(banked.state_dict())
