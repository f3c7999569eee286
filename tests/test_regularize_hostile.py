"""Frobenius decay in half precision: computed in float32, never overflowing to inf
where the float32 value is finite."""

from __future__ import annotations

import pytest
import torch

from compactnn import LowRankConv2d, LowRankLinear, frobenius_decay
from compactnn.regularize import frobenius_norm_sq


def _reference(layer) -> float:
    """``|U V|_F^2`` from the dense product, in float64, of the layer's own values."""
    u, v = layer.factor_matrices()
    return float((u.detach().double() @ v.detach().double()).pow(2).sum())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [lambda: LowRankLinear(64, 64, rank=8),
                                  lambda: LowRankConv2d(8, 8, 3, rank=4, scheme="spatial")])
def test_half_precision_factors_give_the_float32_value(dtype, make):
    torch.manual_seed(0)
    layer = make().to(dtype)
    with torch.no_grad():
        layer.U.mul_(30.0)
        layer.V.mul_(30.0)
    want = _reference(layer)
    assert want > torch.finfo(torch.float16).max  # it overflows float16
    got = frobenius_norm_sq(layer).detach()
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert float(got) == pytest.approx(want, rel=1e-5)
    loss = frobenius_decay(layer, 1e-4)
    assert loss.dtype == torch.float32
    assert float(loss.detach()) == pytest.approx(0.5 * 1e-4 * want, rel=1e-5)
    loss.backward()
    assert layer.U.grad.dtype == dtype
    assert torch.isfinite(layer.U.grad).all() and torch.isfinite(layer.V.grad).all()


def test_float32_and_float64_keep_their_dtype():
    for dtype in (torch.float32, torch.float64):
        layer = LowRankLinear(6, 5, rank=2, dtype=dtype)
        assert frobenius_norm_sq(layer).dtype == dtype
        assert frobenius_decay(layer, 0.1).dtype == dtype
