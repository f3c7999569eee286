"""The two random baselines without spectral initialization: ``kaiming_factors``
([FNL]'s: each factor drawn as a layer of its own by Kaiming-normal) and the
variance-matched ``default``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear
from compactnn.init import kaiming_factors_
from compactnn.lowrank import get_initializer


def _rel(a: float, b: float) -> float:
    return abs(a - b) / b


def test_linear_factors_have_kaiming_variances_and_product_four_over_fan_in():
    torch.manual_seed(0)
    n, m, r = 2000, 1500, 300
    layer = kaiming_factors_(LowRankLinear(n, m, rank=r))
    # what nn.init.kaiming_normal_ gives tensors of the factors' shapes
    ref_u, ref_v = torch.empty(m, r), torch.empty(r, n)
    nn.init.kaiming_normal_(ref_u)
    nn.init.kaiming_normal_(ref_v)
    assert _rel(layer.U.var().item(), 2.0 / r) < 0.02
    assert _rel(layer.V.var().item(), 2.0 / n) < 0.02
    assert _rel(layer.U.var().item(), ref_u.var().item()) < 0.03
    assert _rel(layer.V.var().item(), ref_v.var().item()) < 0.03
    product = layer.dense_weight().var().item()
    assert _rel(product, 4.0 / n) < 0.03
    assert abs(layer.U.mean().item()) < 3 * (2.0 / r / layer.U.numel()) ** 0.5


@pytest.mark.parametrize("scheme,groups", [("channel", 1), ("spatial", 1), ("spatial", 2)])
def test_conv_factors_match_kaiming_on_their_native_shapes(scheme, groups):
    torch.manual_seed(1)
    c_in, c_out, k, r = 128, 128, 3, 64
    layer = kaiming_factors_(LowRankConv2d(c_in, c_out, k, rank=r, scheme=scheme,
                                           groups=groups))
    for p in (layer.U, layer.V):
        ref = torch.empty_like(p)
        nn.init.kaiming_normal_(ref)
        fan_in = p.shape[1] * p.shape[2] * p.shape[3]
        assert _rel(p.var().item(), 2.0 / fan_in) < 0.05
        assert _rel(p.var().item(), ref.var().item()) < 0.08
    fan_in = c_in // groups * k * k
    assert _rel(layer.dense_weight().var().item(), 4.0 / fan_in) < 0.05


def test_product_is_twelve_times_the_variance_matched_default():
    torch.manual_seed(2)
    n = 1024
    fnl = get_initializer("kaiming_factors")(LowRankLinear(n, n, rank=256))
    matched = get_initializer("default")(LowRankLinear(n, n, rank=256))
    assert _rel(matched.dense_weight().var().item(), 1.0 / (3 * n)) < 0.03
    ratio = fnl.dense_weight().var().item() / matched.dense_weight().var().item()
    assert ratio == pytest.approx(12.0, rel=0.05)


def test_bias_and_rank_are_left_alone_and_weight_is_ignored():
    torch.manual_seed(3)
    layer = LowRankLinear(20, 10, rank=4)
    bias = layer.bias.detach().clone()
    torch.manual_seed(4)
    a = kaiming_factors_(layer, weight=torch.full((10, 20), 7.0)).dense_weight().clone()
    torch.manual_seed(4)
    b = kaiming_factors_(layer).dense_weight()
    assert torch.equal(a, b) and torch.equal(layer.bias, bias) and layer.rank == 4


def test_rejects_a_non_lowrank_layer():
    with pytest.raises(TypeError, match="layer"):
        kaiming_factors_(nn.Linear(3, 3))
