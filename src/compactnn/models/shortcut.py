"""A one-hidden-layer non-overlapping convolutional network, with or without an
identity shortcut, and its population loss against a teacher of the same form under
standard Gaussian inputs, in closed form.

The input ``Z`` holds ``k`` patches of dimension ``p`` (``Z[j]`` is patch ``j``); one
filter ``w`` in ``R^p`` is applied to every patch, a ReLU follows, and output weights
``a`` in ``R^k`` combine the patches:

    plain:     f(Z) = sum_j a_j relu(w . Z_j)
    shortcut:  f(Z) = sum_j a_j relu(w . Z_j) + sum_j w . Z_j

The shortcut carries the filter's linear response past the ReLU to the output (the
identity path of a residual block). The teacher is the same network at ``(w*, a*)``.

With the patches i.i.d. ``N(0, I_p)``, every term of ``E[f(Z; u, b) f(Z; v, c)]`` has a
closed form (``t`` is the angle between ``u`` and ``v``):

- ``E[relu(u.z) relu(v.z)] = (|u||v| sin t + (pi - t) u.v) / (2 pi)`` (same patch),
- ``E[relu(u.z)] E[relu(v.z')] = |u||v| / (2 pi)`` (different patches),
- ``E[relu(u.z) v.z] = u.v / 2`` and ``E[(u.z)(v.z)] = u.v``.

:func:`population_loss` is ``E[(f(Z; w, a) - f(Z; w*, a*))^2] / 2`` and
:func:`population_grad` its gradient, with the ReLU's derivative taken as 0 at 0 (the
convention of autograd), so at ``w = 0`` only the shortcut moves ``w``. Everything is
batched over leading dimensions, to run many initializations at once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_int, check_tensor

__all__ = ["ShortcutConvNet", "population_grad", "population_loss"]


class ShortcutConvNet(nn.Module):
    """``f(Z) = a . relu(Z w) (+ (Z w).sum())``; ``Z`` of shape ``(batch, k, p)``."""

    def __init__(self, patches: int, patch_dim: int, shortcut: bool = True) -> None:
        super().__init__()
        self.patches = check_int("patches", patches, 1)
        self.patch_dim = check_int("patch_dim", patch_dim, 1)
        self.shortcut = check_bool("shortcut", shortcut)
        self.w = nn.Parameter(torch.zeros(patch_dim))
        self.a = nn.Parameter(torch.zeros(patches))

    def forward(self, z: Tensor) -> Tensor:
        check_tensor("z", z, shape=(None, self.patches, self.patch_dim), floating=True,
                     finite=False)
        h = z @ self.w
        out = torch.relu(h) @ self.a
        return out + h.sum(-1) if self.shortcut else out


def _relu_pair(u: Tensor, v: Tensor) -> Tensor:
    """``E[relu(u.z) relu(v.z)]`` for ``z ~ N(0, I)`` (batched over leading dims)."""
    nu, nv = u.norm(dim=-1), v.norm(dim=-1)
    dot = (u * v).sum(-1)
    prod = nu * nv
    cos = torch.where(prod > 0, dot / prod.clamp_min(1e-300), torch.ones_like(prod))
    t = torch.arccos(cos.clamp(-1.0, 1.0))
    return (prod * torch.sin(t) + (math.pi - t) * dot) / (2 * math.pi)


def _moment(u: Tensor, b: Tensor, v: Tensor, c: Tensor, s: float) -> Tensor:
    """``E[f(Z; u, b) f(Z; v, c)]`` with shortcut weight ``s`` (0 or 1)."""
    k = b.shape[-1]
    # E[relu(u.z)^2] = |u|^2/2 exactly (the angle formula's arccos has no derivative there)
    same = (u * u).sum(-1) / 2 if u is v else _relu_pair(u, v)
    cross = u.norm(dim=-1) * v.norm(dim=-1) / (2 * math.pi)
    sb, sc = b.sum(-1), c.sum(-1)
    dot = (u * v).sum(-1)
    relu_part = (same - cross) * (b * c).sum(-1) + cross * sb * sc
    return relu_part + s * (sb + sc) * dot / 2 + s * s * k * dot


def _check(w, a, w_star, a_star):
    check_tensor("w", w, floating=True)
    check_tensor("a", a, floating=True)
    check_tensor("w_star", w_star, ndim=1, floating=True)
    check_tensor("a_star", a_star, ndim=1, floating=True)
    if w.shape[-1] != w_star.shape[0] or a.shape[-1] != a_star.shape[0] \
            or w.shape[:-1] != a.shape[:-1]:
        raise ValueError(f"shapes do not match: w {tuple(w.shape)}, a {tuple(a.shape)}, "
                         f"w_star {tuple(w_star.shape)}, a_star {tuple(a_star.shape)} "
                         "(want w (..., p), a (..., k), w_star (p,), a_star (k,))")


def population_loss(w: Tensor, a: Tensor, w_star: Tensor, a_star: Tensor,
                    shortcut: bool) -> Tensor:
    """``E[(f(Z; w, a) - f(Z; w*, a*))^2] / 2`` over i.i.d. ``N(0, I_p)`` patches;
    ``w`` of shape ``(..., p)``, ``a`` of shape ``(..., k)``; returns shape ``(...)``."""
    _check(w, a, w_star, a_star)
    s = 1.0 if check_bool("shortcut", shortcut) else 0.0
    ws, as_ = w_star.expand_as(w), a_star.expand_as(a)
    return (_moment(w, a, w, a, s) - 2 * _moment(w, a, ws, as_, s)
            + _moment(ws, as_, ws, as_, s)) / 2


def _relu_pair_grad(u: Tensor, v: Tensor) -> Tensor:
    """``d/du E[relu(u.z) relu(v.z)] = E[1{u.z > 0} z relu(v.z)]``; 0 at ``u = 0``."""
    nu, nv = u.norm(dim=-1, keepdim=True), v.norm(dim=-1, keepdim=True)
    dot = (u * v).sum(-1, keepdim=True)
    prod = nu * nv
    cos = torch.where(prod > 0, dot / prod.clamp_min(1e-300), torch.ones_like(prod))
    t = torch.arccos(cos.clamp(-1.0, 1.0))
    unit = torch.where(nu > 0, u / nu.clamp_min(1e-300), torch.zeros_like(u))
    g = ((math.pi - t) * v + nv * torch.sin(t) * unit) / (2 * math.pi)
    return torch.where(nu > 0, g, torch.zeros_like(g))


def population_grad(w: Tensor, a: Tensor, w_star: Tensor, a_star: Tensor,
                    shortcut: bool) -> tuple[Tensor, Tensor]:
    """The gradient ``(dL/dw, dL/da)`` of :func:`population_loss` (ReLU derivative 0 at
    0, so ``dL/dw`` at ``w = 0`` comes from the shortcut alone)."""
    _check(w, a, w_star, a_star)
    s = 1.0 if check_bool("shortcut", shortcut) else 0.0
    k = a.shape[-1]
    ws, as_ = w_star.expand_as(w), a_star.expand_as(a)
    nw = w.norm(dim=-1, keepdim=True)
    nws = ws.norm(dim=-1, keepdim=True)
    unit = torch.where(nw > 0, w / nw.clamp_min(1e-300), torch.zeros_like(w))
    sa, sas = a.sum(-1, keepdim=True), as_.sum(-1, keepdim=True)
    aa = (a * a).sum(-1, keepdim=True)
    aas = (a * as_).sum(-1, keepdim=True)
    # E[f(w,a)^2]/2: relu terms (|w|^2/2 - |w|^2/2pi) a.a + |w|^2/2pi (1.a)^2
    gw = ((0.5 - 1 / (2 * math.pi)) * aa + sa * sa / (2 * math.pi)) * w
    gw = gw + s * sa * w + s * s * k * w
    # -E[f(w,a) f(w*,a*)]
    cross_grad = nws * unit / (2 * math.pi)  # d/dw |w||w*| / 2pi
    gw = gw - ((_relu_pair_grad(w, ws) - cross_grad) * aas + cross_grad * sa * sas)
    # (w.w*)(1.a)/2 = E[a.relu(Z w) 1.Z w*] is linear in w, but its sample gradient passes
    # through the ReLU's derivative and so vanishes at w = 0, as every ReLU term does there
    on = (nw > 0).to(w.dtype)
    gw = gw - s * (on * sa + sas) * ws / 2 - s * s * k * ws
    same_ww = (w * w).sum(-1, keepdim=True) / 2
    cross_ww = nw * nw / (2 * math.pi)
    same_ws = _relu_pair(w, ws).unsqueeze(-1)
    cross_ws = nw * nws / (2 * math.pi)
    dot_ww, dot_ws = (w * w).sum(-1, keepdim=True), (w * ws).sum(-1, keepdim=True)
    ga = (same_ww - cross_ww) * a + cross_ww * sa + s * dot_ww / 2
    ga = ga - ((same_ws - cross_ws) * as_ + cross_ws * sas + s * dot_ws / 2)
    return gw, ga
