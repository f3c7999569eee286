"""Tests of the gates: smooth-step, DSelect-k (static and per-example), softmax, noisy Top-k."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.moe import DSelectKGate, NoisyTopKGate, SoftmaxGate, cv_squared, smooth_step
from compactnn.moe.gates.topk import load_probability

# --------------------------------------------------------------------------- references


def ref_smooth_step(t: float, gamma: float) -> float:
    if t <= -gamma / 2:
        return 0.0
    if t >= gamma / 2:
        return 1.0
    return -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5


def ref_weights(z: list[list[float]], w: list[float], n: int, gamma: float) -> list[float]:
    """DSelect-k weights by hand: codes MSB first, softmax over the selector logits."""
    m = len(z[0])
    exp_w = [math.exp(v) for v in w]
    alpha = [v / sum(exp_w) for v in exp_w]
    q = [0.0] * n
    for sel, a in zip(z, alpha, strict=True):
        s = [ref_smooth_step(v, gamma) for v in sel]
        for i in range(n):
            bits = format(i, f"0{m}b")
            r = 1.0
            for j, b in enumerate(bits):
                r *= s[j] if b == "1" else 1 - s[j]
            q[i] += a * r
    return q


def ref_selector(z: list[float], n: int, gamma: float) -> list[float]:
    return ref_weights([z], [0.0], n, gamma)


def static_gate(n: int, k: int, z: list[list[float]], w: list[float], **kw) -> DSelectKGate:
    gate = DSelectKGate(n, k=k, **kw).double()
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor(z, dtype=torch.float64))
        gate.w_logits.copy_(torch.tensor(w, dtype=torch.float64))
    return gate


# --------------------------------------------------------------------------- smooth step


@pytest.mark.parametrize("gamma", [0.3, 1.0, 2.5])
def test_smooth_step_values(gamma: float) -> None:
    t = torch.tensor(
        [-10.0, -gamma, -gamma / 2, -gamma / 4, 0.0, gamma / 4, gamma / 2, gamma, 10.0],
        dtype=torch.float64,
    )
    got = smooth_step(t, gamma)
    want = torch.tensor([ref_smooth_step(v, gamma) for v in t.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    # scale-free values: S(gamma/4) = -2/64 + 3/8 + 1/2
    assert got[5].item() == pytest.approx(0.84375)
    assert got[4].item() == 0.5
    # exact zeros and ones outside the cubic region
    assert got[:3].eq(0).all() and got[6:].eq(1).all()
    # symmetry S(-t) = 1 - S(t)
    torch.testing.assert_close(smooth_step(-t, gamma), 1 - got)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_smooth_step_continuity_of_value_and_derivative(gamma: float) -> None:
    for edge, outside in ((-gamma / 2, 0.0), (gamma / 2, 1.0)):
        for delta in (1e-3, 1e-5, 1e-7):
            for point in (edge - delta, edge, edge + delta):
                t = torch.tensor(point, dtype=torch.float64, requires_grad=True)
                s = smooth_step(t, gamma)
                (grad,) = torch.autograd.grad(s, t)
                # value within O(delta^2) of the constant outside, derivative within O(delta)
                assert abs(s.item() - outside) <= 6 * delta**2 / gamma**2 + 1e-15
                assert abs(grad.item()) <= 12 * delta / gamma**2 + 1e-15
    # the derivative of the cubic inside matches autograd
    t = torch.linspace(-gamma / 2 + 1e-3, gamma / 2 - 1e-3, 11, dtype=torch.float64)
    t.requires_grad_(True)
    (grad,) = torch.autograd.grad(smooth_step(t, gamma).sum(), t)
    torch.testing.assert_close(grad, -6 * t.detach() ** 2 / gamma**3 + 3 / (2 * gamma))


def test_smooth_step_exact_outside_and_zero_gradient() -> None:
    t = torch.tensor([-1e30, -3.0, -0.5, 0.5, 3.0, 1e30], requires_grad=True)
    s = smooth_step(t, 1.0)
    assert s.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    (grad,) = torch.autograd.grad(s.sum(), t)
    assert grad.eq(0).all()


# --------------------------------------------------------------------------- DSelect-k values


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 13, 16])
def test_selector_outputs_sum_to_one_over_all_codes(n: int) -> None:
    torch.manual_seed(n)
    gate = DSelectKGate(n, k=2, input_dim=4).double()
    with torch.no_grad():
        gate.z_proj.weight.normal_(0, 0.5)
    x = torch.randn(7, 4, dtype=torch.float64)
    r = gate.selector_outputs(x, all_codes=True)
    m = math.ceil(math.log2(n))
    assert r.shape == (7, 2, 2**m)
    torch.testing.assert_close(r.sum(-1), torch.ones(7, 2, dtype=torch.float64))
    assert gate.selector_outputs(x).shape == (7, 2, n)


def test_literal_small_cases() -> None:
    # n = 2, one selector in the middle: half and half
    gate = static_gate(2, 1, [[0.0]], [0.0])
    torch.testing.assert_close(gate()[0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    # n = 4, z = (+g/2, -g/2): top bit 1, low bit 0 -> code "10" = expert 2 (MSB first)
    gate = static_gate(4, 1, [[0.5, -0.5]], [0.0])
    assert gate()[0].tolist() == [0.0, 0.0, 1.0, 0.0]
    gate = static_gate(4, 1, [[-0.5, 0.5]], [0.0])
    assert gate()[0].tolist() == [0.0, 1.0, 0.0, 0.0]
    # n = 3, z = 0: each of the 4 codes gets 1/4, the unreachable one is dropped
    gate = static_gate(3, 1, [[0.0, 0.0]], [0.0])
    weights, aux = gate()
    torch.testing.assert_close(weights, torch.full((3,), 0.25, dtype=torch.float64))
    assert aux.item() == pytest.approx(1 / 0.75)
    # n = 8, k = 2, two saturated selectors on experts 5 (101) and 6 (110), equal weight
    gate = static_gate(8, 2, [[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]], [0.3, 0.3])
    assert gate()[0].tolist() == [0, 0, 0, 0, 0, 0.5, 0.5, 0]
    # n = 5, k = 2, selector weights softmax([0, log 3]) = (1/4, 3/4); experts 4 and 0
    gate = static_gate(5, 2, [[1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]], [0.0, math.log(3)])
    torch.testing.assert_close(
        gate()[0], torch.tensor([0.75, 0, 0, 0, 0.25], dtype=torch.float64)
    )


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [1, 2])
def test_static_weights_match_hand_computation(n: int, k: int) -> None:
    gamma = 0.8
    m = math.ceil(math.log2(n))
    gen = torch.Generator().manual_seed(10 * n + k)
    z = (torch.rand(k, m, generator=gen, dtype=torch.float64) - 0.5) * 1.2 * gamma
    w = torch.randn(k, generator=gen, dtype=torch.float64)
    gate = static_gate(n, k, z.tolist(), w.tolist(), gamma=gamma)
    weights, _ = gate()
    assert weights.shape == (n,)
    want = torch.tensor(ref_weights(z.tolist(), w.tolist(), n, gamma), dtype=torch.float64)
    torch.testing.assert_close(weights, want)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [1, 2])
def test_per_example_weights_match_hand_computation(n: int, k: int) -> None:
    gamma = 1.0
    m = math.ceil(math.log2(n))
    torch.manual_seed(100 * n + k)
    gate = DSelectKGate(n, k=k, gamma=gamma, input_dim=3).double()
    with torch.no_grad():
        gate.z_proj.weight.normal_(0, 0.4)
        gate.w_proj.weight.normal_(0, 1.0)
    x = torch.randn(6, 3, dtype=torch.float64)
    weights, _ = gate(x)
    assert weights.shape == (6, n)
    zs = x @ gate.z_proj.weight.T + gate.z_proj.bias  # (batch, k*m), selector-major
    ws = x @ gate.w_proj.weight.T + gate.w_proj.bias
    for b in range(6):
        z = [[zs[b, i * m + j].item() for j in range(m)] for i in range(k)]
        want = ref_weights(z, ws[b].tolist(), n, gamma)
        torch.testing.assert_close(weights[b].detach(), torch.tensor(want, dtype=torch.float64))


def test_per_example_reads_selector_major() -> None:
    gate = DSelectKGate(8, k=2, input_dim=2)
    with torch.no_grad():
        gate.z_proj.weight.zero_()
        gate.z_proj.bias.copy_(torch.arange(6.0))
    z, w = gate.logits(torch.zeros(1, 2))
    assert z.shape == (1, 2, 3) and w.shape == (1, 2)
    assert z[0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_per_example_equals_static_with_constant_logits() -> None:
    static = DSelectKGate(6, k=2)
    per_example = DSelectKGate(6, k=2, input_dim=4)
    with torch.no_grad():
        per_example.z_proj.weight.zero_()
        per_example.w_proj.weight.zero_()
        per_example.z_proj.bias.copy_(static.z_logits.flatten())
        per_example.w_proj.bias.copy_(static.w_logits)
    w_static, aux_static = static()
    w_ex, aux_ex = per_example(torch.randn(3, 4))
    torch.testing.assert_close(w_ex, w_static.expand(3, 6))
    torch.testing.assert_close(aux_ex, 3 * aux_static)


def test_official_initialization_ranges() -> None:
    torch.manual_seed(0)
    gamma = 2.0
    static = DSelectKGate(16, k=4, gamma=gamma)
    assert static.z_logits.shape == (4, 4) and static.w_logits.shape == (4,)
    assert static.z_logits.abs().max() <= gamma / 100
    assert static.w_logits.abs().max() <= 0.05
    ex = DSelectKGate(16, k=4, gamma=gamma, input_dim=50)
    assert ex.z_proj.weight.shape == (16, 50) and ex.w_proj.weight.shape == (4, 50)
    for p in (ex.z_proj.weight, ex.z_proj.bias):
        assert p.abs().max() <= gamma / 100 and p.abs().max() > gamma / 200
    for p in (ex.w_proj.weight, ex.w_proj.bias):
        assert p.abs().max() <= 0.05 and p.abs().max() > 0.025
    # starts dense and near uniform
    weights, _ = static()
    assert (weights > 0).all()
    torch.testing.assert_close(weights, torch.full((16,), 1 / 16), atol=2e-3, rtol=0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    data=st.data(),
    per_example=st.booleans(),
)
def test_saturated_gate_has_at_most_k_nonzeros(n: int, data, per_example: bool) -> None:
    k = data.draw(st.integers(1, n))
    seed = data.draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    if per_example:
        gate = DSelectKGate(n, k=k, input_dim=3)
        with torch.no_grad():
            gate.z_proj.weight.zero_()
            gate.z_proj.bias.copy_(torch.randn(k * gate.num_binary).sign())
            gate.w_proj.weight.normal_()
        weights, _ = gate(torch.randn(5, 3))
    else:
        gate = DSelectKGate(n, k=k)
        with torch.no_grad():
            gate.z_logits.copy_(torch.randn(k, gate.num_binary).sign() * 0.5)
            gate.w_logits.normal_()
        weights, _ = gate()
    weights = weights.reshape(-1, n)
    assert (weights >= 0).all()
    assert ((weights > 0).sum(-1) <= k).all()
    assert (weights.sum(-1) <= 1 + 1e-6).all()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 40), data=st.data())
def test_weights_nonnegative_and_sum_at_most_one(n: int, data) -> None:
    k = data.draw(st.integers(1, n))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    gate = DSelectKGate(n, k=k, input_dim=2)
    with torch.no_grad():
        gate.z_proj.weight.normal_(0, 0.5)
    weights, _ = gate(torch.randn(4, 2))
    assert (weights >= 0).all()
    sums = weights.sum(-1)
    assert (sums <= 1 + 1e-6).all()
    if n & (n - 1) == 0:  # power of two: every code is an expert
        torch.testing.assert_close(sums, torch.ones(4))


# --------------------------------------------------------------------------- regularizers


def test_unreachable_penalty_is_one_per_selector_when_reachable_mass_is_one() -> None:
    # n = 5: codes 000..100 reachable. Saturated selectors on experts 4, 1, 2.
    z = [[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]]
    gate = static_gate(5, 3, z, [0.1, 0.2, 0.3])
    weights, aux = gate()
    assert aux.item() == pytest.approx(3.0)
    # the top bit is 0: the two low bits may be anywhere, the mass stays on reachable codes
    gate = static_gate(5, 2, [[-0.7, 0.1, -0.2], [-2.0, 0.3, 0.0]], [0.0, 0.0])
    assert gate()[1].item() == pytest.approx(2.0)
    # per example: 1 per selector per example with "sum", per selector with "mean"
    for reduction, factor in (("sum", 4), ("mean", 1)):
        ex = DSelectKGate(5, k=2, input_dim=3, reduction=reduction)
        with torch.no_grad():
            ex.z_proj.weight.zero_()
            ex.z_proj.bias.copy_(torch.tensor([-1.0, 0.2, -0.1, -1.0, 1.0, 1.0]))
        _, aux = ex(torch.randn(4, 3))
        assert aux.item() == pytest.approx(2.0 * factor)


def test_no_penalty_for_power_of_two() -> None:
    gate = DSelectKGate(8, k=2)
    assert gate()[1].item() == 0.0


def test_penalty_matches_official_formula_when_finite() -> None:
    torch.manual_seed(3)
    gate = DSelectKGate(6, k=2, input_dim=3).double()
    with torch.no_grad():
        gate.z_proj.weight.normal_(0, 0.15)
    x = torch.randn(8, 3, dtype=torch.float64)
    r = gate.selector_outputs(x)
    official = (1 / r.sum(-1)).sum()
    assert torch.isfinite(official) and official > 2 * 8
    torch.testing.assert_close(gate(x)[1], official)


def test_saturation_on_unreachable_code_stays_finite() -> None:
    # n = 5, selector 0: top bit saturated to 1 and middle bit saturated to 1 -> code 11x,
    # unreachable; the last bit is still in the smooth region.
    z = [[0.9, 0.8, 0.1], [-1.0, -1.0, -1.0]]
    gate = static_gate(5, 2, z, [0.0, 0.0], penalty_eps=1e-6)
    r = gate.selector_outputs()
    assert r[0].sum().item() == 0.0  # official penalty: 1/0 = inf, its gradient NaN
    weights, aux = gate()
    assert torch.isfinite(aux)
    assert aux.item() == pytest.approx(1e6 + 1.0)
    (weights.sum() + aux).backward()
    assert torch.isfinite(gate.z_logits.grad).all() and torch.isfinite(gate.w_logits.grad).all()
    # the official formula really is infinite and NaN here
    z_param = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    probe = static_gate(5, 2, z, [0.0, 0.0])
    probe.z_logits = torch.nn.Parameter(z_param)
    official = (1 / probe.selector_outputs().sum(-1)).sum()
    assert math.isinf(official.item())
    official.backward()
    assert torch.isnan(probe.z_logits.grad).any()


def test_entropy_regularizer_value_and_reduction() -> None:
    torch.manual_seed(1)
    lam = 0.3
    gate = DSelectKGate(8, k=3, input_dim=4, entropy_reg=lam).double()
    with torch.no_grad():
        gate.z_proj.weight.normal_(0, 0.5)
    x = torch.randn(5, 4, dtype=torch.float64)
    r = gate.selector_outputs(x)
    entropy = -(r * torch.log(r + 1e-6)).sum()
    torch.testing.assert_close(gate(x)[1], lam * entropy)
    gate.reduction = "mean"
    torch.testing.assert_close(gate(x)[1], lam * entropy / 5)
    # static, and combined with the penalty for n = 6
    static = DSelectKGate(6, k=2, entropy_reg=lam).double()
    r = static.selector_outputs()
    want = lam * -(r * torch.log(r + 1e-6)).sum() + (1 / r.sum(-1)).sum()
    torch.testing.assert_close(static()[1], want)


def test_entropy_regularizer_pushes_towards_one_hot() -> None:
    torch.manual_seed(0)
    gate = DSelectKGate(4, k=1, entropy_reg=1.0)
    optimizer = torch.optim.SGD(gate.parameters(), lr=0.5)
    for _ in range(100):
        optimizer.zero_grad()
        _, aux = gate()
        aux.backward()
        optimizer.step()
    weights, aux = gate()
    assert (weights > 0).sum() == 1 and aux.item() < 1e-4


def test_aux_is_zero_in_eval_mode() -> None:
    gate = DSelectKGate(5, k=2, entropy_reg=0.1).eval()
    weights, aux = gate()
    assert aux.item() == 0.0 and aux.dim() == 0
    assert gate.regularization(gate.selector_outputs()).item() > 0


# --------------------------------------------------------------------------- gradients


def test_dselectk_gradients_against_finite_differences() -> None:
    torch.manual_seed(0)
    for n, k in ((3, 1), (5, 2), (8, 2)):
        gate = DSelectKGate(n, k=k, gamma=1.0, input_dim=3, entropy_reg=0.1).double()
        with torch.no_grad():
            gate.z_proj.weight.normal_(0, 0.2)
        x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        params = [gate.z_proj.weight, gate.z_proj.bias, gate.w_proj.weight, gate.w_proj.bias]

        def fn(x, *ps, gate=gate):
            names = ("z_proj.weight", "z_proj.bias", "w_proj.weight", "w_proj.bias")
            out = torch.func.functional_call(gate, dict(zip(names, ps, strict=True)), (x,))
            return out[0], out[1]

        assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)
        static = DSelectKGate(n, k=k, entropy_reg=0.1).double()

        def fs(z, w, gate=static):
            return torch.func.functional_call(gate, {"z_logits": z, "w_logits": w}, ())

        z = (torch.rand(k, static.num_binary, dtype=torch.float64) - 0.5).requires_grad_()
        w = torch.randn(k, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(fs, (z, w), eps=1e-6, atol=1e-6)


def test_baseline_gradients_against_finite_differences() -> None:
    torch.manual_seed(0)
    softmax = SoftmaxGate(5, input_dim=3).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: softmax(x)[0], (x,))
    topk = NoisyTopKGate(6, k=2, input_dim=3).double()
    with torch.no_grad():
        topk.gate_proj.weight.normal_()
    topk.eval()  # deterministic: no noise
    assert torch.autograd.gradcheck(lambda x: topk(x)[0], (x,))


# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("input_dim", [None, 3])
def test_softmax_gate(input_dim: int | None) -> None:
    gate = SoftmaxGate(5, input_dim=input_dim)
    x = torch.randn(4, 3)
    weights, aux = gate(x)
    shape = (5,) if input_dim is None else (4, 5)
    assert weights.shape == shape and aux.item() == 0.0
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))
    if input_dim is None:
        torch.testing.assert_close(weights, torch.full((5,), 0.2))


def test_noisy_topk_exact_sparsity_and_noise_only_in_training() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(8, k=3, input_dim=4)
    with torch.no_grad():
        gate.gate_proj.weight.normal_()
        gate.noise_proj.weight.normal_()
    x = torch.randn(16, 4)
    gate.eval()
    w1, aux = gate(x)
    w2, _ = gate(x)
    assert torch.equal(w1, w2) and aux.item() == 0.0
    assert ((w1 > 0).sum(-1) == 3).all()
    torch.testing.assert_close(w1.sum(-1), torch.ones(16))
    # the kept experts are the top 3 of the clean logits
    top = (gate.gate_proj(x)).topk(3, dim=-1).indices.sort(-1).values
    assert torch.equal((w1 > 0).nonzero()[:, 1].view(16, 3), top)
    gate.train()
    w3, _ = gate(x)
    w4, _ = gate(x)
    assert not torch.equal(w3, w4)
    assert ((w3 > 0).sum(-1) == 3).all()
    gate.noisy = False
    assert torch.equal(gate(x)[0], w1)


def test_noisy_topk_static() -> None:
    gate = NoisyTopKGate(6, k=2)
    with torch.no_grad():
        gate.gate_logits.copy_(torch.tensor([0.0, 3.0, 1.0, 0.0, 2.0, 0.0]))
    gate.eval()
    weights, _ = gate()
    e = math.exp(1.0)
    want = torch.tensor([0, e / (1 + e), 0, 0, 1 / (1 + e), 0])
    torch.testing.assert_close(weights, want)


def test_noisy_topk_importance_loss() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(6, k=2, input_dim=3, noisy=False, importance_reg=0.5)
    with torch.no_grad():
        gate.gate_proj.weight.normal_()
    x = torch.randn(10, 3)
    weights, aux = gate(x)
    importance = weights.sum(0)
    want = 0.5 * importance.var(unbiased=False) / importance.mean() ** 2
    torch.testing.assert_close(aux, want)
    assert cv_squared(torch.ones(5)).item() == 0.0


def test_noisy_topk_load_matches_monte_carlo() -> None:
    """P(x, i) of [TopK] eq. 9: the chance expert i stays in the top k when its noise is
    redrawn, the other noisy logits held fixed."""
    torch.manual_seed(0)
    gate = NoisyTopKGate(5, k=2)
    clean = torch.tensor([0.3, -0.2, 0.5, 0.0, 0.1])
    std = torch.tensor([0.5, 0.8, 0.3, 1.0, 0.6])
    noisy = clean + torch.randn(5) * std
    top_values = noisy.topk(3).values
    prob = load_probability(clean, noisy, std, top_values, gate.k)
    draws = 200_000
    for i in range(5):
        redrawn = noisy.expand(draws, 5).clone()
        redrawn[:, i] = clean[i] + torch.randn(draws) * std[i]
        in_top = (redrawn.topk(2, dim=-1).indices == i).any(-1).float().mean()
        assert prob[i].item() == pytest.approx(in_top.item(), abs=0.01)


def test_noisy_topk_load_loss_is_added_and_differentiable() -> None:
    torch.manual_seed(0)
    gate = NoisyTopKGate(6, k=2, input_dim=3, importance_reg=0.0, load_reg=1.0)
    x = torch.randn(32, 3)
    _, aux = gate(x)
    assert aux.item() >= 0
    aux.backward()
    grad = gate.gate_proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    gate.eval()
    assert gate(x)[1].item() == 0.0


# --------------------------------------------------------------------------- module API


@pytest.mark.parametrize(
    "make",
    [
        lambda: DSelectKGate(5, k=2),
        lambda: DSelectKGate(5, k=2, input_dim=3, entropy_reg=0.1, reduction="mean"),
        lambda: SoftmaxGate(5, input_dim=3),
        lambda: NoisyTopKGate(5, k=2, input_dim=3),
        lambda: NoisyTopKGate(5, k=2),
    ],
)
def test_state_dict_roundtrip_determinism_reset_and_repr(make) -> None:
    torch.manual_seed(0)
    a = make()
    torch.manual_seed(0)
    b = make()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    c = make()
    c.load_state_dict(a.state_dict())
    a.eval(), c.eval()
    x = torch.randn(4, 3)
    torch.testing.assert_close(a(x)[0], c(x)[0])
    a.reset_parameters()
    assert "num_experts=5" in repr(a)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        DSelectKGate(4, k=0)
    with pytest.raises(ValueError, match="k must be <= num_experts=4"):
        DSelectKGate(4, k=5)
    with pytest.raises(ValueError, match="num_experts must be >= 2"):
        DSelectKGate(1, k=1)
    with pytest.raises(ValueError, match="gamma"):
        DSelectKGate(4, k=2, gamma=0.0)
    with pytest.raises(ValueError, match="gamma"):
        DSelectKGate(4, k=2, gamma=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        smooth_step(torch.zeros(2), gamma=0.0)
    with pytest.raises(ValueError, match="entropy_reg"):
        DSelectKGate(4, k=2, entropy_reg=-0.1)
    with pytest.raises(ValueError, match="reduction"):
        DSelectKGate(4, k=2, reduction="max")
    with pytest.raises(TypeError, match="k must be an int"):
        DSelectKGate(4, k=2.0)
    with pytest.raises(ValueError, match="input_dim"):
        DSelectKGate(4, k=2, input_dim=0)
    with pytest.raises(ValueError, match="k must be <= num_experts"):
        NoisyTopKGate(4, k=5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        NoisyTopKGate(4, k=0)
    with pytest.raises(ValueError, match="importance_reg"):
        NoisyTopKGate(4, k=2, importance_reg=-1.0)
    with pytest.raises(ValueError, match="load_reg"):
        NoisyTopKGate(4, k=2, load_reg=-1.0)
    with pytest.raises(ValueError, match="num_experts must be >= 2"):
        SoftmaxGate(1)
    for gate in (DSelectKGate(4, k=2, input_dim=3), SoftmaxGate(4, input_dim=3),
                 NoisyTopKGate(4, k=2, input_dim=3)):
        with pytest.raises(ValueError, match=r"shape \(batch, 3\), got \(2, 5\)"):
            gate(torch.zeros(2, 5))
        with pytest.raises(ValueError, match="needs a routing input"):
            gate()

