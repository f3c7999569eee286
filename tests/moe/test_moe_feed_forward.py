"""BalancedTopKGate (Switch / Mixtral balancing loss) and the MoEFeedForward block."""

from __future__ import annotations

import pytest
import torch

from compactnn.moe import BalancedTopKGate, MoEFeedForward, SoftmaxGate
from compactnn.moe.gates import balance_loss


def test_topk_weights_are_renormalized_top_probabilities() -> None:
    torch.manual_seed(0)
    gate = BalancedTopKGate(5, k=2, input_dim=3)
    x = torch.randn(7, 3)
    w, _ = gate(x)
    p = torch.softmax(gate.router_proj(x), -1)
    top = p.topk(2, dim=-1)
    want = torch.zeros_like(p).scatter(-1, top.indices, top.values / top.values.sum(-1, True))
    torch.testing.assert_close(w, want)
    assert ((w != 0).sum(-1) == 2).all()


def test_balance_loss_closed_forms() -> None:
    # uniform probabilities, balanced routing: n * sum_e (1/n)(1/n) = 1
    n = 4
    probs = torch.full((8, n), 1 / n)
    weights = torch.zeros(8, n)
    for t in range(8):
        weights[t, [t % n, (t + 1) % n]] = 0.5
    assert balance_loss(weights, probs).item() == pytest.approx(1.0)
    # every token to experts 0 and 1 with all router mass there: n * (1/2 * 1/2) * 2 = n/2
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).repeat(6, 1)
    weights = probs.clone()
    assert balance_loss(weights, probs).item() == pytest.approx(n / 2)
    # f_e counts assignments: 3 tokens on {0,1}, 1 token on {2,3}; P fixed by hand
    weights = torch.tensor([[1, 1, 0, 0]] * 3 + [[0, 0, 1, 1]], dtype=torch.float)
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).repeat(4, 1)
    f = torch.tensor([3, 3, 1, 1]) / 8
    assert balance_loss(weights, probs).item() == pytest.approx(4 * (f * probs[0]).sum().item())
    assert balance_loss(torch.zeros(0, n), torch.zeros(0, n)).item() == 0


def test_balance_gradient_reaches_router_through_probabilities() -> None:
    torch.manual_seed(0)
    gate = BalancedTopKGate(4, k=1, input_dim=3, balance_reg=1.0)
    x = torch.randn(10, 3)
    w, aux = gate(x)
    logits = gate.router_proj(x)
    f = (w != 0).float().mean(0)
    want = 4 * (f * torch.softmax(logits, -1).mean(0)).sum()
    torch.testing.assert_close(aux, want)
    (g,) = torch.autograd.grad(aux, gate.router_proj.weight)
    (g_want,) = torch.autograd.grad(want, gate.router_proj.weight)
    torch.testing.assert_close(g, g_want)
    gate.eval()
    assert gate(x)[1].item() == 0


def test_gate_arguments() -> None:
    with pytest.raises(ValueError, match="k must be <="):
        BalancedTopKGate(3, k=4)
    with pytest.raises(ValueError, match="balance_reg"):
        BalancedTopKGate(3, balance_reg=-1.0)
    gate = BalancedTopKGate(3, k=1, balance_reg=0.2)
    assert BalancedTopKGate(**gate.config()).config() == gate.config()
    assert gate()[0].shape == (3,)


@pytest.mark.parametrize("gate", ["softmax", "topk", "noisy_topk", "dselect_k"])
def test_block_is_a_per_token_mixture_of_bank_members(gate: str) -> None:
    torch.manual_seed(0)
    block = MoEFeedForward(8, 12, 4, gate=gate, k=2).eval()
    x = torch.randn(2, 3, 8)
    out, aux = block(x)
    assert out.shape == x.shape and aux.item() == 0
    w = block.route(x)
    experts = block.moe.experts
    want = sum(w[..., e : e + 1] * experts[e](x) for e in range(4))
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(block.last_load, w.reshape(-1, 4).mean(0))
    nonzeros = (w != 0).sum(-1)
    assert block.last_sparse.item() == pytest.approx(
        (nonzeros <= block.gate.max_nonzeros).float().mean().item())


def test_block_training_aux_is_the_gates() -> None:
    torch.manual_seed(0)
    block = MoEFeedForward(8, 12, 4, gate="topk", gate_options={"balance_reg": 0.3})
    x = torch.randn(2, 5, 8)
    _, aux = block(x)
    _, want = block.gate(x.reshape(-1, 8))
    torch.testing.assert_close(aux, want)
    assert block.last_sparse.item() == 1.0


def test_capacity_block_compiles_in_one_graph() -> None:
    """Capacity execution has static shapes: dynamo traces the whole block (fullgraph)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = MoEFeedForward(8, 12, 4, gate="topk", execution="capacity", capacity_factor=1.0)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 6, 8)
    out, aux = block(x)
    out_c, aux_c = compiled(x)
    torch.testing.assert_close(out_c, out)
    torch.testing.assert_close(aux_c, aux)
    grads = torch.autograd.grad((out**2).sum() + aux, list(block.parameters()))
    grads_c = torch.autograd.grad((out_c**2).sum() + aux_c, list(block.parameters()))
    for g, gc in zip(grads, grads_c, strict=True):
        torch.testing.assert_close(gc, g)


def test_block_arguments() -> None:
    with pytest.raises(ValueError, match="gate"):
        MoEFeedForward(8, 12, 4, gate="expert_choice")
    with pytest.raises(ValueError, match="input_dim"):
        MoEFeedForward(8, 12, 4, gate=SoftmaxGate(4, input_dim=5))
    with pytest.raises(ValueError, match="gate_options"):
        MoEFeedForward(8, 12, 4, gate=SoftmaxGate(4, input_dim=8), gate_options={"k": 1})
    with pytest.raises(TypeError, match="gate must be"):
        MoEFeedForward(8, 12, 4, gate=3)
    with pytest.raises(ValueError, match="num_experts"):
        MoEFeedForward(8, 12, 1)
    block = MoEFeedForward(8, 12, 4)
    with pytest.raises(ValueError, match="x must have shape"):
        block(torch.randn(2, 3, 7))
