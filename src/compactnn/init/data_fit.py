"""The data-mode solver of function-matching initialization [LR-NL]: minimize
``mean_x |act(W x + b) - act(U V x + c)|^2`` over the calibration rows that reach
the layer.

The identity activation is solved exactly from the streamed input moments
(:func:`compactnn.init.moments.least_squares_factors`). For ReLU, GELU, SiLU,
tanh and sigmoid the objective is minimized by Adam on mini-batches, streamed
over the calibration batches, from the better of the spectral and
least-squares starts, keeping the start if the result is not better on the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from compactnn._checks import check_bool, check_choice, check_float, check_int
from compactnn.init.adam import relative_adam, rms
from compactnn.init.inputs import activation_fn, check_activation
from compactnn.init.moments import InputMoments, input_moments, least_squares_factors, linear_error
from compactnn.init.spectral import SVD_METHODS, balanced_factors, rebalance

__all__ = ["FitOptions", "DataSolution", "fit_data"]


@dataclass(frozen=True)
class FitOptions:
    """The options of function-matching initialization (:func:`fit_data` and
    ``init="nonlinear"``), checked on construction.

    Attributes:
        fit_bias: also fit the bias ``c`` (else ``c = b``).
        rounds, newton_steps: the Gaussian ReLU solver
            (:func:`compactnn.init.relu_solver.solve_gaussian`).
        steps, lr, batch_size: Adam steps, base learning rate (relative to each
            tensor's scale) and mini-batch rows of the data-mode fit.
        max_patches: patch rows sampled per batch for convolutions in data mode.
        samples: Gaussian inputs drawn for activations other than relu/identity
            when there are no calibration inputs (the objective is then sampled).
        damping: ridge on the input covariance of the least-squares start, as a
            fraction of its mean diagonal.
        seed: seed of every random draw (mini-batches, patches, samples).
        svd_method: ``"auto"``, ``"exact"`` or ``"randomized"`` (truncated SVD).
    """

    fit_bias: bool = True
    rounds: int = 8
    newton_steps: int = 3
    steps: int = 300
    lr: float = 0.02
    batch_size: int = 1024
    max_patches: int = 4096
    samples: int = 8192
    damping: float = 0.0
    seed: int = 0
    svd_method: str = "auto"

    def __post_init__(self) -> None:
        check_bool("fit_bias", self.fit_bias)
        for name in ("rounds", "newton_steps", "steps", "seed"):
            check_int(name, getattr(self, name), 0)
        for name in ("batch_size", "max_patches", "samples"):
            check_int(name, getattr(self, name), 1)
        check_float("lr", self.lr, 0.0, min_inclusive=False)
        check_float("damping", self.damping, 0.0)
        check_choice("svd_method", self.svd_method, SVD_METHODS)

    @classmethod
    def resolve(cls, options: FitOptions | None, overrides: Mapping[str, Any]) -> FitOptions:
        """``options`` (default: all defaults) with ``overrides`` replaced; an unknown
        name is a ``TypeError`` naming it and the known ones."""
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a FitOptions, got {type(options).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(known))}")
        return replace(options or cls(), **overrides)


@dataclass
class DataSolution:
    """Data-mode result: factors ``u`` (m, r), ``v`` (r, n), bias ``(m,)`` or None,
    the objective on the calibration data, and each start's objective."""

    u: Tensor
    v: Tensor
    bias: Tensor | None
    error: float
    starts: dict[str, float] = field(default_factory=dict)
    start: str = ""


def _data_error(rows: Iterable[Tensor], w: Tensor, b: Tensor | None,
                cands: list[tuple[Tensor, Tensor, Tensor | None]], act: Any) -> list[float]:
    """Mean over rows of ``|act(W x + b) - act(U V x + c)|^2`` for each candidate,
    in one streamed pass."""
    sums = [0.0] * len(cands)
    count = 0
    with torch.no_grad():
        for x in rows:
            x = x.to(w.dtype)
            target = act(torch.nn.functional.linear(x, w, b))
            for i, (u, v, c) in enumerate(cands):
                out = act(torch.nn.functional.linear(x @ v.T, u, c))
                sums[i] += float((out - target).double().square().sum())
            count += x.shape[0]
    if count == 0:
        raise ValueError("calibration inputs are empty: no rows reached the layer")
    return [s_ / count for s_ in sums]


class _Targets:
    """The dense layer's outputs ``act(W x + b)`` of each calibration batch, for the
    Adam passes: computed once and reused while the rows are the very tensors of
    the first pass (the replayed cache of :class:`~compactnn.init.inputs.LayerInputs`
    or a list), up to ``budget`` bytes; recomputed on every pass otherwise. On few
    rows, many passes are made and this product of the full weight is most of a
    step's work."""

    def __init__(self, w: Tensor, b: Tensor | None, act: Any, budget: int = 1 << 28) -> None:
        self.w, self.b, self.act, self.budget = w, b, act, budget
        self.kept: list[tuple[Tensor, Tensor]] | None = []

    def get(self, i: int, raw: Tensor, x: Tensor) -> Tensor:
        kept = self.kept
        if kept is not None and i < len(kept):
            if kept[i][0] is raw:
                return kept[i][1]
            self.kept = kept = None  # the rows changed between passes: stop caching
        with torch.no_grad():
            full = self.act(torch.nn.functional.linear(x, self.w, self.b))
        if kept is not None:
            self.budget -= full.numel() * full.element_size()
            if i == len(kept) and self.budget >= 0:
                kept.append((raw, full))
            else:
                self.kept = None
        return full


def fit_data(
    weight: Tensor,
    rank: int,
    rows: Iterable[Tensor],
    activation: str = "relu",
    bias: Tensor | None = None,
    options: FitOptions | None = None,
    *,
    moments: InputMoments | None = None,
    **overrides: Any,
) -> DataSolution:
    """Minimize ``mean_x |act(W x + b) - act(U V x + c)|^2`` over the calibration
    rows (a re-iterable of ``(k, n)`` tensors, streamed; memory does not grow
    with the data). The identity activation is solved exactly
    (:func:`least_squares_factors`). Otherwise: the better on the data of the
    spectral and least-squares starts, then ``steps`` Adam steps on mini-batches
    of at most ``batch_size`` rows (cosine-decayed, parameter-relative learning
    rate ``lr``), kept only if it lowers the objective on all the data.

    ``options`` (a :class:`FitOptions`) and ``overrides`` (its field names, e.g.
    ``steps=20``) set the solver; ``moments`` are the rows' moments when already
    known.
    """
    act_name = check_activation(activation)
    act = activation_fn(act_name)
    w = weight.detach() if weight.dtype == torch.float64 else weight.detach().float()
    b = None if bias is None else bias.detach().to(w.dtype)
    opts = FitOptions.resolve(options, overrides)
    fit, steps, lr, batch_size = opts.fit_bias, opts.steps, opts.lr, opts.batch_size
    mom = input_moments(rows) if moments is None else moments
    if mom.mean.shape[0] != w.shape[1]:
        raise ValueError(f"inputs have {mom.mean.shape[0]} features, the layer expects "
                         f"{w.shape[1]}")
    lu, lv, lc = least_squares_factors(w, rank, mom, b, fit, opts.damping)
    ls = (lu.to(w.dtype), lv.to(w.dtype), None if lc is None else lc.to(w.dtype))
    if act_name == "identity":
        cu, cv = rebalance(ls[0].unsqueeze(0), ls[1].unsqueeze(0))
        err = linear_error(w, b, cu[0], cv[0], ls[2], mom)
        return DataSolution(cu[0], cv[0], ls[2], err, {"lstsq": err}, "lstsq")
    su, sv_ = balanced_factors(w, rank, opts.svd_method)
    spec = (su.to(w.dtype), sv_.to(w.dtype), b)
    errs = _data_error(rows, w, b, [spec, ls], act)
    starts = {"spectral": errs[0], "lstsq": errs[1]}
    name = min(starts, key=starts.__getitem__)
    u0, v0, c0 = spec if name == "spectral" else ls
    best = DataSolution(u0, v0, c0, starts[name], starts, name)
    if steps <= 0:
        return best

    gen = torch.Generator().manual_seed(opts.seed)
    uu, vv = u0.clone().requires_grad_(), v0.clone().requires_grad_()
    params, scales = [uu, vv], [rms(u0), rms(v0)]
    cc = None
    if fit:
        cc = (torch.zeros(w.shape[0], dtype=w.dtype) if c0 is None else c0.clone())
        cc.requires_grad_()
        out_scale = math.sqrt(max(float(torch.einsum("ij,jk,ik->", w.double(), mom.second,
                                                     w.double())) / w.shape[0], 1e-30))
        params.append(cc)
        scales.append(out_scale)
    elif c0 is not None:
        cc = c0
    opt, sched = relative_adam(params, scales, lr, steps)
    targets = _Targets(w, b, act)
    taken = 0
    while taken < steps:
        seen = 0
        for i, raw in enumerate(rows):
            x = raw.to(w.dtype)
            full = targets.get(i, raw, x)
            perm = torch.randperm(x.shape[0], generator=gen)
            for idx in perm.split(batch_size):
                idx = idx.to(x.device)
                xb, target = x[idx], full[idx]
                out = act(torch.nn.functional.linear(xb @ vv.T, uu, cc))
                loss = (out - target).square().sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                taken += 1
                seen += 1
                if taken >= steps:
                    break
            if taken >= steps:
                break
        if seen == 0:
            raise ValueError("calibration inputs are empty: no rows reached the layer")
    final = (uu.detach(), vv.detach(), None if cc is None else cc.detach())
    err = _data_error(rows, w, b, [final], act)[0]
    if err < best.error:
        fu, fv = rebalance(final[0].unsqueeze(0), final[1].unsqueeze(0))
        return DataSolution(fu[0], fv[0], final[2], err, starts, name + "+adam")
    return best
