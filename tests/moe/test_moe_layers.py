"""Tests of MixtureOfExperts, MultiGateMoE and mlp_experts, incl. torch.compile and DDP."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from compactnn.moe import (
    DSelectKGate,
    GateBank,
    MixtureOfExperts,
    MLPBank,
    MultiGateMoE,
    NoisyTopKGate,
    SoftmaxGate,
    mlp_experts,
)


def test_mlp_experts() -> None:
    experts = mlp_experts(3, 4, [8, 6], 2, activation=nn.GELU, dropout=0.1)
    assert len(experts) == 3
    assert [type(m).__name__ for m in experts.member(0)] == [
        "Linear", "GELU", "Dropout", "Linear", "GELU", "Dropout", "Linear"
    ]
    assert experts[0](torch.randn(5, 4)).shape == (5, 2)
    assert not torch.equal(experts.member(0)[0].weight, experts.member(1)[0].weight)
    with pytest.raises(ValueError, match="hidden_features"):
        mlp_experts(2, 4, 0, 2)
    with pytest.raises(ValueError, match="num_experts"):
        mlp_experts(0, 4, 3, 2)


@pytest.mark.parametrize("input_dim", [None, 4])
def test_moe_matches_manual_mixture(input_dim: int | None) -> None:
    torch.manual_seed(0)
    experts = mlp_experts(5, 4, 6, 3)
    gate = DSelectKGate(5, k=2, input_dim=input_dim)
    moe = MixtureOfExperts(experts, gate)
    x = torch.randn(7, 4)
    out, aux = moe(x)
    weights, aux_gate = gate(None if input_dim is None else x)
    want = sum(weights[..., e].reshape(-1, 1) * experts[e](x) for e in range(5))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(aux, aux_gate)
    assert out.shape == (7, 3)


def test_moe_separate_routing_input() -> None:
    torch.manual_seed(0)
    experts = mlp_experts(4, 6, 5, 2)
    gate = SoftmaxGate(4, input_dim=3)
    moe = MixtureOfExperts(experts, gate)
    x, r = torch.randn(5, 6), torch.randn(5, 3)
    out, _ = moe(x, routing_input=r)
    w, _ = gate(r)
    torch.testing.assert_close(out, sum(w[:, e : e + 1] * experts[e](x) for e in range(4)))
    with pytest.raises(ValueError, match=r"shape \(batch, 3\), got \(5, 6\)"):
        moe(x)  # routes on x, which has the wrong width


def test_moe_errors() -> None:
    experts = mlp_experts(4, 3, 5, 2)
    with pytest.raises(ValueError, match="num_experts=5 but there are 4 experts"):
        MixtureOfExperts(experts, DSelectKGate(5, k=2))
    with pytest.raises(TypeError, match="Gate"):
        MixtureOfExperts(experts, nn.Linear(3, 4))
    with pytest.raises(ValueError, match="execution"):
        MixtureOfExperts(experts, DSelectKGate(4, k=2), execution="lazy")
    with pytest.raises(ValueError, match="at least 2 experts"):
        MixtureOfExperts(mlp_experts(1, 3, 5, 2), DSelectKGate(2, k=1))
    mismatched = nn.ModuleList([nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 3)])
    moe = MixtureOfExperts(mismatched, SoftmaxGate(3))
    with pytest.raises(ValueError, match="equal output shapes"):
        moe(torch.randn(4, 3))


def test_multigate_moe_matches_manual() -> None:
    torch.manual_seed(0)
    experts = mlp_experts(4, 3, 6, 5)
    gate = SoftmaxGate(4, input_dim=3)
    towers = [nn.Linear(5, 1), nn.Linear(5, 2)]
    model = MultiGateMoE(experts, 2, gate=gate, towers=towers)
    assert model.gates[0] is not gate and model.gates[0] is not model.gates[1]
    assert not torch.equal(model.gates[0].proj.weight, model.gates[1].proj.weight)
    x = torch.randn(8, 3)
    outputs, aux = model(x)
    assert [o.shape for o in outputs] == [(8, 1), (8, 2)]
    for t in range(2):
        w, _ = model.gates[t](x)
        mixed = sum(w[:, e : e + 1] * experts[e](x) for e in range(4))
        torch.testing.assert_close(outputs[t], towers[t](mixed))
    assert aux.item() == 0.0


def test_multigate_moe_aux_is_summed_and_gate_forms() -> None:
    torch.manual_seed(0)
    experts = mlp_experts(5, 3, 6, 2)
    model = MultiGateMoE(experts, 3)  # default: static DSelect-k, k = 2, per task
    assert all(isinstance(g, DSelectKGate) and g.k == 2 and g.is_static for g in model.gates)
    _, aux = model(torch.randn(4, 3))
    want = sum(g()[1] for g in model.gates)
    torch.testing.assert_close(aux, want)
    by_callable = MultiGateMoE(
        experts, 2, gate=lambda t: NoisyTopKGate(5, k=t + 1, input_dim=3),
        towers=lambda t: nn.Linear(2, 1),
    )
    assert [g.k for g in by_callable.gates] == [1, 2]
    outputs, _ = by_callable(torch.randn(4, 3))
    assert [o.shape for o in outputs] == [(4, 1), (4, 1)]
    with pytest.raises(ValueError, match="got 1 gates for num_tasks=2"):
        MultiGateMoE(experts, 2, gate=[DSelectKGate(5, k=2)])
    with pytest.raises(ValueError, match="got 3 towers for num_tasks=2"):
        MultiGateMoE(experts, 2, towers=[nn.Identity()] * 3)
    with pytest.raises(ValueError, match="num_tasks"):
        MultiGateMoE(experts, 0)
    with pytest.raises(ValueError, match="gate 1 has num_experts=4"):
        MultiGateMoE(experts, 2, gate=[DSelectKGate(5, k=2), DSelectKGate(4, k=2)])
    with pytest.raises(TypeError, match="towers"):
        MultiGateMoE(experts, 2, towers=nn.Linear(2, 1))


def make_model(seed: int = 0, execution: str = "auto") -> MultiGateMoE:
    torch.manual_seed(seed)
    experts = mlp_experts(4, 6, 8, 5)
    gate = DSelectKGate(4, k=2, input_dim=6, entropy_reg=0.01)
    return MultiGateMoE(
        experts, 2, gate=gate, towers=[nn.Linear(5, 1), nn.Linear(5, 1)], execution=execution
    )


def test_state_dict_roundtrip_determinism_reset_and_repr() -> None:
    a, b = make_model(1), make_model(1)
    x = torch.randn(9, 6)
    for u, v in zip(a(x)[0], b(x)[0], strict=True):
        assert torch.equal(u, v)
    c = make_model(2)
    c.load_state_dict(a.state_dict())
    for u, v in zip(a(x)[0], c(x)[0], strict=True):
        assert torch.equal(u, v)
    before = [p.clone() for p in a.parameters()]
    a.reset_parameters()
    assert all(not torch.equal(p, q) for p, q in zip(before, a.parameters(), strict=True))
    # reset keeps the official DSelect-k initialization ranges
    assert a.gates[0].z_proj.weight.abs().max() <= 0.01
    assert "num_tasks=2" in repr(a) and "execution='auto'" in repr(a)
    moe = MixtureOfExperts(mlp_experts(3, 2, 4, 1), NoisyTopKGate(3, k=1))
    moe.reset_parameters()
    assert "num_experts=3" in repr(moe)


def test_training_reduces_loss() -> None:
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 6)
    y = [x[:, :1].sin(), x[:, 1:2] * x[:, 2:3]]
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        outputs, aux = model(x)
        loss = sum(((o - t) ** 2).mean() for o, t in zip(outputs, y, strict=True))
        (loss + aux).backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("execution", ["dense", "auto"])
def test_torch_compile(execution: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    experts = mlp_experts(4, 6, 8, 5)
    gate = DSelectKGate(4, k=2, input_dim=6, entropy_reg=0.01)
    with torch.no_grad():
        gate.z_proj.weight.normal_(0, 3.0)  # saturated: sparse weights, "auto" goes sparse
    model = MixtureOfExperts(experts, gate, execution=execution)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(16, 6)
    out, aux = model(x)
    out_c, aux_c = compiled(x)
    torch.testing.assert_close(out_c, out)
    torch.testing.assert_close(aux_c, aux)
    grads = torch.autograd.grad((out**2).sum() + aux, list(model.parameters()))
    grads_c = torch.autograd.grad((out_c**2).sum() + aux_c, list(model.parameters()))
    for g, gc in zip(grads, grads_c, strict=True):
        torch.testing.assert_close(gc, g)


# sparse execution leaves experts without rows (no gradient); capacity execution has
# static shapes, every expert runs on its slots
EXECUTIONS_DDP = (("dense", False), ("sparse", True), ("capacity", False))


def _ddp_worker(rank: int, world_size: int, init_file: str, result_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        for execution, find_unused in EXECUTIONS_DDP:
            model = make_model(seed=0, execution=execution)
            assert isinstance(model.gates, GateBank) and isinstance(model.experts, MLPBank)
            if execution != "dense":
                with torch.no_grad():  # saturated selectors: sparse weights
                    model.gates.z_proj.weight.normal_(0, 3.0)
                    dist.broadcast(model.gates.z_proj.weight, 0)
            ddp = DDP(model, find_unused_parameters=find_unused)
            optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
            torch.manual_seed(100 + rank)  # different data on each rank
            x = torch.randn(16, 6)
            outputs, aux = ddp(x)
            loss = sum((o**2).mean() for o in outputs) + aux
            loss.backward()
            optimizer.step()
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            torch.save(flat, os.path.join(result_dir, f"{execution}_{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_step_keeps_ranks_identical() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_ddp_worker, args=(2, init_file, tmp), nprocs=2, join=True)
        initial = torch.cat([p.detach().flatten() for p in make_model(seed=0).parameters()])
        for execution, _ in EXECUTIONS_DDP:
            p0 = torch.load(os.path.join(tmp, f"{execution}_0.pt"))
            p1 = torch.load(os.path.join(tmp, f"{execution}_1.pt"))
            torch.testing.assert_close(p0, p1, rtol=0, atol=1e-6)
            assert not torch.allclose(p0, initial)  # a step happened
