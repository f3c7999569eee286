"""Initializers under careless or hostile use: wrong layer types, weights of the
right size but the wrong shape, non-finite or absurd options, meta tensors,
and weights near the float32 limit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear
from compactnn.init import FitOptions, lstsq_, nonlinear_, spectral_, whitened_


def state(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.state_dict().items()}


def assert_same(layer: nn.Module, before: dict[str, torch.Tensor]) -> None:
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


@pytest.mark.parametrize("init", [spectral_, nonlinear_, whitened_, lstsq_])
def test_a_dense_layer_is_not_a_low_rank_layer(init):
    data = {"inputs": torch.randn(8, 4)} if init is not spectral_ else {}
    with pytest.raises(TypeError, match="layer must be a LowRankLayer, got Linear"):
        init(nn.Linear(4, 4), torch.randn(4, 4), **data)


@pytest.mark.parametrize("init", [spectral_, nonlinear_])
@pytest.mark.parametrize("bad", [lambda w: w.T.contiguous(), lambda w: w.reshape(-1),
                                 lambda w: w.reshape(2, 24)])
def test_weight_of_the_right_size_but_wrong_shape_is_refused(init, bad):
    layer = LowRankLinear(8, 6, 2)
    before = state(layer)
    with pytest.raises(ValueError, match=r"weight must have shape \(6, 8\)"):
        init(layer, bad(torch.randn(6, 8)))
    assert_same(layer, before)


def test_conv_weight_shape_is_checked():
    layer = LowRankConv2d(4, 6, 3, rank=2)
    with pytest.raises(ValueError, match=r"weight must have shape \(6, 4, 3, 3\)"):
        spectral_(layer, torch.randn(6, 36))
    with pytest.raises(ValueError, match=r"weight must have shape"):
        spectral_(layer, torch.randn(4, 6, 3, 3))


def test_meta_weight_is_refused():
    with pytest.raises(ValueError, match="meta"):
        spectral_(LowRankLinear(4, 4, 2), torch.empty(4, 4, device="meta"))


@pytest.mark.parametrize(("opts", "exc", "needle"), [
    ({"lr": float("nan")}, ValueError, "lr must be finite"),
    ({"lr": float("inf")}, ValueError, "lr must be finite"),
    ({"lr": 0.0}, ValueError, "lr must be > 0.0"),
    ({"lr": "0.1"}, TypeError, "lr must be a number"),
    ({"steps": -1}, ValueError, "steps must be >= 0"),
    ({"steps": 2.5}, TypeError, "steps must be an int"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"damping": float("nan")}, ValueError, "damping must be finite"),
    ({"fit_bias": "no"}, TypeError, "fit_bias must be a bool"),
    ({"svd_method": "qr"}, ValueError, "svd_method must be one of"),
    ({"stepz": 3}, TypeError, "unknown option(s) stepz"),
])
def test_nonlinear_options_are_checked_before_anything_changes(opts, exc, needle):
    layer = LowRankLinear(8, 6, 2)
    before = state(layer)
    with pytest.raises(exc) as info:
        nonlinear_(layer, torch.randn(6, 8), inputs=torch.randn(16, 8), **opts)
    assert needle in str(info.value)
    assert_same(layer, before)


def test_options_object_and_overrides_combine():
    opts = FitOptions(steps=5, seed=3)
    assert FitOptions.resolve(opts, {"lr": 0.1}) == FitOptions(steps=5, seed=3, lr=0.1)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    a = nonlinear_(LowRankLinear(8, 6, 2), w, inputs=x, options=opts)
    b = nonlinear_(LowRankLinear(8, 6, 2), w, inputs=x, steps=5, seed=3)
    assert torch.equal(a.dense_weight(), b.dense_weight())
    with pytest.raises(TypeError, match="options must be a FitOptions"):
        nonlinear_(LowRankLinear(8, 6, 2), w, options={"steps": 5})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectral_of_a_huge_weight_is_computed_stably(dtype):
    torch.manual_seed(0)
    w = torch.randn(8, 3, dtype=dtype) @ torch.randn(3, 10, dtype=dtype)
    w = w / w.abs().max() * 3e38  # near the float32 limit
    layer = spectral_(LowRankLinear(10, 8, 3, dtype=dtype), w)
    u, v = layer.factor_matrices()
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    # rank 3 reproduces the rank-3 weight: compare in float64 to avoid overflow
    rebuilt = u.double()[0] @ v.double()[0]
    torch.testing.assert_close(rebuilt / 3e38, w.double() / 3e38, rtol=1e-4, atol=1e-5)


def test_spectral_of_a_tiny_weight_keeps_its_precision():
    torch.manual_seed(0)
    w = (torch.randn(6, 2) @ torch.randn(2, 7)) * 1e-30
    layer = spectral_(LowRankLinear(7, 6, 2), w)
    torch.testing.assert_close(layer.dense_weight() * 1e30, w * 1e30, rtol=1e-4, atol=1e-5)


def test_factors_that_overflow_the_layer_dtype_are_refused():
    layer = LowRankLinear(4, 4, 1, dtype=torch.float16)
    before = state(layer)
    w = torch.full((4, 4), 6e10)  # the balanced factors' entries (~5e5) exceed fp16's max
    with pytest.raises(ValueError, match="too large for the layer's dtype torch.float16"):
        spectral_(layer, w)
    assert_same(layer, before)
