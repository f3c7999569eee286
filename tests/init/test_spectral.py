"""Spectral initialization [FNL]: Eckart-Young optimality (exact and randomized
SVD), balanced factors, the fresh-draw mode, and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compactnn import LowRankConv2d, LowRankLinear
from compactnn.init import balanced_factors, spectral_, truncated_svd
from compactnn.lowrank import get_initializer

F64 = torch.float64


def tail_norm(matrix: torch.Tensor, r: int) -> float:
    """sqrt(sum of the squared singular values past the r-th), summed over a batch."""
    s = torch.linalg.svdvals(matrix.double())
    return s[..., r:].square().sum().sqrt().item()


def approx_error(layer, weight: torch.Tensor) -> float:
    return (layer.dense_weight().detach().double() - weight.double()).norm().item()


# --------------------------------------------------------------------------- Eckart-Young


@pytest.mark.parametrize(("in_f", "out_f", "r"), [(40, 30, 1), (40, 30, 7), (30, 40, 29),
                                                  (16, 16, 16)])
def test_eckart_young_linear_exact(in_f, out_f, r):
    torch.manual_seed(0)
    dense = nn.Linear(in_f, out_f, dtype=F64)
    layer = LowRankLinear.from_dense(dense, r, init="spectral", svd_method="exact")
    opt = tail_norm(dense.weight.detach(), r)
    assert approx_error(layer, dense.weight) == pytest.approx(opt, rel=1e-9, abs=1e-12)


def test_eckart_young_beats_other_rank_r_matrices():
    torch.manual_seed(1)
    dense = nn.Linear(24, 20, dtype=F64)
    w = dense.weight.detach()
    best = approx_error(LowRankLinear.from_dense(dense, 5, svd_method="exact"), w)
    for _ in range(20):
        other = LowRankLinear.from_dense(dense, 5, svd_method="exact")
        with torch.no_grad():
            other.U.add_(1e-2 * torch.randn_like(other.U))
            other.V.add_(1e-2 * torch.randn_like(other.V))
        assert approx_error(other, w) > best
    # the default (random) init is far from it
    assert approx_error(LowRankLinear.from_dense(dense, 5, init="default"), w) > 1.1 * best


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_eckart_young_conv_exact(scheme, groups):
    torch.manual_seed(2)
    dense = nn.Conv2d(8, 16, (3, 2), groups=groups, dtype=F64)
    r_g = 2
    layer = LowRankConv2d.from_dense(dense, r_g * groups, scheme=scheme, svd_method="exact")
    mat = layer.weight_to_matrix(dense.weight.detach())
    assert mat.shape[0] == groups
    # per group the best rank-2 approximation; the errors add up in squares
    opt = tail_norm(mat, r_g)
    assert approx_error(layer, dense.weight) == pytest.approx(opt, rel=1e-9)
    # each group's block is the best approximation of that group's block
    approx = layer.weight_to_matrix(layer.dense_weight().detach())
    for gi in range(groups):
        err = (approx[gi] - mat[gi]).norm().item()
        assert err == pytest.approx(tail_norm(mat[gi], r_g), rel=1e-9)


@pytest.fixture(scope="module")
def big_linear():
    torch.manual_seed(3)
    dense = nn.Linear(1024, 1024)
    s = torch.linalg.svdvals(dense.weight.detach().double())
    return dense, s


@pytest.mark.parametrize("method", ["randomized", "auto"])
@pytest.mark.parametrize("r", [16, 32])
def test_randomized_within_one_percent_of_optimum(big_linear, method, r):
    dense, s = big_linear
    opt = s[r:].square().sum().sqrt().item()
    layer = LowRankLinear.from_dense(dense, r, svd_method=method)
    err = approx_error(layer, dense.weight)
    assert opt <= err * (1 + 1e-6)
    assert err <= 1.01 * opt
    # the zero matrix is 3% (r=16) or 6% (r=32) above the optimum: 1% tells them apart
    assert dense.weight.detach().double().norm().item() > 1.02 * opt
    # a Kaiming draw has a flat spectrum (no gap), so the randomized range finder need
    # not find the exact top directions, but it captures most of their energy
    captured = layer.dense_weight().detach().double().norm().square().item()
    assert captured >= 0.85 * s[:r].square().sum().item()


def test_auto_picks_randomized_for_small_rank(monkeypatch, big_linear):
    calls = []
    real = torch.svd_lowrank

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "svd_lowrank", spy)
    dense, _ = big_linear
    LowRankLinear.from_dense(dense, 8, svd_method="auto")
    assert calls == [(1, 1024, 1024)]
    LowRankLinear.from_dense(nn.Linear(64, 64), 4, svd_method="auto")  # small: exact
    LowRankLinear.from_dense(dense, 512, svd_method="auto")  # large rank: exact
    assert len(calls) == 1
    LowRankLinear.from_dense(nn.Linear(64, 64), 4, svd_method="randomized")
    assert len(calls) == 2


def test_randomized_on_decaying_spectrum():
    torch.manual_seed(4)
    m, n, k = 600, 500, 60
    a, _ = torch.linalg.qr(torch.randn(m, k, dtype=F64))
    b, _ = torch.linalg.qr(torch.randn(n, k, dtype=F64))
    s = 0.8 ** torch.arange(k, dtype=F64)
    w = (a * s) @ b.T + 1e-4 * torch.randn(m, n, dtype=F64)
    for r in (3, 10):
        u, v = balanced_factors(w, r, method="randomized")
        err = (u @ v - w).norm().item()
        opt = tail_norm(w, r)
        assert err <= 1.01 * opt
        # a poor approximation (drop one direction) is far worse: the test can tell
        u2, v2 = balanced_factors(w, r - 1, method="exact")
        assert (u2 @ v2 - w).norm().item() > 1.2 * opt


@pytest.mark.parametrize("scheme", ["channel", "spatial"])
def test_randomized_conv_groups_within_one_percent(scheme):
    torch.manual_seed(5)
    dense = nn.Conv2d(64, 128, 3, groups=2)
    r_g = 6
    layer = LowRankConv2d.from_dense(dense, 2 * r_g, scheme=scheme, svd_method="randomized")
    mat = layer.weight_to_matrix(dense.weight.detach())
    opt = tail_norm(mat, r_g)
    err = approx_error(layer, dense.weight)
    assert opt * (1 - 1e-6) <= err <= 1.01 * opt
    captured = layer.dense_weight().detach().double().norm().square().item()
    best = torch.linalg.svdvals(mat.double())[:, :r_g].square().sum().item()
    assert 0.85 * best <= captured <= best * (1 + 1e-6)


# --------------------------------------------------------------------------- factors


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_balanced_factors(method):
    torch.manual_seed(6)
    w = torch.randn(2, 30, 20, dtype=F64)
    r = 5
    u, v = balanced_factors(w, r, method=method)
    assert u.shape == (2, 30, r) and v.shape == (2, r, 20)
    _, s, _ = truncated_svd(w, r, method="exact")
    gram_u = u.transpose(-2, -1) @ u
    gram_v = v @ v.transpose(-2, -1)
    diag = torch.diag_embed(s)
    tol = {"rtol": 1e-8, "atol": 1e-10} if method == "exact" else {"rtol": 0.02, "atol": 0.05}
    torch.testing.assert_close(gram_u, diag, **tol)
    torch.testing.assert_close(gram_v, diag, **tol)


@pytest.mark.parametrize("scheme", [None, "channel", "spatial"])
def test_layer_factors_are_balanced(scheme):
    torch.manual_seed(7)
    if scheme is None:
        dense = nn.Linear(20, 12, dtype=F64)
        layer = LowRankLinear.from_dense(dense, 4, svd_method="exact")
    else:
        dense = nn.Conv2d(4, 6, 3, groups=2, dtype=F64)
        layer = LowRankConv2d.from_dense(dense, 4, scheme=scheme, svd_method="exact")
    u, v = layer.factor_matrices()
    gram_u = (u.transpose(-2, -1) @ u).detach()
    gram_v = (v @ v.transpose(-2, -1)).detach()
    s = torch.linalg.svdvals(layer.weight_to_matrix(dense.weight.detach()))[:, : u.shape[-1]]
    torch.testing.assert_close(gram_u, torch.diag_embed(s))
    torch.testing.assert_close(gram_v, torch.diag_embed(s))


def test_truncated_svd_triplets():
    torch.manual_seed(8)
    w = torch.randn(12, 9, dtype=F64)
    a, s, bh = truncated_svd(w, 4, method="exact")
    assert a.shape == (12, 4) and s.shape == (4,) and bh.shape == (4, 9)
    torch.testing.assert_close(s, torch.linalg.svdvals(w)[:4])
    torch.testing.assert_close(a.T @ a, torch.eye(4, dtype=F64))
    torch.testing.assert_close(bh @ bh.T, torch.eye(4, dtype=F64))
    torch.testing.assert_close(w @ bh.T, a * s)
    assert bool((s[:-1] >= s[1:]).all())


def test_truncated_svd_low_precision_input():
    torch.manual_seed(9)
    w = torch.randn(16, 12).to(torch.bfloat16)
    _, s, _ = truncated_svd(w, 3)
    assert s.dtype == torch.float32
    dense = nn.Linear(12, 16, dtype=torch.bfloat16)
    layer = LowRankLinear.from_dense(dense, 3)
    assert layer.U.dtype == torch.bfloat16
    assert torch.isfinite(layer.U).all()


@pytest.mark.parametrize(("kwargs", "needle"), [({"method": "qr"}, "got 'qr'"),
                                                ({"rank": 0}, "rank=0"),
                                                ({"rank": 13}, "rank=13")])
def test_truncated_svd_bad_args(kwargs, needle):
    args = {"rank": 2, **kwargs}
    with pytest.raises(ValueError) as info:
        truncated_svd(torch.randn(12, 13), **args)
    assert needle in str(info.value)


def test_spectral_bad_method_names_it():
    with pytest.raises(ValueError, match="svd_method must be one of .*got 'svd'"):
        LowRankLinear.from_dense(nn.Linear(6, 6), 2, svd_method="svd")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_spectral_non_finite_weight(bad):
    layer = LowRankLinear(6, 6, rank=2)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    w = torch.randn(6, 6)
    w[2, 3] = bad
    with pytest.raises(ValueError, match="weight"):
        spectral_(layer, weight=w)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k])


def test_spectral_registered_and_returns_layer():
    assert get_initializer("spectral") is spectral_
    layer = LowRankLinear(6, 5, rank=2)
    assert spectral_(layer, weight=torch.randn(5, 6)) is layer


def test_spectral_in_place_on_given_weight_matches_from_dense():
    torch.manual_seed(10)
    dense = nn.Linear(10, 8, dtype=F64)
    a = LowRankLinear.from_dense(dense, 3, svd_method="exact")
    b = LowRankLinear(10, 8, rank=3, dtype=F64)
    spectral_(b, weight=dense.weight.detach(), svd_method="exact")
    torch.testing.assert_close(a.dense_weight(), b.dense_weight())


# --------------------------------------------------------------------------- fresh draw


def test_spectral_fresh_draw_full_rank_is_a_kaiming_uniform_draw():
    # at full rank the balanced factors multiply back to the dense draw itself: every
    # entry lies in the uniform's support +-1/sqrt(fan_in), with variance 1/(3 fan_in)
    torch.manual_seed(11)
    in_f, out_f = 200, 150
    layer = LowRankLinear(in_f, out_f, rank=1.0)
    spectral_(layer)
    w = layer.dense_weight().detach()
    bound = 1 / math.sqrt(in_f)
    assert w.abs().max().item() <= bound * (1 + 1e-4)
    assert w.abs().max().item() > 0.98 * bound
    assert w.var().item() == pytest.approx(1 / (3 * in_f), rel=0.03)
    # a uniform's kurtosis is 1.8 (a Gaussian's is 3)
    z = (w - w.mean()) / w.std()
    assert z.pow(4).mean().item() == pytest.approx(1.8, abs=0.05)


@pytest.mark.parametrize("shape", [(256, 512), (512, 256)])
def test_spectral_fresh_draw_low_rank_spectrum(shape):
    torch.manual_seed(12)
    in_f, out_f = shape
    r = 16
    layer = LowRankLinear(in_f, out_f, rank=r)
    spectral_(layer)
    w = layer.dense_weight().detach()
    s = torch.linalg.svdvals(w.double())
    # rank exactly r
    assert (s[:r] > 0).all() and s[r:].max().item() < 1e-5 * s[0].item()
    # the top singular values of an m x n matrix of iid entries with std sigma sit at
    # the Marchenko-Pastur edge sigma (sqrt(m) + sqrt(n))
    sigma = 1 / math.sqrt(3 * in_f)
    edge = sigma * (math.sqrt(in_f) + math.sqrt(out_f))
    assert s[0].item() == pytest.approx(edge, rel=0.08)
    assert s[r - 1].item() == pytest.approx(edge, rel=0.15)
    # and the captured energy is that of r top directions, not the dense total
    dense_total = out_f * in_f * sigma**2
    assert w.square().sum().item() < 0.2 * dense_total


def test_spectral_fresh_draw_conv_and_redraws():
    torch.manual_seed(13)
    layer = LowRankConv2d(8, 8, 3, rank=1.0, groups=2, scheme="spatial")
    spectral_(layer)
    w1 = layer.dense_weight().detach().clone()
    fan_in = 4 * 9
    assert w1.abs().max().item() <= (1 + 1e-4) / math.sqrt(fan_in)
    spectral_(layer)
    assert not torch.allclose(layer.dense_weight(), w1)


def test_from_dense_none_init_kwargs_passed_through(monkeypatch):
    seen = []
    real = truncated_svd

    import compactnn.init.spectral as spectral_mod

    def spy(matrix, rank, method="auto", **kw):
        seen.append(method)
        return real(matrix, rank, method, **kw)

    monkeypatch.setattr(spectral_mod, "truncated_svd", spy)
    LowRankLinear.from_dense(nn.Linear(8, 8), 2, svd_method="randomized")
    assert seen == ["randomized"]
