"""What a data-aware initializer is fitted on: the calibration inputs of one
layer as rows of its matrix view, the activation that follows the layer, and
the eval-mode normalization between them.

When a trained network is compressed, the objective of [LR-NL] is taken over
the activations that really reach each layer; :class:`LayerInputs` turns
whatever reaches the layer (a tensor, a list of batches, a ``DataLoader``, or
the inputs captured inside a model) into those rows, streamed and checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_int
from compactnn.lowrank import LowRankLayer

__all__ = [
    "ACTIVATIONS",
    "FirstPassCache",
    "LayerInputs",
    "activation_fn",
    "check_activation",
    "first_tensor",
    "is_foldable_norm",
    "layer_inputs",
    "norm_affine",
]


def _identity(z: Tensor) -> Tensor:
    return z


#: Activations the data-aware objective supports, by name.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": _identity,
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def check_activation(activation: str | None) -> str:
    """Validate an activation name (``None`` means ``"identity"``)."""
    if activation is None:
        return "identity"
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                         f"got activation={activation!r}")
    return activation


def activation_fn(activation: str | None) -> Callable[[Tensor], Tensor]:
    """The function of a supported activation name."""
    return ACTIVATIONS[check_activation(activation)]


def first_tensor(item: Any, what: str) -> Tensor:
    """``item`` itself, or the first item of a tuple/list batch, as a tensor."""
    if isinstance(item, tuple | list):
        if not item:
            raise ValueError(f"{what}: got an empty tuple/list batch")
        item = item[0]
    if not isinstance(item, Tensor):
        raise TypeError(f"{what}: batches must be tensors (or tuples/lists whose first "
                        f"item is a tensor), got {type(item).__name__}")
    return item


class FirstPassCache:
    """A re-iterable of tensors produced by ``_stream()``: the first full pass is
    kept when it fits in ``cache_bytes`` and replayed on later passes; beyond that
    size every pass streams again (memory stays bounded). Solvers make many
    passes; this spares them redoing the unfolding, checks and model runs."""

    cache_bytes: int
    _cache: list[Tensor] | None = None

    def _stream(self) -> Iterator[Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Tensor]:
        if self._cache is not None:
            yield from self._cache
            return
        kept: list[Tensor] | None = []
        size = 0
        for x in self._stream():
            if kept is not None:
                size += x.numel() * x.element_size()
                if size <= self.cache_bytes:
                    kept.append(x)
                else:
                    kept = None
            yield x
        self._cache = kept  # only reached after a full pass


class LayerInputs(FirstPassCache):
    """Re-iterable view of calibration inputs as matrix rows ``(k, n)`` of a layer's
    matrix view (:meth:`LowRankLayer.input_rows`: the input features of a Linear,
    leading dims flattened; the unfolded patches of a channel-scheme convolution),
    with at most ``max_patches`` rows per batch (a random subsample, the same on
    every pass, to bound memory).

    ``inputs`` is a tensor (split into batches of about ``batch_size`` rows) or an
    iterable of batches (tensors, or tuples/lists whose first item is the tensor).
    A one-shot iterator is consumed once and its batches kept in memory; a
    re-iterable (a list, a ``DataLoader``) is streamed on every pass. Every batch
    is checked: floating, finite values and the right feature size, else a
    ``TypeError``/``ValueError``. The rows of the first full pass are kept when
    they fit in ``cache_bytes``.
    """

    def __init__(self, layer: LowRankLayer, inputs: Tensor | Iterable[Any], *,
                 batch_size: int = 4096, max_patches: int = 4096, seed: int = 0,
                 cache_bytes: int = 1 << 28) -> None:
        if not isinstance(layer, LowRankLayer):
            raise TypeError("data-aware initialization supports low-rank layers "
                            f"(LowRankLinear, LowRankConv2d), got {type(layer).__name__}")
        layer.check_input_rows()
        if isinstance(inputs, Mapping) or isinstance(inputs, str | bytes):
            raise TypeError(f"inputs must be a tensor or an iterable of batches, got "
                            f"{type(inputs).__name__}")
        if not isinstance(inputs, Tensor):
            if not isinstance(inputs, Iterable):
                raise TypeError(f"inputs must be a tensor or an iterable of batches, got "
                                f"{type(inputs).__name__}")
            if iter(inputs) is inputs:  # a one-shot iterator: keep its batches
                inputs = list(inputs)
        self.layer = layer
        self.inputs = inputs
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.max_patches = check_int("max_patches", max_patches, 1)
        self.seed = check_int("seed", seed)
        self.cache_bytes = check_int("cache_bytes", cache_bytes, 0)

    def _raw(self) -> Iterator[Tensor]:
        if isinstance(self.inputs, Tensor):
            x = self.inputs
            if x.dim() == 0 or x.shape[0] == 0:
                return
            yield from x.split(max(1, self.batch_size // self.layer.rows_per_sample(x)))
        else:
            for item in self.inputs:
                yield first_tensor(item, "inputs")

    def _stream(self) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        for i, x in enumerate(self._raw()):
            if not torch.is_floating_point(x):
                raise TypeError(f"inputs batch {i} has dtype {x.dtype}; expected floats")
            if not torch.isfinite(x).all():
                raise ValueError(f"inputs batch {i} contains non-finite values (NaN or inf)")
            rows = self.layer.input_rows(x)
            if rows.shape[0] > self.max_patches:
                idx = torch.randperm(rows.shape[0], generator=gen)[: self.max_patches]
                rows = rows[idx.to(rows.device)]
            if rows.shape[0]:
                yield rows


def layer_inputs(layer: LowRankLayer, inputs: Tensor | Iterable[Any] | LayerInputs,
                 **kwargs: Any) -> LayerInputs:
    """``inputs`` as a :class:`LayerInputs` of ``layer`` (unchanged if it already is)."""
    if isinstance(inputs, LayerInputs):
        return inputs
    return LayerInputs(layer, inputs, **kwargs)


# -- the normalization between a layer and its activation ------------------------------
def is_foldable_norm(mod: nn.Module) -> bool:
    """A BatchNorm that is a fixed per-channel affine map in eval mode."""
    return isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.track_running_stats \
        and mod.running_mean is not None and mod.running_var is not None


def norm_affine(norm: nn.Module | tuple[Tensor, Tensor], features: int
                ) -> tuple[Tensor, Tensor]:
    """``(a, d)`` with ``norm(z) = a * z + d`` per channel: an eval-mode BatchNorm
    (``a = gamma / sqrt(running_var + eps)``, ``d = beta - a * running_mean``) or a
    ``(scale, shift)`` pair, in float64, checked against ``features`` channels."""
    if isinstance(norm, nn.Module):
        if not is_foldable_norm(norm):
            raise ValueError(f"post_norm must be a BatchNorm with running statistics, got "
                             f"{type(norm).__name__}")
        var, mean = norm.running_var.detach().double(), norm.running_mean.detach().double()
        a = 1.0 / (var + norm.eps).sqrt()
        d = -a * mean
        if norm.weight is not None:
            a = a * norm.weight.detach().double()
            d = d * norm.weight.detach().double()
        if norm.bias is not None:
            d = d + norm.bias.detach().double()
    elif isinstance(norm, tuple | list) and len(norm) == 2 and all(
            isinstance(t, Tensor) for t in norm):
        a, d = (t.detach().double().reshape(-1) for t in norm)
    else:
        raise TypeError("post_norm must be a BatchNorm module or a (scale, shift) pair of "
                        f"tensors, got {type(norm).__name__}")
    if a.numel() != features or d.numel() != features:
        raise ValueError(f"post_norm has {a.numel()} channels, the layer has {features} "
                         "outputs")
    if not (torch.isfinite(a).all() and torch.isfinite(d).all()):
        raise ValueError("post_norm's scale or shift is not finite")
    return a, d
