"""Depth-aware initialization: the schedule, its variance profile against Monte
Carlo, the He special case, low-rank layers, the registry, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn.init import depth_aware_, depth_aware_schedule
from compactnn.init.depth_aware import depth_aware_layer_
from compactnn.lowrank import LowRankConv2d, LowRankLinear, get_initializer


def mlp(depth, width=256, d_in=64):
    dims = [d_in] + [width] * depth
    layers = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), ratio=st.floats(0.1, 50), power=st.floats(0.1, 5))
def test_schedule_endpoints_and_monotone(n, ratio, power):
    v = depth_aware_schedule(n, ratio, power)
    assert len(v) == n and v[0] == 1.0
    if n > 1:
        assert math.isclose(v[-1], ratio, rel_tol=1e-12)
        diffs = [b - a for a, b in zip(v[:-1], v[1:], strict=True)]
        assert all(d >= 0 for d in diffs) if ratio >= 1 else all(d <= 0 for d in diffs)


def test_weight_variances_follow_formula():
    model = mlp(5, width=32, d_in=10)
    var = depth_aware_(model, ratio=3.0, power=2.0, generator=torch.Generator().manual_seed(0))
    v = depth_aware_schedule(5, 3.0, 2.0)
    fans = [10, 32, 32, 32, 32]
    want = [2 * v[0] / fans[0]] + [2 * v[i] / v[i - 1] / fans[i] for i in range(1, 5)]
    assert list(var.values()) == pytest.approx(want, rel=1e-12)
    assert list(var) == ["0", "2", "4", "6", "8"]
    for name in var:
        assert torch.count_nonzero(model.get_submodule(name).bias) == 0


def test_preactivation_variance_profile_matches_schedule_monte_carlo():
    """Over random weight draws and Gaussian inputs, the pre-activation variance
    of layer l divided by layer 0's follows v_l (the module's derivation)."""
    torch.manual_seed(0)
    depth, ratio, power = 12, 6.0, 1.5
    v = depth_aware_schedule(depth, ratio, power)
    acc = torch.zeros(depth)
    draws = 12
    for d in range(draws):
        model = mlp(depth, width=256, d_in=64).double()
        depth_aware_(model, ratio=ratio, power=power, generator=torch.Generator().manual_seed(d))
        h = torch.randn(512, 64, dtype=torch.float64)
        q = []
        for m in model:
            h = m(h)
            if isinstance(m, nn.Linear):
                q.append(h.pow(2).mean())
        q = torch.stack(q)
        acc += (q / q[0]).float()
    measured = acc / draws
    torch.testing.assert_close(measured, torch.tensor(v, dtype=torch.float32), rtol=0.08,
                               atol=0.0)
    # and it is not the flat He profile
    assert measured[-1] > 4.0


def test_ratio_one_is_kaiming_normal():
    a, b = mlp(4, width=16, d_in=8), mlp(4, width=16, d_in=8)
    depth_aware_(a, ratio=1.0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    for m in b:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=g)
    for ma, mb in zip(a, b, strict=True):
        if isinstance(ma, nn.Linear):
            torch.testing.assert_close(ma.weight, mb.weight)


def test_lowrank_product_has_scheduled_variance():
    torch.manual_seed(0)
    lin = LowRankLinear(400, 300, rank=50)
    var = depth_aware_layer_(lin, index=3, num_layers=6, ratio=4.0,
                             generator=torch.Generator().manual_seed(1))
    v = depth_aware_schedule(6, 4.0)
    assert var == pytest.approx(2 * v[3] / v[2] / 400)
    w = lin.dense_weight().detach()
    assert float(w.var()) == pytest.approx(var, rel=0.05)
    # balanced factors: m Var U = n Var V
    assert 300 * float(lin.U.detach().var()) == pytest.approx(400 * float(lin.V.detach().var()),
                                                              rel=0.1)
    conv = LowRankConv2d(16, 32, 3, rank=8, padding=1)
    g = torch.Generator().manual_seed(2)
    est = []
    for _ in range(40):  # a rank-8 product's sample variance is noisy: average draws
        var = depth_aware_layer_(conv, index=0, num_layers=3, generator=g)
        est.append(float(conv.dense_weight().detach().pow(2).mean()))
    assert sum(est) / len(est) == pytest.approx(var, rel=0.05)
    assert var == pytest.approx(2 / (16 * 9))


def test_mixed_dense_and_lowrank_model_and_registry():
    model = nn.Sequential(nn.Conv2d(2, 8, (3, 5)), nn.ReLU(), LowRankConv2d(8, 8, 3, rank=4),
                          nn.ReLU(), nn.Conv2d(8, 6, 3, groups=2), nn.ReLU(), nn.Flatten(),
                          LowRankLinear(6 * 20 * 18, 10, rank=5))
    var = depth_aware_(model, ratio=2.0, generator=torch.Generator().manual_seed(4))
    assert list(var) == ["0", "2", "4", "7"]
    v = depth_aware_schedule(4, 2.0)
    fans = [2 * 3 * 5, 8 * 3 * 3, 4 * 3 * 3, 6 * 20 * 18]  # grouped: in / groups * kh * kw
    want = [2.0 * v[0] / fans[0]] + [2.0 * v[i] / v[i - 1] / fans[i] for i in range(1, 4)]
    assert list(var.values()) == pytest.approx(want, rel=1e-12)
    # a dense layer's weights are the generator's normal draws times the scheduled std
    g = torch.Generator().manual_seed(4)
    w0 = torch.randn(8, 2, 3, 5, generator=g) * math.sqrt(want[0])
    assert torch.equal(model[0].weight, w0)
    torch.randn(1, 8, 4, generator=g), torch.randn(1, 4, 72, generator=g)  # the factors
    w4 = torch.randn(6, 4, 3, 3, generator=g) * math.sqrt(want[2])
    assert torch.equal(model[4].weight, w4)
    assert all(torch.count_nonzero(model[i].bias) == 0 for i in (0, 4))
    assert get_initializer("depth_aware") is depth_aware_layer_


def test_include_exclude_and_errors_leave_model_untouched():
    model = mlp(3, width=8, d_in=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="ratio"):
        depth_aware_(model, ratio=float("nan"))
    with pytest.raises(ValueError, match="ratio"):
        depth_aware_(model, ratio=0.0)
    with pytest.raises(ValueError, match="power"):
        depth_aware_(model, power=-1.0)
    with pytest.raises(ValueError, match="nonlinearity"):
        depth_aware_(model, nonlinearity="swish")
    with pytest.raises(ValueError, match="no Linear"):
        depth_aware_(model, include=r"nothing")
    with pytest.raises(TypeError, match="generator"):
        depth_aware_(model, generator=0)
    with pytest.raises(TypeError, match="model"):
        depth_aware_("model")
    with pytest.raises(TypeError, match="layer"):
        depth_aware_layer_(nn.ReLU(), index=0, num_layers=1)
    with pytest.raises(ValueError, match="index"):
        depth_aware_layer_(nn.Linear(2, 2), index=3, num_layers=3)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    var = depth_aware_(model, exclude=["0"])
    assert list(var) == ["2", "4"]
    assert torch.equal(model[0].weight, before["0.weight"])
