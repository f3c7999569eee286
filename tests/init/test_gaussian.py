"""Closed-form Gaussian expectations of compactnn.init.gaussian against Monte Carlo
and their own limits."""

import math

import pytest
import torch

from compactnn.init.gaussian import (
    arccos_kernel,
    bivariate_normal_cdf,
    relative_relu_error,
    relu_cross_moment,
    relu_function_error,
    relu_mean,
    relu_output_energy,
    relu_second_moment,
)

D = torch.float64
MC = 1_000_000


def t(*v):
    return torch.tensor(v, dtype=D)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def close(a, b, rel=0.01, abs_=0.0):
    a, b = float(a), float(b)
    assert abs(a - b) <= rel * abs(b) + abs_, (a, b)


@pytest.mark.parametrize("mu,s", [(0.0, 1.0), (0.7, 0.5), (-1.0, 2.0), (1.5, 0.3)])
def test_relu_moments_match_monte_carlo(mu, s):
    z = mu + s * torch.randn(MC, generator=gen(1), dtype=D)
    close(relu_mean(t(mu), t(s)), torch.relu(z).mean())
    close(relu_second_moment(t(mu), t(s)), torch.relu(z).square().mean())


def test_relu_moments_degenerate_scale_is_relu_of_mean():
    mu = t(-0.5, 0.0, 0.8)
    assert torch.allclose(relu_mean(mu, torch.zeros_like(mu)), torch.relu(mu))
    assert torch.allclose(relu_second_moment(mu, torch.zeros_like(mu)), torch.relu(mu) ** 2)


def test_arccos_kernel_matches_monte_carlo():
    a, c = t(1.0, -0.5, 2.0), t(0.3, 0.8, -1.1)
    x = torch.randn(MC, 3, generator=gen(2), dtype=D)
    mc = (torch.relu(x @ a) * torch.relu(x @ c)).mean()
    cos = a @ c / (a.norm() * c.norm())
    close(arccos_kernel(a.norm(), c.norm(), cos), mc)


def test_arccos_kernel_limits():
    one = t(1.0)
    close(arccos_kernel(one, one, one), 0.5, rel=1e-12)         # E relu(u)^2 = |a|^2/2
    close(arccos_kernel(one, one, t(-1.0)), 0.0, abs_=1e-15)    # relu(u) relu(-u) = 0
    close(arccos_kernel(one, one, t(0.0)), 1 / (2 * math.pi), rel=1e-12)  # independent


CASES = [  # mu_u, s_u, mu_v, s_v, rho
    (0.0, 1.0, 0.0, 1.0, 0.3),
    (0.5, 1.0, -0.3, 0.7, 0.9),
    (-1.0, 2.0, 0.5, 1.0, -0.5),
    (0.3, 0.5, 1.0, 2.0, 0.99),
    (2.0, 1.0, -1.0, 1.0, 0.2),
    (-0.2, 1.0, 0.2, 1.0, 0.999999),
    (0.4, 1.5, 0.4, 1.5, 1.0),
]


@pytest.mark.parametrize("method", ["plackett", "hermite"])
@pytest.mark.parametrize("case", CASES)
def test_cross_moment_matches_monte_carlo(case, method):
    mu_u, s_u, mu_v, s_v, rho = case
    g = gen(3)
    z1, z2 = torch.randn(MC, generator=g, dtype=D), torch.randn(MC, generator=g, dtype=D)
    u = mu_u + s_u * z1
    v = mu_v + s_v * (rho * z1 + math.sqrt(max(0.0, 1 - rho * rho)) * z2)
    mc = (torch.relu(u) * torch.relu(v)).mean()
    close(relu_cross_moment(*map(t, case), method=method), mc)


def test_cross_moment_methods_agree_and_reduce_to_arccos():
    g = gen(4)
    n = 200
    mu_u, mu_v = torch.randn(n, generator=g, dtype=D), torch.randn(n, generator=g, dtype=D)
    s_u, s_v = 0.2 + torch.rand(n, generator=g, dtype=D), 0.2 + torch.rand(n, generator=g, dtype=D)
    rho = 1.9 * torch.rand(n, generator=g, dtype=D) - 0.95
    p = relu_cross_moment(mu_u, s_u, mu_v, s_v, rho)
    h = relu_cross_moment(mu_u, s_u, mu_v, s_v, rho, method="hermite")
    # Gauss-Hermite is less accurate where the second ReLU kink appears (|rho| -> 1)
    assert ((p - h).abs() <= 1e-4 * s_u * s_v).all()
    zero = torch.zeros(n, dtype=D)
    assert torch.allclose(relu_cross_moment(zero, s_u, zero, s_v, rho),
                          arccos_kernel(s_u, s_v, rho), rtol=1e-12, atol=1e-15)
    # rho = 1 and equal parameters: the second moment
    one = torch.ones(n, dtype=D)
    assert torch.allclose(relu_cross_moment(mu_u, s_u, mu_u, s_u, one),
                          relu_second_moment(mu_u, s_u), rtol=1e-10, atol=1e-14)


def test_cross_moment_gradient_is_exact_and_finite_at_full_correlation():
    g = gen(5)
    args = [torch.randn(6, generator=g, dtype=D), 0.3 + torch.rand(6, generator=g, dtype=D),
            torch.randn(6, generator=g, dtype=D), 0.3 + torch.rand(6, generator=g, dtype=D),
            1.8 * torch.rand(6, generator=g, dtype=D) - 0.9]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(lambda *a: relu_cross_moment(*a), args)
    at_one = [a.detach().clone() for a in args[:4]] + [torch.ones(6, dtype=D)]
    at_one = [a.requires_grad_() for a in at_one]
    relu_cross_moment(*at_one).sum().backward()
    assert all(torch.isfinite(a.grad).all() for a in at_one)


def test_bivariate_cdf_known_values():
    rho = t(-0.9, -0.3, 0.0, 0.5, 0.99)
    zero = torch.zeros_like(rho)
    exact = 0.25 + torch.asin(rho) / (2 * math.pi)  # Sheppard's formula at the origin
    assert torch.allclose(bivariate_normal_cdf(zero, zero, rho), exact, atol=1e-12)
    h, k = t(0.3), t(-0.7)
    x = torch.randn(MC, 2, generator=gen(6), dtype=D)
    y = 0.6 * x[:, 0] + 0.8 * x[:, 1]
    close(bivariate_normal_cdf(h, k, t(0.6)), ((x[:, 0] <= h) & (y <= k)).double().mean())


def _mc_objective(w, u, v, b, c, n_samples=MC, seed=7):
    x = torch.randn(n_samples, w.shape[1], generator=gen(seed), dtype=D)
    y = torch.relu(x @ w.T + (0 if b is None else b))
    yh = torch.relu(x @ v.T @ u.T + (0 if c is None else c))
    return (y - yh).square().sum(-1).mean(), y.square().sum(-1).mean()


@pytest.mark.parametrize("with_bias", [False, True])
def test_objective_matches_monte_carlo(with_bias):
    g = gen(8)
    w = torch.randn(5, 3, generator=g, dtype=D)
    u, v = torch.randn(5, 2, generator=g, dtype=D), torch.randn(2, 3, generator=g, dtype=D)
    b = torch.randn(5, generator=g, dtype=D) if with_bias else None
    c = torch.randn(5, generator=g, dtype=D) if with_bias else None
    mc, energy = _mc_objective(w, u, v, b, c)
    close(relu_function_error(w, u, v, b, c), mc)
    close(relu_function_error(w, u, v, b, c, method="hermite"), mc)
    close(relu_output_energy(w, b), energy)
    close(relative_relu_error(w, u, v, b, c), mc / energy)


def test_objective_grouped_is_sum_over_groups():
    g = gen(9)
    w = torch.randn(3, 4, 5, generator=g, dtype=D)
    u, v = torch.randn(3, 4, 2, generator=g, dtype=D), torch.randn(3, 2, 5, generator=g, dtype=D)
    b, c = torch.randn(3, 4, generator=g, dtype=D), torch.randn(3, 4, generator=g, dtype=D)
    total = relu_function_error(w, u, v, b, c)
    parts = sum(relu_function_error(w[i], u[i], v[i], b[i], c[i]) for i in range(3))
    assert torch.allclose(total, parts, rtol=1e-12)


@pytest.mark.parametrize("with_bias", [False, True])
def test_objective_is_zero_at_exact_factorization_with_finite_gradient(with_bias):
    g = gen(10)
    w = torch.randn(6, 4, generator=g, dtype=D)
    b = torch.randn(6, generator=g, dtype=D) if with_bias else None
    a, s, bh = torch.linalg.svd(w, full_matrices=False)
    u = (a * s).requires_grad_()
    v = bh.clone().requires_grad_()
    c = None if b is None else b.clone().requires_grad_()
    loss = relu_function_error(w, u, v, b, c)
    assert abs(float(loss.detach())) < 1e-12 * float(relu_output_energy(w, b))
    loss.backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()
    assert u.grad.abs().max() < 1e-6 and v.grad.abs().max() < 1e-6


def test_objective_gradient_matches_finite_differences():
    g = gen(11)
    w = torch.randn(4, 3, generator=g, dtype=D)
    u = torch.randn(4, 2, generator=g, dtype=D, requires_grad=True)
    v = torch.randn(2, 3, generator=g, dtype=D, requires_grad=True)
    b = torch.randn(4, generator=g, dtype=D)
    c = torch.randn(4, generator=g, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, v, c: relu_function_error(w, u, v, b, c), (u, v, c))


def test_bad_method_is_rejected():
    with pytest.raises(ValueError, match="method"):
        relu_cross_moment(t(0.0), t(1.0), t(0.0), t(1.0), t(0.5), method="simpson")
