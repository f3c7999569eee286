"""Function matching through a gated feed-forward block (SwiGLU and kin).

A gated FFN computes ``y = W_down (act(W_gate x + b_gate) * (W_up x + b_up)) + b_down``.
Compressing ``W_gate`` and ``W_up`` one at a time matches each linear output,
but what matters is the block's output after the nonlinearity and the
elementwise product. :func:`fit_gated_ffn` takes the two already-factorized
projections (from any linear-output start, e.g. ``init="whitened"``) and fits
their factors and biases jointly to minimize, over calibration token rows ``x``,

    J = mean_x | W_down (h(x) - h_hat(x)) |^2 ,
    h = act(W_gate x + b_gate) * (W_up x + b_up),
    h_hat = act(gate(x)) * up(x),

with ``W_down`` the dense down projection (``b_down`` cancels from the
difference; the down projection is compressed afterwards, on the new
intermediate activations). Adam on mini-batches, each tensor's learning rate
relative to its own scale, cosine decay; the objective is evaluated on all rows
at the start and regularly during the fit, and the best iterate is kept, so the
result is never worse than the start on ``J``. With held-out rows ``x_val``
the iterate is chosen on their ``J`` instead (early stopping): a few thousand
calibration tokens are easily overfitted by the factors of a wide FFN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from compactnn._checks import check_float, check_int, check_module, check_tensor
from compactnn.init.adam import relative_adam, rms
from compactnn.init.inputs import activation_fn, check_activation
from compactnn.lowrank.linear import LowRankLinear

__all__ = ["fit_gated_ffn"]


def _check_dense(name: str, value: Any, shape: tuple[int, ...] | None) -> Tensor | None:
    if value is None:
        return None
    return check_tensor(name, value, shape=shape, floating=True).detach()


def _token_rows(name: str, x: Any, d: int) -> Tensor:
    check_tensor(name, x, floating=True)
    if x.dim() == 0 or x.shape[-1] != d:
        raise ValueError(f"{name} must have {d} features in its last dimension, got shape "
                         f"{tuple(x.shape)}")
    rows = x.detach().reshape(-1, d)
    if rows.shape[0] == 0:
        raise ValueError(f"{name} holds no rows")
    return rows


def fit_gated_ffn(
    gate: LowRankLinear,
    up: LowRankLinear,
    x: Tensor,
    *,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
    b_down: Tensor | None = None,
    b_gate: Tensor | None = None,
    b_up: Tensor | None = None,
    steps: int = 200,
    lr: float = 0.02,
    batch_size: int = 1024,
    seed: int = 0,
    activation: str = "silu",
    eval_every: int | None = None,
    x_val: Tensor | None = None,
) -> dict[str, float | int]:
    """Fit the factors (and biases, where the layers have them) of the low-rank
    ``gate`` and ``up`` projections of a gated FFN to the dense block's output on
    the calibration rows ``x`` (module docstring). Modifies ``gate`` and ``up`` in
    place, only at the end and only with finite values; the dense tensors are
    read, never changed, and no gradient is left on any tensor.

    Args:
        gate, up: the factorized projections, ``d -> f`` each (distinct modules).
        x: calibration inputs of the block, ``(N, d)`` or ``(..., d)`` (token rows).
        w_gate, w_up: the dense ``(f, d)`` weights; ``b_gate``, ``b_up`` their
            biases ``(f,)`` if any (a dense bias needs a low-rank layer with a bias).
        w_down: the dense down projection ``(d_out, f)``; ``b_down`` ``(d_out,)`` is
            checked but cancels from the objective.
        steps: Adam steps (0: only evaluate); lr: learning rate relative to each
            tensor's root mean square (a bias by its pre-activations'), cosine-decayed.
        batch_size: rows per step; seed: seed of the mini-batch order (the fit is
            deterministic given it).
        activation: the gate's nonlinearity (``"silu"`` for SwiGLU, ``"gelu"`` for
            GeGLU, any of :data:`compactnn.init.ACTIVATIONS`).
        eval_every: steps between evaluations of ``J`` on all rows (default
            ``steps // 10``, at least 1); the last step is always evaluated.
        x_val: held-out rows (like ``x``); when given, the kept iterate is the
            best on them (never worse than the start there) instead of on ``x``.

    Returns:
        ``{"before", "after"}``: ``J`` on ``x`` at the start and of the returned
        factors; with ``x_val`` also ``"val_before"``, ``"val_after"``;
        ``"target"``: ``mean |y - b_down|^2``, the dense output's power (to read
        ``J`` relatively); ``"best_step"``: the step whose iterate was kept
        (0 = the start); ``"steps"``, ``"evaluations"``.
    """
    check_module("gate", gate, LowRankLinear)
    check_module("up", up, LowRankLinear)
    if gate is up:
        raise ValueError("gate and up must be two different layers")
    d, f = gate.in_features, gate.out_features
    if (up.in_features, up.out_features) != (d, f):
        raise ValueError(f"gate maps {d} -> {f} features but up maps {up.in_features} -> "
                         f"{up.out_features}; a gated FFN needs the same shape")
    wg = _check_dense("w_gate", w_gate, (f, d))
    wu = _check_dense("w_up", w_up, (f, d))
    wd = _check_dense("w_down", w_down, (None, f))
    _check_dense("b_down", b_down, (wd.shape[0],))
    bg = _check_dense("b_gate", b_gate, (f,))
    bu = _check_dense("b_up", b_up, (f,))
    for name, dense_b, layer in (("b_gate", bg, gate), ("b_up", bu, up)):
        if dense_b is not None and layer.bias is None:
            raise ValueError(f"{name} was given but the low-rank layer has bias=False")
    check_int("steps", steps, 0)
    check_float("lr", lr, 0.0, min_inclusive=False)
    check_int("batch_size", batch_size, 1)
    check_int("seed", seed, 0)
    act = activation_fn(check_activation(activation))
    every = max(1, steps // 10) if eval_every is None else check_int("eval_every", eval_every, 1)
    rows = _token_rows("x", x, d)
    val = None if x_val is None else _token_rows("x_val", x_val, d)

    dev, dt = gate.U.device, gate.U.dtype
    if (up.U.device, up.U.dtype) != (dev, dt):
        raise ValueError(f"gate and up must share a device and dtype, got {dev}/{dt} and "
                         f"{up.U.device}/{up.U.dtype}")
    rows = rows.to(dev, dt)
    wg, wu, wd = (t.to(dev, dt) for t in (wg, wu, wd))
    bg, bu = (None if t is None else t.to(dev, dt) for t in (bg, bu))

    def dense_out(r: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([(act(F.linear(c, wg, bg)) * F.linear(c, wu, bu)) @ wd.T
                              for c in r.split(batch_size)])

    target = dense_out(rows)
    with torch.no_grad():
        pre_scale = max(rms(F.linear(rows[:batch_size], wg, bg)),
                        rms(F.linear(rows[:batch_size], wu, bu)), 1e-12)
    held = None
    if val is not None:
        val = val.to(dev, dt)
        held = (val, dense_out(val))

    layers = (gate, up)
    params = [t.detach().clone().requires_grad_()
              for lay in layers for t in (lay.U, lay.V, lay.bias) if t is not None]
    scales = [pre_scale if p.dim() == 1 else rms(p) for p in params]

    def unpack(ps: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        it = iter(ps)
        return [(next(it), next(it), next(it) if lay.bias is not None else None)
                for lay in layers]

    def block(ps: list[Tensor], xb: Tensor) -> Tensor:
        (gu, gv, gb), (uu, uv, ub) = unpack(ps)
        return (act(F.linear(F.linear(xb, gv), gu, gb)) * F.linear(F.linear(xb, uv), uu, ub)) @ wd.T

    def objective(ps: list[Tensor], on: tuple[Tensor, Tensor] = (rows, target)) -> float:
        r, t = on
        total = 0.0
        with torch.no_grad():
            for c, tc in zip(r.split(batch_size), t.split(batch_size), strict=True):
                total += float((tc - block(ps, c)).double().square().sum())
        return total / r.shape[0]

    select = (rows, target) if held is None else held
    before = objective(params)
    val_before = None if held is None else objective(params, held)
    best_err = before if held is None else val_before
    best_step = 0
    best = [p.detach().clone() for p in params]
    evaluations = 1
    if steps > 0:
        gen = torch.Generator().manual_seed(seed)
        opt, sched = relative_adam(params, scales, lr, steps)
        taken = 0
        while taken < steps:
            for idx in torch.randperm(rows.shape[0], generator=gen).split(batch_size):
                idx = idx.to(dev)
                loss = (target[idx] - block(params, rows[idx])).square().sum(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                taken += 1
                if taken % every == 0 or taken == steps:
                    err = objective(params, select)
                    evaluations += 1
                    if err < best_err:  # NaN never compares lower
                        best_err, best_step = err, taken
                        best = [p.detach().clone() for p in params]
                if taken >= steps:
                    break
    if best_step > 0:
        if not all(bool(torch.isfinite(p).all()) for p in best):
            raise FloatingPointError("the gated FFN fit produced non-finite factors")
        with torch.no_grad():
            for lay, (u, v, b) in zip(layers, unpack(best), strict=True):
                lay.U.copy_(u)
                lay.V.copy_(v)
                if b is not None:
                    lay.bias.copy_(b)
    power = float(target.double().square().sum(-1).mean())
    stats: dict[str, float | int] = {
        "before": before, "after": best_err if held is None else objective(best),
        "target": power, "best_step": best_step, "steps": steps, "evaluations": evaluations}
    if held is not None:
        stats.update(val_before=val_before, val_after=best_err)
    return stats
