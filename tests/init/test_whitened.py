"""SVD-LLM whitening and its least-squares refit of U: optimality of the
truncation of W L for the output error against a closed form and a brute-force
search, the factor form against the paper's, the refit against
torch.linalg.lstsq, singular Gram matrices through the diagonal shift,
precomputed moments, and every option checked."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactnn import LowRankLinear
from compactnn.init import (
    InputMoments,
    cross_moment,
    input_moments,
    lstsq_,
    refit_u,
    shifted_cholesky,
    whitened_,
    whitened_factors,
)

D = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _data(rows=200, n=8, seed=0):
    g = gen(seed)
    return torch.randn(rows, n, generator=g, dtype=D) @ torch.randn(n, n, generator=g, dtype=D)


def out_err(w, u, v, x, target=None):
    """mean_rows |W x' - U V x|^2 (x' = x unless a target input is given)."""
    t = x if target is None else target
    return float((t @ w.T - x @ (u @ v).T).square().sum() / x.shape[0])


def _als_optimum(w, x, rank, starts=5, iters=300):
    """Brute force: the best of alternating least squares from random starts on
    min |(W - U V) X|_F (each step solved by torch.linalg.lstsq on the data)."""
    y = x @ w.T
    best = float("inf")
    for s in range(starts):
        v = torch.randn(rank, w.shape[1], generator=gen(100 + s), dtype=D)
        for _ in range(iters):
            u = torch.linalg.lstsq(x @ v.T, y).solution.T
            # V from vec: y ~ x V^T U^T  =>  solve for V^T in least squares
            v = torch.linalg.lstsq(torch.kron(u, x), y.T.reshape(-1, 1)
                                   ).solution.reshape(rank, -1)
        best = min(best, out_err(w, u, v, x))
    return best


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_truncation_of_wl_is_optimal_for_the_output_error(rank):
    x, w = _data(seed=rank), torch.randn(6, 8, generator=gen(7), dtype=D)
    u, v = whitened_factors(w, rank, input_moments([x]))
    err = out_err(w, u, v, x)
    tail = float(torch.linalg.svdvals(x @ w.T)[rank:].square().sum()) / x.shape[0]
    assert err == pytest.approx(tail, rel=1e-9, abs=1e-12)
    assert err <= _als_optimum(w, x, rank) * (1 + 1e-8) + 1e-12
    # and strictly better than plain SVD on such correlated inputs
    a, s, bh = torch.linalg.svd(w, full_matrices=False)
    assert err < out_err(w, a[:, :rank] * s[:rank], bh[:rank], x)


def test_factors_are_svd_llm_form_with_the_unscaled_gram_cholesky():
    x, w = _data(seed=3), torch.randn(5, 8, generator=gen(8), dtype=D)
    chol = torch.linalg.cholesky(x.T @ x)  # G = sum x x^T, not divided by N
    a, s, bh = torch.linalg.svd(w @ chol, full_matrices=False)
    ref = (a[:, :3] * s[:3]) @ (bh[:3] @ torch.linalg.inv(chol))
    u, v = whitened_factors(w, 3, input_moments([x]))
    assert torch.allclose(u @ v, ref, rtol=1e-9, atol=1e-11)
    assert torch.allclose(u.T @ u, v @ chol @ chol.T @ v.T / x.shape[0], rtol=1e-9)


def test_shifted_cholesky_rule():
    g = torch.diag(torch.tensor([4.0, 2.0, 0.0], dtype=D))  # singular: the shift is needed
    chol, shift = shifted_cholesky(g)
    assert shift == 1e-10
    assert torch.allclose(chol @ chol.T, g + shift * 2.0 * torch.eye(3, dtype=D), rtol=1e-12)
    chol, shift = shifted_cholesky(g, 1e-3)  # damping is the first shift tried
    assert shift == 1e-3
    assert shifted_cholesky(torch.eye(3, dtype=D))[1] == 0.0
    with pytest.raises(ValueError, match="degenerate"):
        shifted_cholesky(-torch.eye(3, dtype=D))


def _singular_data(seed):
    x = _data(rows=150, n=5, seed=seed)
    # repeated features, an always-zero feature, and a linear combination
    return torch.cat([x, x[:, :2], torch.zeros(150, 1, dtype=D), x[:, :1] - 3 * x[:, 4:]], 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_singular_gram_works_through_the_shift(seed):
    x, w = _singular_data(seed), torch.randn(6, 9, generator=gen(seed), dtype=D)
    mom = input_moments([x])
    assert shifted_cholesky(mom.second)[1] > 0
    u, v = whitened_factors(w, 3, mom)
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    tail = float(torch.linalg.svdvals(x @ w.T)[3:].square().sum()) / x.shape[0]
    assert out_err(w, u, v, x) == pytest.approx(tail, rel=1e-6)
    ur, vr = whitened_factors(w, 3, mom, refit="u")
    assert out_err(w, ur, vr, x) <= out_err(w, u, v, x) * (1 + 1e-12)


def test_refit_equals_lstsq_and_never_increases_the_error():
    x, w = _data(seed=4), torch.randn(6, 8, generator=gen(9), dtype=D)
    # the inputs a compressed prefix delivers differ from the dense model's inputs
    xc = x + 0.3 * torch.randn(x.shape, generator=gen(10), dtype=D)
    mom_c = input_moments([xc])
    cross = x.T @ xc / x.shape[0]
    v = torch.randn(3, 8, generator=gen(11), dtype=D)
    ref = torch.linalg.lstsq(xc @ v.T, x @ w.T).solution.T
    assert torch.allclose(refit_u(w, v, mom_c, cross), ref, rtol=1e-8, atol=1e-10)
    ref_same = torch.linalg.lstsq(xc @ v.T, xc @ w.T).solution.T
    assert torch.allclose(refit_u(w, v, mom_c), ref_same, rtol=1e-8, atol=1e-10)
    u0, v0 = whitened_factors(w, 3, mom_c)
    u1, v1 = whitened_factors(w, 3, mom_c, refit="u", cross=cross)
    assert torch.equal(v0, v1)
    assert out_err(w, u1, v1, xc, target=x) < out_err(w, u0, v0, xc, target=x)
    # on the same inputs the truncation is already optimal: the refit keeps it
    u2, _ = whitened_factors(w, 3, mom_c, refit="u")
    assert torch.allclose(u2, u0, rtol=1e-7, atol=1e-9)


def test_layer_initializer_refit_and_bias_kept():
    x = _data(seed=5)
    xc = x + 0.3 * torch.randn(x.shape, generator=gen(12), dtype=D)
    dense = nn.Linear(8, 6).double()
    plain = LowRankLinear.from_dense(dense, 3, init="whitened", inputs=xc)
    refit = LowRankLinear.from_dense(dense, 3, init="whitened", inputs=xc, refit="u",
                                     cross=x.T @ xc / x.shape[0])
    assert torch.equal(refit.bias, dense.bias)
    with torch.no_grad():
        e_plain = float((dense(x) - plain(xc)).square().sum(-1).mean())
        e_refit = float((dense(x) - refit(xc)).square().sum(-1).mean())
    assert e_refit < e_plain


@pytest.mark.parametrize("init", [whitened_, lstsq_])
def test_precomputed_moments_equal_the_inputs_path(init):
    x = _data(seed=6)
    dense = nn.Linear(8, 6).double()
    a = LowRankLinear.from_dense(dense, 3)
    b = LowRankLinear.from_dense(dense, 3)
    init(a, dense.weight.detach(), dense.bias.detach(), inputs=x.reshape(20, 10, 8))
    init(b, dense.weight.detach(), dense.bias.detach(), moments=input_moments([x]))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


def _snap(layer):
    return [p.detach().clone() for p in layer.parameters()]


@pytest.mark.parametrize("init", [whitened_, lstsq_])
def test_shared_options_are_checked(init):
    dense = nn.Linear(6, 5)
    layer = LowRankLinear.from_dense(dense, 2)
    snap = _snap(layer)
    w, x = dense.weight.detach(), torch.randn(20, 6)
    bad = [
        ({"inputs": x, "moments": input_moments([x])}, ValueError, "not both"),
        ({}, ValueError, "moments="),
        ({"moments": {"second": torch.eye(6)}}, TypeError, "InputMoments"),
        ({"moments": InputMoments(3, torch.zeros(6), torch.eye(5))}, ValueError, "second"),
        ({"moments": InputMoments(3, torch.zeros(6), torch.full((6, 6), float("nan")))},
         ValueError, "non-finite"),
        ({"moments": InputMoments(-1, torch.zeros(6), torch.eye(6))}, ValueError, "count"),
        ({"moments": InputMoments(3, torch.zeros(6, dtype=torch.long), torch.eye(6))},
         TypeError, "floating"),
        ({"inputs": x, "seed": -1}, ValueError, "seed"),
    ]
    for kw, exc, match in bad:
        with pytest.raises(exc, match=match):
            init(layer, w, **kw)
        assert all(torch.equal(a, b) for a, b in zip(_snap(layer), snap, strict=True)), kw


def test_whitened_options_are_checked():
    dense = nn.Linear(6, 5)
    layer = LowRankLinear.from_dense(dense, 2)
    snap = _snap(layer)
    w, x = dense.weight.detach(), torch.randn(20, 6)
    bad = [
        ({"refit": "v"}, ValueError, "refit"),
        ({"refit": True}, ValueError, "refit"),
        ({"cross": torch.eye(6)}, ValueError, "refit='u'"),
        ({"refit": "u", "cross": torch.eye(5)}, ValueError, "cross"),
        ({"refit": "u", "cross": torch.full((6, 6), float("inf"))}, ValueError, "non-finite"),
        ({"refit": "u", "cross": [[1.0]]}, TypeError, "cross"),
        ({"refit": "optimal", "cross": torch.eye(7)}, ValueError, "cross"),
        ({"target_inputs": x}, ValueError, "refit='u'"),
        ({"refit": "u", "target_inputs": x, "cross": torch.eye(6)}, ValueError, "only"),
        ({"damping": -1.0}, ValueError, "damping"),
    ]
    for kw, exc, match in bad:
        with pytest.raises(exc, match=match):
            whitened_(layer, w, inputs=x, **kw)
        assert all(torch.equal(a, b) for a, b in zip(_snap(layer), snap, strict=True)), kw
    with pytest.raises(ValueError, match="refit"):
        whitened_factors(w, 2, input_moments([x]), refit="U")


def test_cross_moment_streams_paired_rows():
    x, xc = _data(seed=13), _data(seed=14)
    c = cross_moment(list(x.split(7)), list(xc.split(7)))
    assert torch.allclose(c, x.T @ xc / x.shape[0], rtol=1e-12)
    with pytest.raises(ValueError, match="same"):
        cross_moment([x[:5]], [xc[:6]])
    with pytest.raises(ValueError):
        cross_moment([x[:5], x[5:]], [xc])
    with pytest.raises(ValueError, match="empty"):
        cross_moment([], [])


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 7), n=st.integers(1, 7), rows=st.integers(1, 12),
       frac=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_whitened_is_optimal_for_any_shape_including_fewer_rows_than_features(
        m, n, rows, frac, seed):
    g = gen(seed)
    x = torch.randn(rows, n, generator=g, dtype=D)
    w = torch.randn(m, n, generator=g, dtype=D)
    rank = 1 + round(frac * (min(m, n) - 1))
    u, v = whitened_factors(w, rank, input_moments([x]))
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    tail = float(torch.linalg.svdvals(x @ w.T)[rank:].square().sum()) / rows
    power = float((x @ w.T).square().sum()) / rows
    assert out_err(w, u, v, x) <= tail + 1e-6 * power + 1e-12
    ur, vr = whitened_factors(w, rank, input_moments([x]), refit="u")
    assert out_err(w, ur, vr, x) <= out_err(w, u, v, x) + 1e-9 * power + 1e-12


def _moved_inputs(seed):
    x = _data(seed=seed)
    return x, x + 0.4 * torch.randn(x.shape, generator=gen(seed + 50), dtype=D)


def test_target_inputs_give_the_cross_moment_of_paired_rows():
    x, xc = _moved_inputs(30)
    dense = nn.Linear(8, 6).double()
    ref = LowRankLinear.from_dense(dense, 3, init="whitened", inputs=xc, refit="optimal",
                                   cross=cross_moment([x], [xc]))
    # 3-D token batches, one-shot iterators: the pairing survives both
    got = LowRankLinear.from_dense(
        dense, 3, init="whitened", refit="optimal",
        inputs=iter(list(xc.reshape(20, 10, 8).split(3))),
        target_inputs=iter(list(x.reshape(20, 10, 8).split(3))))
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="same"):
        LowRankLinear.from_dense(dense, 3, init="whitened", refit="u", inputs=xc,
                                 target_inputs=x[:-1])
    # rows subsampled per batch (max_patches) stay paired: a layer whose inputs did not
    # move gets exactly the plain whitening
    batches = list(xc.reshape(20, 10, 8).split(4))
    plain = LowRankLinear.from_dense(dense, 3, init="whitened", inputs=batches, max_patches=7)
    same = LowRankLinear.from_dense(dense, 3, init="whitened", refit="optimal", inputs=batches,
                                    target_inputs=batches, max_patches=7)
    for p, q in zip(plain.parameters(), same.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("rank", [1, 3])
def test_optimal_refit_is_the_reduced_rank_regression_optimum(rank):
    x, xc = _moved_inputs(rank)
    w = torch.randn(6, 8, generator=gen(21), dtype=D)
    mom_c, cross = input_moments([xc]), cross_moment([x], [xc])
    u, v = whitened_factors(w, rank, mom_c, refit="optimal", cross=cross)
    # reference: project the targets Y = W x' onto the column space of the inputs,
    # then the best rank-r fit of the projection (written out with lstsq and SVD)
    y = x @ w.T
    y_hat = xc @ torch.linalg.lstsq(xc, y).solution
    tail = torch.linalg.svdvals(y_hat)[rank:].square().sum()
    best = float((y - y_hat).square().sum() + tail) / x.shape[0]
    err = out_err(w, u, v, xc, target=x)
    assert err == pytest.approx(best, rel=1e-9)
    ur, vr = whitened_factors(w, rank, mom_c, refit="u", cross=cross)
    u0, v0 = whitened_factors(w, rank, mom_c)
    assert err <= out_err(w, ur, vr, xc, target=x) <= out_err(w, u0, v0, xc, target=x)
    # without moved inputs it is the plain whitening
    assert all(torch.equal(a, b) for a, b in
               zip(whitened_factors(w, rank, mom_c, refit="optimal"), (u0, v0), strict=True))
