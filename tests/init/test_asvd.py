"""Activation-aware SVD: against the SVD written out here, alpha = 0 is plain SVD
bit for bit, full rank is exact, the statistics and their sources agree, the
zero-channel guard, and bad arguments."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear
from compactnn.init import InputMoments, asvd_, asvd_factors, asvd_scales, input_moments
from compactnn.init.asvd import ASVD_FLOOR

D = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _data(rows=300, n=8, seed=0):
    g = gen(seed)
    mix = torch.randn(n, n, generator=g, dtype=D)
    scale = torch.logspace(-1, 1, n, dtype=D)  # channels of very different size
    return (torch.randn(rows, n, generator=g, dtype=D) @ mix) * scale


def _reference(w, rank, x, alpha, stat="abs_mean"):
    """ASVD written out: s_j = stat(|x_j|)^alpha, SVD of W diag(s), V divided by s."""
    a = x.abs()
    s = (a.mean(0) if stat == "abs_mean" else a.amax(0)) ** alpha
    au, sig, bh = torch.linalg.svd(w * s, full_matrices=False)
    return (au[:, :rank] * sig[:rank]) @ (bh[:rank] / s)


@pytest.mark.parametrize("stat", ["abs_mean", "abs_max"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.25])
def test_layer_matches_the_written_out_reference(stat, alpha):
    x = _data()
    dense = nn.Linear(8, 6).double()
    layer = LowRankLinear.from_dense(dense, 3, init="asvd", inputs=x, alpha=alpha, stat=stat)
    ref = _reference(dense.weight.detach(), 3, x, alpha, stat)
    assert torch.allclose(layer.U @ layer.V, ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(layer.bias, dense.bias)  # the bias is kept


def test_alpha_zero_is_plain_svd_exactly():
    w = torch.randn(7, 5, generator=gen(1), dtype=D)
    u, v = asvd_factors(w, 3, asvd_scales(_data(n=5).abs().mean(0), alpha=0.0))
    au, sig, bh = torch.linalg.svd(w, full_matrices=False)
    assert torch.equal(u, au[:, :3] * sig[:3].sqrt())
    assert torch.equal(v, sig[:3].sqrt().unsqueeze(-1) * bh[:3])


def test_full_rank_is_exact():
    w = torch.randn(5, 7, generator=gen(2), dtype=D)
    u, v = asvd_factors(w, 5, torch.rand(7, generator=gen(3), dtype=D) + 0.1)
    assert torch.allclose(u @ v, w, rtol=0, atol=1e-12)


def test_scaling_changes_the_truncation_towards_strong_channels():
    # the same weight, one channel driven 100x harder: ASVD keeps its column better
    w = torch.randn(6, 6, generator=gen(4), dtype=D)
    s = torch.ones(6, dtype=D)
    s[0] = 100.0
    plain_u, plain_v = asvd_factors(w, 2, torch.ones(6, dtype=D))
    u, v = asvd_factors(w, 2, s)
    err = (w - u @ v)[:, 0].norm()
    assert err < (w - plain_u @ plain_v)[:, 0].norm()


def test_sources_of_the_statistic_agree():
    x = _data(seed=5)
    dense = nn.Linear(8, 6).double()
    by_inputs = LowRankLinear.from_dense(dense, 3, init="asvd", inputs=x)
    by_moments = LowRankLinear.from_dense(dense, 3, init="asvd", moments=input_moments([x]))
    by_scales = LowRankLinear.from_dense(dense, 3, init="asvd", scales=x.abs().mean(0))
    for other in (by_moments, by_scales):
        assert torch.allclose(other.U @ other.V, by_inputs.U @ by_inputs.V, rtol=1e-12,
                              atol=1e-12)
    # streamed in batches, with tokens as rows of 3-D inputs, the statistic is the same
    x3 = x.reshape(30, 10, 8)
    batched = LowRankLinear.from_dense(dense, 3, init="asvd", inputs=list(x3.split(7)))
    assert torch.allclose(batched.U @ batched.V, by_inputs.U @ by_inputs.V, rtol=1e-10,
                          atol=1e-12)


def test_zero_channels_are_guarded_and_all_zero_falls_back_to_svd():
    w = torch.randn(5, 6, generator=gen(6), dtype=D)
    stat = torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0, 1e-30], dtype=D)
    s = asvd_scales(stat, 0.5)
    assert torch.equal(s[[0, 3]], torch.full((2,), ASVD_FLOOR * 3.0**0.5, dtype=D))
    u, v = asvd_factors(w, 2, s)
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    assert float(v.abs().max()) < 1e3 * float(w.abs().max())
    ones = asvd_scales(torch.zeros(6, dtype=D), 0.5)
    assert torch.equal(ones, torch.ones(6, dtype=D))
    # a layer whose inputs are all zero gets plain SVD
    dense = nn.Linear(6, 5).double()
    layer = LowRankLinear.from_dense(dense, 2, init="asvd", inputs=torch.zeros(10, 6, dtype=D))
    spec = LowRankLinear.from_dense(dense, 2, init="spectral")
    assert torch.allclose(layer.U @ layer.V, spec.U @ spec.V, atol=1e-12)


def _snap(layer):
    return [p.detach().clone() for p in layer.parameters()]


def test_bad_arguments_raise_and_leave_the_layer_untouched():
    dense = nn.Linear(6, 5)
    layer = LowRankLinear.from_dense(dense, 2)
    snap = _snap(layer)
    w, x = dense.weight.detach(), torch.randn(20, 6)
    bad = [
        ({"inputs": x, "alpha": -0.5}, ValueError, "alpha"),
        ({"inputs": x, "alpha": float("nan")}, ValueError, "alpha"),
        ({"inputs": x, "alpha": "half"}, TypeError, "alpha"),
        ({"inputs": x, "stat": "fisher"}, ValueError, "stat"),
        ({}, ValueError, "needs calibration inputs"),
        ({"inputs": x, "scales": torch.ones(6)}, ValueError, "one of"),
        ({"inputs": x, "moments": input_moments([x])}, ValueError, "not both"),
        ({"scales": torch.ones(5)}, ValueError, "scales"),
        ({"scales": torch.tensor([1.0, -1, 1, 1, 1, 1])}, ValueError, "non-negative"),
        ({"scales": torch.full((6,), float("inf"))}, ValueError, "non-finite"),
        ({"inputs": torch.randn(20, 7)}, ValueError, "feature size"),
        ({"inputs": torch.full((4, 6), float("nan"))}, ValueError, "non-finite"),
        ({"moments": "stats"}, TypeError, "InputMoments"),
        ({"moments": InputMoments(4, torch.zeros(5), torch.eye(5))}, ValueError, "shape"),
        ({"moments": InputMoments(0, torch.zeros(6), torch.eye(6))}, ValueError, "count"),
        ({"moments": InputMoments(4, torch.zeros(6), torch.eye(6))}, ValueError, "abs_mean"),
        ({"inputs": x, "batch_size": 0}, ValueError, "batch_size"),
    ]
    for kw, exc, match in bad:
        with pytest.raises(exc, match=match):
            asvd_(layer, w, **kw)
        assert all(torch.equal(a, b) for a, b in zip(_snap(layer), snap, strict=True)), kw
    with pytest.raises(ValueError, match="rank"):
        asvd_factors(w, 6, torch.ones(6))
    with pytest.raises(ValueError, match="scales"):
        asvd_factors(w, 2, torch.ones(5))
    with pytest.raises(ValueError, match="dimensions"):
        asvd_factors(w[0], 1, torch.ones(6))
    with pytest.raises(TypeError, match="floating"):
        asvd_scales(torch.ones(3, dtype=torch.long), 0.5)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 7), n=st.integers(1, 7), frac=st.floats(0.0, 1.0),
       alpha=st.floats(0.0, 2.0), zeros=st.integers(0, 7), seed=st.integers(0, 10_000))
def test_factors_match_the_reference_for_any_shape(m, n, frac, alpha, zeros, seed):
    g = gen(seed)
    w = torch.randn(m, n, generator=g, dtype=D)
    stat = torch.rand(n, generator=g, dtype=D) + 0.05
    stat[: min(zeros, n - 1)] = 0.0  # dead channels, never all of them
    rank = 1 + round(frac * (min(m, n) - 1))
    s = asvd_scales(stat, alpha)
    u, v = asvd_factors(w, rank, s)
    assert u.shape == (m, rank) and v.shape == (rank, n)
    au, sig, bh = torch.linalg.svd(w * s, full_matrices=False)
    ref = (au[:, :rank] * sig[:rank]) @ (bh[:rank] / s)
    assert torch.allclose(u @ v, ref, rtol=1e-9, atol=1e-9 * float(w.abs().max()))
    assert torch.isfinite(u).all() and torch.isfinite(v).all()


def test_channel_scheme_convolution_scales_its_patch_columns():
    img = torch.randn(4, 3, 6, 6, generator=gen(20), dtype=D) * torch.tensor(
        [0.1, 1.0, 3.0], dtype=D).reshape(1, 3, 1, 1)
    dense = nn.Conv2d(3, 5, 3, padding=1).double()
    layer = LowRankConv2d.from_dense(dense, 2, init="asvd", inputs=img, scheme="channel")
    patches = layer.input_rows(img)
    ref = _reference(dense.weight.detach().reshape(5, -1), 2, patches, 0.5)
    u, v = (t.detach()[0] for t in layer.factor_matrices())
    assert torch.allclose(u @ v, ref, rtol=1e-9, atol=1e-11)
