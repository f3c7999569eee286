"""Gate API: keyword-only options, one naming scheme, nn.Linear routers, and hostile
values (absurd gamma and regularizer weights, non-bool flags)."""

from __future__ import annotations

import pytest
import torch

from compactnn.moe import DSelectKGate, NoisyTopKGate, SoftmaxGate, smooth_step


def test_gates_take_everything_but_num_experts_by_keyword() -> None:
    for make in (lambda: DSelectKGate(8, 2), lambda: NoisyTopKGate(8, 2),
                 lambda: SoftmaxGate(8, 4)):
        with pytest.raises(TypeError, match="positional"):
            make()
    # the README spelling
    gate = DSelectKGate(num_experts=8, k=2, input_dim=32)
    assert gate.config()["input_dim"] == 32
    assert type(gate)(**gate.config()).config() == gate.config()


@pytest.mark.parametrize("gamma", [1e-30, 1e30, 1e300, 1e-5, 2e4])
def test_gamma_outside_the_computable_range_is_refused(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        DSelectKGate(4, k=2, gamma=gamma)
    with pytest.raises(ValueError, match="gamma"):
        smooth_step(torch.zeros(3), gamma)


@pytest.mark.parametrize("gamma", [1e-4, 1e4])
def test_extreme_accepted_gamma_gives_finite_weights_and_gradients(gamma: float) -> None:
    torch.manual_seed(0)
    gate = DSelectKGate(6, k=2, gamma=gamma, input_dim=3, entropy_reg=0.1)
    x = torch.randn(5, 3) * 1e3
    weights, aux = gate(x)
    (weights.sum() + aux).backward()
    assert torch.isfinite(weights).all() and torch.isfinite(aux)
    assert all(torch.isfinite(p.grad).all() for p in gate.parameters())
    # a logit at the cubic region's edge saturates exactly, at any accepted gamma
    t = torch.tensor([-gamma / 2, gamma / 2])
    assert smooth_step(t, gamma).tolist() == [0.0, 1.0]


def test_absurd_regularizer_weights_and_non_bool_flags_are_refused() -> None:
    with pytest.raises(ValueError, match="entropy_reg"):
        DSelectKGate(4, k=2, entropy_reg=1e300)
    with pytest.raises(ValueError, match="entropy_reg"):
        DSelectKGate(4, k=2, entropy_reg=float("inf"))
    with pytest.raises(ValueError, match="importance_reg"):
        NoisyTopKGate(4, k=2, importance_reg=float("nan"))
    with pytest.raises(ValueError, match="load_reg"):
        NoisyTopKGate(4, k=2, load_reg=1e7)
    with pytest.raises(TypeError, match="noisy must be a bool"):
        NoisyTopKGate(4, k=2, noisy="no")
    with pytest.raises(TypeError, match="noisy must be a bool"):
        NoisyTopKGate(4, k=2, noisy=1)


def test_topk_routers_are_bias_free_linear_maps_and_old_matrices_load() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(5, k=2, input_dim=3, noisy=False).eval()
    assert isinstance(gate.gate_proj, torch.nn.Linear) and gate.gate_proj.bias is None
    w_g, w_noise = torch.randn(3, 5), torch.randn(3, 5)  # old layout: x @ W, (in, n)
    gate.load_state_dict({"gate_logits": w_g, "noise_logits": w_noise})
    x = torch.randn(7, 3)
    clean = x @ w_g
    top = clean.topk(2, dim=-1)
    want = torch.zeros(7, 5).scatter(-1, top.indices, torch.softmax(top.values, -1))
    torch.testing.assert_close(gate(x)[0], want)
    torch.testing.assert_close(gate.noise_proj.weight, w_noise.t())
