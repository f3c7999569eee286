"""The moment solvers at the cost of a Cholesky factorization: the
least-squares start of ``nonlinear`` and Composer's ``lstsq`` agree with their
eigendecomposition forms (the symmetric root and the exact projector on the
data's span) on full-rank and singular Gram matrices, no calibrated init
decomposes the n x n Gram matrix by ``eigh``, and the Adam passes of the data-mode
fit compute the dense layer's outputs once per calibration batch."""

import pytest
import torch
from torch import nn

from compactnn import LowRankLinear
from compactnn.init import fit_data, input_moments, least_squares_factors, lstsq_factors
from compactnn.init.spectral import balanced_factors

D = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def full_rank(seed, rows=300, n=10):
    g = gen(seed)
    return torch.randn(rows, n, generator=g, dtype=D) @ torch.randn(n, n, generator=g, dtype=D)


def singular(seed):
    x = full_rank(seed, n=6)
    # a repeated feature, an always-zero feature and a linear combination: rank 6 of 9
    return torch.cat([x, x[:, :1], torch.zeros(x.shape[0], 1, dtype=D), x[:, 1:2] - 2 * x[:, 5:]],
                     1)


def eig_roots(c):
    lam, q = torch.linalg.eigh(0.5 * (c + c.T))
    lam = lam.clamp_min(0)
    keep = lam > 1e-12 * lam.max()
    inv = torch.where(keep, 1 / lam.sqrt().clamp_min(1e-300), torch.zeros_like(lam))
    return (q * lam.sqrt()) @ q.T, (q * inv) @ q.T, q[:, keep]


def eig_least_squares(w, rank, mom, fit_bias):
    """The reduced-rank regression with the symmetric roots: [W C^1/2]_r C^+1/2."""
    root, inv_root, _ = eig_roots(mom.covariance() if fit_bias else mom.second)
    a, s, bh = torch.linalg.svd(w @ root, full_matrices=False)
    return (a[:, :rank] * s[:rank]) @ bh[:rank] @ inv_root


def eig_lstsq(w, rank, mom, iters):
    """Composer's alternating least squares with the exact projector on the span."""
    smat = mom.second
    *_, basis = eig_roots(smat)
    w_ls = w @ basis @ basis.T
    u, v = balanced_factors(w, rank, "exact")
    for _ in range(iters):
        u = (w @ smat @ v.T) @ torch.linalg.pinv(v @ smat @ v.T, hermitian=True)
        v = torch.linalg.pinv(u.T @ u, hermitian=True) @ (u.T @ w_ls)
    return u @ v


@pytest.mark.parametrize("fit_bias", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_least_squares_start_equals_the_symmetric_root_form(seed, fit_bias):
    x = full_rank(seed)
    w = torch.randn(7, 10, generator=gen(10 + seed), dtype=D)
    mom = input_moments([x])
    u, v, _ = least_squares_factors(w, 3, mom, fit_bias=fit_bias)
    torch.testing.assert_close(u @ v, eig_least_squares(w, 3, mom, fit_bias), rtol=1e-8,
                               atol=1e-10)


@pytest.mark.parametrize("fit_bias", [True, False])
def test_least_squares_start_on_a_singular_gram_is_the_same_on_the_data(fit_bias):
    # off the data the two forms may differ; on it they give the same (optimal) outputs
    x = singular(3)
    w = torch.randn(5, 9, generator=gen(4), dtype=D)
    mom = input_moments([x])
    u, v, _ = least_squares_factors(w, 2, mom, fit_bias=fit_bias)
    xc = x - x.mean(0) if fit_bias else x
    ref = xc @ eig_least_squares(w, 2, mom, fit_bias).T
    torch.testing.assert_close(xc @ (u @ v).T, ref, rtol=1e-6, atol=1e-6 * ref.abs().max())


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_lstsq_equals_the_exact_projector_form(iters):
    x = full_rank(5)
    w = torch.randn(6, 10, generator=gen(6), dtype=D)
    mom = input_moments([x])
    u, v, _ = lstsq_factors(w, 2, mom, iters=iters)
    # the 1e-10 relative shift of the restriction moves it by ~1e-10 / (smallest variance)
    torch.testing.assert_close(u @ v, eig_lstsq(w, 2, mom, iters), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("iters", [1, 3])
def test_lstsq_on_a_singular_gram_matches_on_the_data_and_stays_off_the_rest(iters):
    x = singular(5)
    w = torch.randn(6, 9, generator=gen(6), dtype=D)
    mom = input_moments([x])
    u, v, _ = lstsq_factors(w, 2, mom, iters=iters)
    ref = eig_lstsq(w, 2, mom, iters)
    torch.testing.assert_close(x @ (u @ v).T, x @ ref.T, rtol=1e-8,
                               atol=1e-8 * (x @ ref.T).abs().max())
    # V is fitted to W restricted to the data's span: almost nothing off it (the
    # spectral start, unrestricted, has half of W's scale there)
    *_, basis = eig_roots(mom.second)
    off = (u @ v) @ (torch.eye(9, dtype=D) - basis @ basis.T)
    assert float(off.abs().max()) <= 1e-4 * float(w.abs().max())


@pytest.mark.parametrize("init,kw", [("lstsq", {}), ("whitened", {}),
                                     ("nonlinear", {"steps": 3, "activation": "relu"}),
                                     ("nonlinear", {"activation": "identity"})])
def test_no_calibrated_init_decomposes_the_gram_by_eigh(monkeypatch, init, kw):
    # an eigendecomposition of the n x n Gram costs ~10 Cholesky factorizations: on
    # wide layers it made lstsq and nonlinear several times slower than whitened
    def refuse(*_a, **_k):
        raise AssertionError("torch.linalg.eigh was called")

    monkeypatch.setattr(torch.linalg, "eigh", refuse)
    x = full_rank(7).float()
    layer = LowRankLinear.from_dense(nn.Linear(10, 8), 3, init=init, inputs=x, **kw)
    assert torch.isfinite(layer.U).all() and torch.isfinite(layer.V).all()


class FreshRows:
    """Re-iterable rows that are new tensors (same values) on every pass."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return (b.clone() for b in self.batches)


def test_adam_passes_compute_the_dense_outputs_once_per_batch(monkeypatch):
    x = full_rank(8).float()
    w = torch.randn(8, 10, generator=gen(9))
    batches = list(x.split(100))
    calls = {"dense": 0}
    linear = torch.nn.functional.linear

    def counting(inp, weight, bias=None):
        calls["dense"] += tuple(weight.shape) == (8, 10)
        return linear(inp, weight, bias)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    cached = fit_data(w, 3, batches, "relu", steps=30, batch_size=50)
    # one dense product per batch for the 30 steps (10 passes), plus the two
    # evaluations of the starts and of the result, one pass each
    assert calls["dense"] == 3 + 2 * 3
    calls["dense"] = 0
    fresh = fit_data(w, 3, FreshRows(batches), "relu", steps=30, batch_size=50)
    assert calls["dense"] == 30 // 2 + 2 * 3  # new tensors every pass: never reused
    torch.testing.assert_close(cached.u, fresh.u, rtol=0, atol=0)
    torch.testing.assert_close(cached.v, fresh.v, rtol=0, atol=0)
