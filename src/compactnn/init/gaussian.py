"""Closed-form Gaussian expectations for matching ReLU layers [LR-NL, Sec. 3].

For ``x ~ N(0, I)`` each output unit of ``relu(W x + b)`` depends on ``x`` only
through the Gaussian scalar ``u_i = w_i . x + b_i ~ N(b_i, |w_i|^2)``, and the
low-rank unit ``v_i = a_i . x + c_i`` (``a_i`` the i-th row of ``U V``) is
jointly Gaussian with it, with correlation ``rho_i = w_i . a_i / (|w_i| |a_i|)``.
The function-matching objective

    L(U, V, c) = E |relu(W x + b) - relu(U V x + c)|^2
               = sum_i E relu(u_i)^2 + E relu(v_i)^2 - 2 E relu(u_i) relu(v_i)

is therefore a sum of bivariate-normal expectations, all in closed form but
one 1-D integral:

* ``E relu(u) = mu Phi(mu/s) + s phi(mu/s)`` and
  ``E relu(u)^2 = (mu^2 + s^2) Phi(mu/s) + mu s phi(mu/s)`` for ``u ~ N(mu, s^2)``;
* without biases, the order-1 arc-cosine kernel (Cho & Saul 2009):
  ``E relu(u) relu(v) = s t (sin(theta) + (pi - theta) cos(theta)) / (2 pi)``;
* with biases, the cross moment by Price's theorem (its derivative in the
  covariance is ``P(u > 0, v > 0)``) and Plackett's identity, integrated over
  the correlation from the independent case:
  ``E relu(u) relu(v) = E relu(u) E relu(v)
  + s t [rho Phi(al) Phi(be) + int_0^asin(rho) (rho - sin th) e^{-Q(th)} / (2 pi) dth]``
  with ``al = mu_u/s``, ``be = mu_v/t``,
  ``Q(th) = (al^2 - 2 al be sin th + be^2) / (2 cos^2 th)``. The integrand is
  smooth in the angle ``th`` (no kink, no singularity at ``rho = +-1``), so
  Gauss-Legendre quadrature with 32 nodes is exact to double precision
  (``method="plackett"``, the default).
* ``method="hermite"``: condition on ``u``
  (``E[relu(v) | u]`` is the 1-D formula above) and integrate over ``u`` by
  Gauss-Hermite quadrature. The kink of ``relu(u)`` slows that quadrature
  down, so its first-order Taylor part at the kink is integrated analytically
  (singularity subtraction). With 48 nodes it agrees with ``"plackett"`` to
  about ``1e-4 s t`` (worst where ``|rho| -> 1``, when ``E[relu(v) | u]`` grows a
  kink of its own); it is kept as an independent check.

Everything is differentiable in torch; the ``"plackett"`` cross moment has
analytic first derivatives (Price's theorem and Stein's lemma), so its
gradient is exact and finite even at ``rho = +-1``. The per-unit quantities
are computed in float64; the only work of size ``m x n`` is the two thin
matrix products ``W V^T`` and ``U^T (.)``, so the objective never forms ``U V``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "normal_cdf",
    "normal_pdf",
    "relu_mean",
    "relu_second_moment",
    "bivariate_normal_cdf",
    "arccos_kernel",
    "relu_cross_moment",
    "relu_pair_error",
    "relu_unit_stats",
    "relu_function_error",
    "relu_output_energy",
    "relative_relu_error",
    "CROSS_METHODS",
]

CROSS_METHODS = ("plackett", "hermite")
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_PLACKETT_NODES = 32
_HERMITE_NODES = 48


def normal_cdf(x: Tensor) -> Tensor:
    """Standard normal CDF ``Phi(x)``."""
    return 0.5 * torch.erfc(-x / _SQRT2)


def normal_pdf(x: Tensor) -> Tensor:
    """Standard normal density ``phi(x)``."""
    return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def safe_scale(s: Tensor) -> Tensor:
    """Clamp a standard deviation away from 0 so ``mu / s`` is never ``0/0``."""
    return s.clamp_min(torch.finfo(s.dtype).tiny)


def relu_mean(mu: Tensor, sigma: Tensor) -> Tensor:
    """``E relu(u)`` for ``u ~ N(mu, sigma^2)``: ``mu Phi(mu/sigma) + sigma phi(mu/sigma)``."""
    sigma = safe_scale(sigma)
    z = mu / sigma
    return mu * normal_cdf(z) + sigma * normal_pdf(z)


def relu_second_moment(mu: Tensor, sigma: Tensor) -> Tensor:
    """``E relu(u)^2`` for ``u ~ N(mu, sigma^2)``:
    ``(mu^2 + sigma^2) Phi(mu/sigma) + mu sigma phi(mu/sigma)``."""
    sigma = safe_scale(sigma)
    z = mu / sigma
    return (mu * mu + sigma * sigma) * normal_cdf(z) + mu * sigma * normal_pdf(z)


def arccos_kernel(norm_a: Tensor, norm_c: Tensor, cos: Tensor) -> Tensor:
    """``E relu(a.x) relu(c.x)`` for ``x ~ N(0, I)``, the order-1 arc-cosine kernel:
    ``|a||c| (sin(theta) + (pi - theta) cos(theta)) / (2 pi)`` with
    ``cos(theta) = cos`` ."""
    cos = cos.clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    return norm_a * norm_c * (torch.sin(theta) + (math.pi - theta) * cos) / (2.0 * math.pi)


@functools.lru_cache(maxsize=16)
def _legendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(n)


@functools.lru_cache(maxsize=16)
def _hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / math.sqrt(2.0 * math.pi)  # weights of E over N(0, 1)


def plackett_terms(al: Tensor, be: Tensor, rho: Tensor, nodes: int) -> tuple[Tensor, Tensor]:
    """``(Phi2, K)``: ``Phi2 = P(X <= al, Y <= be)`` for a standard bivariate normal
    with correlation ``rho``, and ``K = int_0^asin(rho) (rho - sin th) e^{-Q} / (2 pi) dth``.
    Both by ``nodes``-point Gauss-Legendre in the angle ``th``."""
    x, w = _legendre(nodes)
    shape = (nodes,) + (1,) * al.dim()
    x = torch.as_tensor(x, dtype=al.dtype, device=al.device).reshape(shape)
    w = torch.as_tensor(w, dtype=al.dtype, device=al.device).reshape(shape)
    th_max = torch.asin(rho)
    th = th_max * (x + 1.0) / 2.0
    wt = w * th_max / 2.0
    sin, cos = torch.sin(th), torch.cos(th)
    q = (al * al - 2.0 * sin * al * be + be * be) / (2.0 * cos * cos)
    e = torch.exp(-q) / (2.0 * math.pi)
    base = normal_cdf(al) * normal_cdf(be)
    phi2 = base + (wt * e).sum(0)
    k = (wt * (rho - sin) * e).sum(0)
    return phi2, k


def bivariate_normal_cdf(h: Tensor, k: Tensor, rho: Tensor,
                         nodes: int = _PLACKETT_NODES) -> Tensor:
    """``P(X <= h, Y <= k)`` for a standard bivariate normal with correlation
    ``rho``, by Plackett's identity ``d Phi2 / d rho = phi2`` integrated over the
    angle ``asin(rho)`` (Gauss-Legendre, smooth integrand)."""
    h, k, rho = torch.broadcast_tensors(h, k, rho)
    return plackett_terms(h, k, rho.clamp(-1.0, 1.0), nodes)[0]


class _PlackettCross(torch.autograd.Function):
    """``E relu(u) relu(v)`` with analytic first derivatives:
    ``dC/drho = s t Phi2``, ``dC/dmu_u = E[1{u>0} relu(v)]``,
    ``dC/ds = E[X 1{u>0} relu(v)]`` (Price's theorem, Stein's lemma)."""

    @staticmethod
    def forward(ctx, mu_u, s_u, mu_v, s_v, rho, nodes):  # type: ignore[override]
        s_u, s_v = safe_scale(s_u), safe_scale(s_v)
        al, be = mu_u / s_u, mu_v / s_v
        phi2, k = plackett_terms(al, be, rho, nodes)
        cross = relu_mean(mu_u, s_u) * relu_mean(mu_v, s_v) + s_u * s_v * (
            rho * normal_cdf(al) * normal_cdf(be) + k)
        ctx.save_for_backward(mu_u, s_u, mu_v, s_v, rho, al, be, phi2)
        return cross

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        mu_u, s_u, mu_v, s_v, rho, al, be, phi2 = ctx.saved_tensors
        q = safe_scale(torch.sqrt((1.0 - rho * rho).clamp_min(0.0)))
        pa, pb = normal_pdf(al), normal_pdf(be)
        ca, cb = normal_cdf((be - rho * al) / q), normal_cdf((al - rho * be) / q)
        ex = pa * ca + rho * pb * cb  # E[X 1{X > -al, Y > -be}]
        ey = pb * cb + rho * pa * ca  # E[Y 1{X > -al, Y > -be}]
        d_mu_u = mu_v * phi2 + s_v * ey
        d_mu_v = mu_u * phi2 + s_u * ex
        d_s_u = rho * s_v * phi2 + pa * relu_mean(mu_v - s_v * rho * al, s_v * q)
        d_s_v = rho * s_u * phi2 + pb * relu_mean(mu_u - s_u * rho * be, s_u * q)
        d_rho = s_u * s_v * phi2
        return grad * d_mu_u, grad * d_s_u, grad * d_mu_v, grad * d_s_v, grad * d_rho, None


def _hermite_cross(mu_u: Tensor, s_u: Tensor, mu_v: Tensor, s_v: Tensor, rho: Tensor,
                   nodes: int) -> Tensor:
    """Condition on ``u = mu_u + s_u z``: ``E[relu(v) | z] = G(z)`` is the 1-D formula;
    ``E relu(u) G(z)`` by Gauss-Hermite, with the Taylor part ``G(z0) + G'(z0)(z - z0)``
    at the kink ``z0 = -mu_u / s_u`` integrated exactly."""
    x, w = _hermite(nodes)
    shape = (nodes,) + (1,) * mu_u.dim()
    z = torch.as_tensor(x, dtype=mu_u.dtype, device=mu_u.device).reshape(shape)
    w = torch.as_tensor(w, dtype=mu_u.dtype, device=mu_u.device).reshape(shape)
    s_u, s_v = safe_scale(s_u), safe_scale(s_v)
    sig = s_v * torch.sqrt((1.0 - rho * rho).clamp_min(0.0))
    z0 = -mu_u / s_u
    g0 = relu_mean(mu_v + s_v * rho * z0, sig)
    g1 = s_v * rho * normal_cdf((mu_v + s_v * rho * z0) / safe_scale(sig))
    rest = relu_mean(mu_v + s_v * rho * z, sig) - g0 - g1 * (z - z0)
    ones = torch.ones_like(z0)
    exact = s_u * (g0 * relu_mean(-z0, ones) + g1 * relu_second_moment(-z0, ones))
    return (w * torch.relu(mu_u + s_u * z) * rest).sum(0) + exact


def relu_cross_moment(mu_u: Tensor, s_u: Tensor, mu_v: Tensor, s_v: Tensor, rho: Tensor,
                      method: str = "plackett", nodes: int | None = None) -> Tensor:
    """``E relu(u) relu(v)`` for jointly Gaussian ``u ~ N(mu_u, s_u^2)``,
    ``v ~ N(mu_v, s_v^2)`` with correlation ``rho`` (see the module docstring for
    both methods). Broadcasts its arguments; computes in at least float64."""
    if method not in CROSS_METHODS:
        raise ValueError(f"method must be one of {CROSS_METHODS}, got method={method!r}")
    args = torch.broadcast_tensors(mu_u, s_u, mu_v, s_v, rho)
    dtype = torch.promote_types(args[0].dtype, torch.float64)
    mu_u, s_u, mu_v, s_v, rho = (a.to(dtype) for a in args)
    rho = rho.clamp(-1.0, 1.0)
    if method == "hermite":
        return _hermite_cross(mu_u, s_u, mu_v, s_v, rho, nodes or _HERMITE_NODES)
    return _PlackettCross.apply(mu_u, s_u, mu_v, s_v, rho, nodes or _PLACKETT_NODES)


def relu_pair_error(mu_u: Tensor, s_u: Tensor, mu_v: Tensor, s_v: Tensor, rho: Tensor,
                    method: str = "plackett") -> Tensor:
    """``E (relu(u) - relu(v))^2`` for the jointly Gaussian pair of
    :func:`relu_cross_moment`: one term of the objective, per output unit."""
    cross = relu_cross_moment(mu_u, s_u, mu_v, s_v, rho, method)
    mu_u, s_u, mu_v, s_v = (a.to(cross.dtype) for a in (mu_u, s_u, mu_v, s_v))
    return relu_second_moment(mu_u, s_u) + relu_second_moment(mu_v, s_v) - 2.0 * cross


def _as_batch(x: Tensor) -> Tensor:
    return x if x.dim() == 3 else x.unsqueeze(0)


def relu_unit_stats(weight: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per output unit: ``|w_i|``, ``|a_i|`` and ``rho_i = w_i . a_i / (|w_i||a_i|)``
    with ``a_i`` the i-th row of ``U V``, computed from ``W V^T`` and ``V V^T``
    without forming ``U V``. Shapes ``(m, n), (m, r), (r, n)`` or batched with a
    leading group axis; results in float64, shape ``(G, m)`` (or ``(m,)``)."""
    squeeze = weight.dim() == 2
    w, uu, vv = _as_batch(weight), _as_batch(u), _as_batch(v)
    p = w @ vv.transpose(-2, -1)                       # (G, m, r)
    d = (p * uu).sum(-1).double()
    gram = vv @ vv.transpose(-2, -1)                   # (G, r, r)
    t2 = ((uu @ gram) * uu).sum(-1).double()
    s = w.double().pow(2).sum(-1).sqrt()
    t = t2.clamp_min(0.0).sqrt()
    rho = (d / (safe_scale(s) * safe_scale(t))).clamp(-1.0, 1.0)
    if squeeze:
        return s[0], t[0], rho[0]
    return s, t, rho


def relu_function_error(weight: Tensor, u: Tensor, v: Tensor, bias: Tensor | None = None,
                        new_bias: Tensor | None = None, method: str = "plackett") -> Tensor:
    """The exact objective ``E_x |relu(W x + b) - relu(U V x + c)|^2`` over
    ``x ~ N(0, I)`` [LR-NL, Sec. 3], summed over output units.

    ``weight`` (m, n), ``u`` (m, r), ``v`` (r, n), ``bias`` and ``new_bias`` (m,)
    or None (zero); or all with a leading group axis ``G``. Differentiable in
    every argument; returns a float64 scalar. Without biases the Plackett form
    is the arc-cosine kernel (to double precision; tested).
    """
    s, t, rho = relu_unit_stats(weight, u, v)
    b = torch.zeros_like(s) if bias is None else bias.reshape(s.shape).to(s.dtype)
    c = torch.zeros_like(s) if new_bias is None else new_bias.reshape(s.shape).to(s.dtype)
    return relu_pair_error(b, s, c, t, rho, method).sum()


def relu_output_energy(weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``E |relu(W x + b)|^2`` over ``x ~ N(0, I)``: the normalizer of the relative
    error (float64 scalar)."""
    s = weight.double().pow(2).sum(-1).sqrt()
    b = torch.zeros_like(s) if bias is None else bias.reshape(s.shape).double()
    return relu_second_moment(b, s).sum()


def relative_relu_error(weight: Tensor, u: Tensor, v: Tensor, bias: Tensor | None = None,
                        new_bias: Tensor | None = None) -> float:
    """``L / E |relu(W x + b)|^2``: the relative function error reported by
    the function-gap experiment and the benchmarks."""
    with torch.no_grad():
        num = relu_function_error(weight, u, v, bias, new_bias)
        return float(num / relu_output_energy(weight, bias))
