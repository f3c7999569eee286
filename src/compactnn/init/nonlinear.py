"""Function-matching initialization of low-rank layers [LR-NL], and the
data-aware linear baselines it is compared with, as registered initializers.

The rank-r layer is chosen to compute nearly the same *function* as the dense
layer, minimizing

    L(U, V, c) = E_x |act(W x + b) - act(U V x + c)|^2 ,

with ``x ~ N(0, I)`` at initialization ("Gaussian mode": the ReLU solver of
:mod:`compactnn.init.relu_solver`) or ``x`` the calibration activations that
reach the layer in a trained network ("data mode": :mod:`compactnn.init.data_fit`).
Between the layer and its activation may sit an eval-mode normalization
(``post_norm``), a per-output affine map folded into the problem.

Baselines registered beside it (data-aware, linear outputs, as published):
``"whitened"`` (SVD-LLM) and ``"lstsq"`` (MosaicML Composer), from
:mod:`compactnn.init.moments`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from compactnn._checks import check_int
from compactnn.init.data_fit import FitOptions, fit_data
from compactnn.init.inputs import check_activation, layer_inputs, norm_affine
from compactnn.init.layer_factors import apply_factors, dense_target, layer_moments
from compactnn.init.moments import (
    WHITENED_REFITS,
    InputMoments,
    cross_moment,
    lstsq_factors,
    whitened_factors,
)
from compactnn.init.relu_solver import solve_gaussian
from compactnn.init.spectral import balanced_factors, rebalance
from compactnn.lowrank.base import LowRankLayer
from compactnn.lowrank.registry import register_initializer

__all__ = ["nonlinear_", "whitened_", "lstsq_"]


@register_initializer("nonlinear", data_aware=True, activation_aware=True)
def nonlinear_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inputs: Tensor | Iterable[Any] | None = None,
    activation: str | None = "relu",
    *,
    post_norm: nn.Module | tuple[Tensor, Tensor] | None = None,
    options: FitOptions | None = None,
    **overrides: Any,
) -> LowRankLayer:
    """Function-matching initialization [LR-NL]: set ``layer``'s factors (and bias,
    when ``fit_bias`` and the layer has one) to minimize
    ``E |act(W x + b) - act(U V x + c)|^2``.

    Args:
        layer: the low-rank layer, modified in place (only once everything succeeded).
        weight, bias: the dense layer's parameters (its module layout and shape);
            without ``weight``, a fresh draw of the dense default init (from scratch).
        inputs: calibration activations reaching the layer (a tensor, or an
            iterable of batches, streamed). Without them, ``x ~ N(0, I)``.
        activation: ``"relu"`` (default), ``"identity"`` (or None), ``"gelu"``,
            ``"silu"``, ``"tanh"``, ``"sigmoid"``.
        post_norm: a per-output affine map between the layer and the activation,
            ``z -> a * z + d`` (an eval-mode BatchNorm, or a ``(a, d)`` pair): the
            objective becomes ``E |act(a(W x + b) + d) - act(a(U V x + c) + d)|^2``,
            solved as the plain problem for ``(a W, a b + d)`` and mapped back.
        options, overrides: the solver options, a :class:`FitOptions` and/or its
            field names as keywords (``fit_bias``, ``rounds``, ``newton_steps``,
            ``steps``, ``lr``, ``batch_size``, ``max_patches``, ``samples``,
            ``damping``, ``seed``, ``svd_method``).

    Gaussian mode: relu by the closed-form solver (never worse than spectral on
    the exact objective); identity is exactly spectral (``E|(W - A) x|^2 =
    |W - A|_F^2``). Data mode: identity solved exactly, the others by Adam from
    the better of the spectral and least-squares starts. Returns ``layer``.
    """
    act = check_activation(activation)
    opts = FitOptions.resolve(options, overrides)
    w, b = dense_target(layer, weight, bias)
    fit = opts.fit_bias and layer.bias is not None
    g, m, n = layer.matrix_shape
    r_g = layer.rank // g
    if not layer.rows_are_outputs and (act != "identity" or inputs is not None
                                       or post_norm is not None):
        raise ValueError(f"init='nonlinear' with activation={act!r} needs the rows of the "
                         f"matrix view to be output units, which {layer.extra_repr()} "
                         "does not have (for LowRankConv2d use scheme='channel')")
    scale = shift = None
    if post_norm is not None:  # solve for (a W, a b + d), then map U and c back
        a, d = norm_affine(post_norm, g * m)
        a = torch.where(a.abs() > 1e-12 * float(a.abs().max().clamp_min(1e-300)), a,
                        torch.ones_like(a))  # a unit the norm zeroes: match it unscaled
        scale, shift = a.to(w.dtype).reshape(g, m), d.to(w.dtype).reshape(g, m)
        w = w * scale.unsqueeze(-1)
        b = (shift if b is None else scale * b.reshape(g, m) + shift).reshape(-1)
    b_g = None if b is None else b.reshape(g, m)
    u, v, c = _solve(layer, w, b_g, r_g, act, inputs, fit, opts)
    if scale is not None:
        u = u.reshape(g, m, r_g) / scale.unsqueeze(-1).to(u.dtype)
        u, v = rebalance(u, v.reshape(g, r_g, n))
        if c is not None:
            c = (c.reshape(g, m) - shift.to(c.dtype)) / scale.to(c.dtype)
    apply_factors(layer, u, v, c if fit else None)
    return layer


def _solve(layer: LowRankLayer, w: Tensor, b_g: Tensor | None, r_g: int, act: str,
           inputs: Any, fit: bool, opts: FitOptions) -> tuple[Tensor, Tensor, Tensor | None]:
    """Factors ``(G, m, r/G)``, ``(G, r/G, n)`` and bias ``(G, m)`` (the given one
    when not ``fit``) for :func:`nonlinear_`'s problem on the matrix view ``w``."""
    g, m, n = w.shape
    if inputs is None and act == "identity":
        u, v = balanced_factors(w, r_g, opts.svd_method)
        return u, v, b_g
    if inputs is None and act == "relu":
        sol = solve_gaussian(w, r_g, b_g, fit_bias=fit, rounds=opts.rounds,
                             newton_steps=opts.newton_steps, svd_method=opts.svd_method)
        return sol.u, sol.v, sol.bias if fit else b_g
    fit_opts = FitOptions.resolve(opts, {"fit_bias": fit})
    if inputs is None:  # other activations: sample x ~ N(0, I)
        gen = torch.Generator().manual_seed(opts.seed)
        results = []
        for gi in range(g):
            xs = torch.randn(opts.samples, n, generator=gen, dtype=w.dtype)
            results.append(fit_data(w[gi], r_g, list(xs.split(opts.batch_size)), act,
                                    None if b_g is None else b_g[gi], fit_opts))
    else:
        rows = layer_inputs(layer, inputs, batch_size=opts.batch_size,
                            max_patches=opts.max_patches, seed=opts.seed)
        results = [fit_data(w[0], r_g, rows, act, None if b_g is None else b_g[0], fit_opts)]
    u = torch.stack([r.u for r in results])
    v = torch.stack([r.v for r in results])
    if not fit:
        return u, v, b_g
    return u, v, torch.stack([r.bias if r.bias is not None else torch.zeros(m, dtype=u.dtype)
                              for r in results])


@register_initializer("whitened", data_aware=True)
def whitened_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inputs: Tensor | Iterable[Any] | None = None,
    *,
    damping: float = 0.0,
    batch_size: int = 4096,
    max_patches: int = 4096,
    seed: int = 0,
    moments: InputMoments | None = None,
    refit: str | None = None,
    cross: Tensor | None = None,
    target_inputs: Tensor | Iterable[Any] | None = None,
) -> LowRankLayer:
    """SVD-LLM's activation-whitened SVD
    (:func:`compactnn.init.moments.whitened_factors`): the best rank-r ``U V`` for
    ``E |(W - U V) x|^2`` over the calibration ``inputs`` (or their precomputed
    ``moments``, an :class:`InputMoments`); the bias is kept. ``damping`` is the
    first relative diagonal shift tried (:func:`~compactnn.init.moments.shifted_cholesky`).
    ``refit="u"`` refits ``U`` by least squares with ``V`` fixed
    (:func:`~compactnn.init.moments.refit_u`), against the dense layer on inputs
    whose cross moment ``E[x_dense x^T]`` with the layer's inputs is ``cross``
    (sequential calibration; default: the same inputs); ``refit="optimal"`` is
    the exact rank-r minimizer of that objective (the whitened truncation of the
    regression of the dense outputs on the layer's inputs). Instead of ``cross``,
    ``target_inputs`` may give the dense model's inputs paired with ``inputs``
    batch by batch and row by row (same shapes); ``cross`` is then computed from
    them. A linear-output method, as published: it takes no activation."""
    FitOptions(damping=damping, batch_size=batch_size, max_patches=max_patches, seed=seed)
    if refit not in WHITENED_REFITS:
        raise ValueError(f"refit must be one of {WHITENED_REFITS}, got refit={refit!r}")
    if (cross is not None or target_inputs is not None) and refit is None:
        raise ValueError("cross= and target_inputs= are used only by refit='u' or "
                         "refit='optimal'; pass one of them with it")
    if target_inputs is not None and (cross is not None or inputs is None):
        raise ValueError("target_inputs= pairs with inputs= (not moments=) and replaces "
                         "cross=; give inputs= and target_inputs= only")
    w, _ = dense_target(layer, weight, bias)
    if target_inputs is not None:  # both streamed twice: one-shot iterators are kept
        target_inputs, inputs = (layer_inputs(layer, t, batch_size=batch_size,
                                              max_patches=max_patches, seed=seed)
                                 for t in (target_inputs, inputs))
    mom = layer_moments("whitened", layer, inputs, moments, batch_size=batch_size,
                        max_patches=max_patches, seed=seed)
    if target_inputs is not None:
        cross = cross_moment(target_inputs, inputs)
    u, v = whitened_factors(w[0], layer.rank, mom, damping, refit=refit, cross=cross)
    u, v = rebalance(u.unsqueeze(0), v.unsqueeze(0))
    apply_factors(layer, u, v, None)
    return layer


@register_initializer("lstsq", data_aware=True)
def lstsq_(
    layer: LowRankLayer,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    inputs: Tensor | Iterable[Any] | None = None,
    *,
    iters: int = 3,
    batch_size: int = 4096,
    max_patches: int = 4096,
    seed: int = 0,
    moments: InputMoments | None = None,
) -> LowRankLayer:
    """MosaicML Composer's least-squares factorization
    (:func:`compactnn.init.moments.lstsq_factors`): matches the linear output
    ``W x + b`` on the calibration ``inputs`` (or their precomputed ``moments``)
    and refits the bias. A linear-output method, as published: it takes no
    activation."""
    check_int("iters", iters, 0)
    FitOptions(batch_size=batch_size, max_patches=max_patches, seed=seed)
    w, b = dense_target(layer, weight, bias)
    mom = layer_moments("lstsq", layer, inputs, moments, batch_size=batch_size,
                        max_patches=max_patches, seed=seed)
    u, v, c = lstsq_factors(w[0], layer.rank, mom, b, iters)
    u, v = rebalance(u.unsqueeze(0), v.unsqueeze(0))
    apply_factors(layer, u, v, c if layer.bias is not None else None)
    return layer
