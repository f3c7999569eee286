"""BalancedTopKGate exactly: a static gate's balancing loss as one token, the loss's dtype,
the documented defaults, and the bias-free router of a per-example gate."""

from __future__ import annotations

import pytest
import torch

from compactnn.moe import BalancedTopKGate
from compactnn.moe.gates import balance_loss


def test_a_static_gates_weights_are_one_token() -> None:
    weights = torch.tensor([0.0, 0.7, 0.3, 0.0])
    probs = torch.tensor([0.1, 0.5, 0.3, 0.1])
    # f = (0, 1/2, 1/2, 0), P = probs: n * sum f P = 4 * (0.25 + 0.15)
    assert balance_loss(weights, probs).item() == pytest.approx(1.6, abs=1e-6)
    assert balance_loss(weights, probs).item() == balance_loss(weights[None], probs[None]).item()
    gate = BalancedTopKGate(4, k=2, balance_reg=1.0)
    assert gate()[1].item() == pytest.approx(1.0, abs=1e-6)  # uniform routing: the minimum


def test_the_loss_keeps_the_probabilities_dtype() -> None:
    weights = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1]])
    for dtype in (torch.float16, torch.float64):
        out = balance_loss(weights.to(dtype), probs.to(dtype))
        assert out.dtype == dtype and out.shape == ()
    f = torch.tensor([1 / 3, 2 / 3, 0.0], dtype=torch.float64)
    want = 3 * (f * probs.double().mean(dim=0)).sum()
    assert balance_loss(weights.double(), probs.double()).item() == want.item()


def test_defaults_and_messages() -> None:
    assert BalancedTopKGate(4).config() == {"num_experts": 4, "k": 2, "input_dim": None,
                                            "balance_reg": 0.01}
    with pytest.raises(ValueError, match=r"^balance_reg must be"):
        BalancedTopKGate(4, balance_reg=-1.0)


def test_a_per_example_router_is_bias_free_and_has_no_static_logits() -> None:
    gate = BalancedTopKGate(4, input_dim=3)
    assert gate.logits is None and gate.router_proj.bias is None
    assert set(dict(gate.named_parameters())) == {"router_proj.weight"}
