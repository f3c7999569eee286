"""What every matrix-view initializer shares: the dense target it is given
(checked, as the layer's ``(G, m, n)`` matrix view), the calibration moments of
a data-aware one (from ``inputs=`` or precomputed ``moments=``), and writing the
solved factors back into the layer (checked finite first, so a failed solve
leaves the layer as it was)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from compactnn._checks import check_module, check_tensor
from compactnn.init.inputs import layer_inputs
from compactnn.init.moments import InputMoments, check_moments, input_moments
from compactnn.lowrank.base import LowRankLayer

__all__ = ["dense_target", "calibration_rows", "layer_moments", "apply_factors"]


def dense_target(layer: LowRankLayer, weight: Tensor | None,
                 bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The dense weight as the layer's matrix view ``(G, m, n)`` and the dense bias
    flattened (or None), checked. Without ``weight``, a fresh draw of the dense
    layer's default init with the layer's current bias (initialization from scratch)."""
    check_module("layer", layer, LowRankLayer)
    if weight is None:
        weight = layer.dense_init_weight()
        if bias is None and layer.bias is not None:
            bias = layer.bias.detach().clone()
    w = layer.weight_to_matrix(layer.check_dense_weight(weight).detach())
    b = None
    if bias is not None:
        if layer.bias is None:
            raise ValueError("a dense bias was given but the low-rank layer has bias=False")
        b = check_tensor("bias", bias, shape=tuple(layer.bias.shape), floating=True)
        b = b.detach().reshape(-1)
    return w, b


def calibration_rows(name: str, layer: LowRankLayer, inputs: Tensor | Iterable[Any] | None,
                     *, batch_size: int, max_patches: int, seed: int) -> Any:
    """``inputs`` as the layer's calibration rows; a data-aware ``init=name``
    without them is a ``ValueError`` saying what to pass."""
    if inputs is None:
        raise ValueError(f"init={name!r} is data-aware and needs calibration inputs=... "
                         "(a tensor or an iterable of batches of the layer's inputs)")
    return layer_inputs(layer, inputs, batch_size=batch_size, max_patches=max_patches,
                        seed=seed)


def layer_moments(name: str, layer: LowRankLayer, inputs: Tensor | Iterable[Any] | None,
                  moments: InputMoments | None, *, batch_size: int, max_patches: int,
                  seed: int) -> InputMoments:
    """The calibration moments of ``layer``'s inputs: ``moments`` as given (checked
    against the layer's input features; statistics shared between layers that see
    the same input are computed once) or one streamed pass over ``inputs``.
    Exactly one of the two is needed."""
    check_module("layer", layer, LowRankLayer)
    if moments is not None:
        if inputs is not None:
            raise ValueError(f"init={name!r}: give calibration inputs= or moments=, not both")
        layer.check_input_rows()
        return check_moments(moments, layer.matrix_shape[2])
    if inputs is None:
        raise ValueError(f"init={name!r} is data-aware and needs calibration inputs=... "
                         "(a tensor or an iterable of batches of the layer's inputs) or "
                         "precomputed moments=...")
    return input_moments(calibration_rows(name, layer, inputs, batch_size=batch_size,
                                          max_patches=max_patches, seed=seed))


@torch.no_grad()
def apply_factors(layer: LowRankLayer, u: Tensor, v: Tensor, c: Tensor | None) -> None:
    """Write factors ``(G*m, r)``-shaped ``u`` and ``(r, n)``-shaped ``v`` (any
    layout reshaping to the matrix view) and, when given and the layer has one,
    the bias ``c``. Non-finite factors raise before anything is written."""
    g, m, _ = layer.matrix_shape
    r_g = layer.rank // g
    u = u.reshape(g, m, r_g).to(layer.U.dtype)
    v = v.reshape(g, r_g, -1).to(layer.V.dtype)
    if not (torch.isfinite(u).all() and torch.isfinite(v).all()):
        raise FloatingPointError("initialization produced non-finite factors")
    if c is not None and layer.bias is not None:
        c = c.reshape(layer.bias.shape).to(layer.bias.dtype)
        if not torch.isfinite(c).all():
            raise FloatingPointError("initialization produced a non-finite bias")
    layer.set_factor_matrices(u, v)
    if c is not None and layer.bias is not None:
        layer.bias.copy_(c)
