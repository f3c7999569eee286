"""Fixed sparse connectivity: a linear layer whose weight is multiplied by a constant
boolean mask in every forward pass, and the mask families compared at an equal number
of nonzero weights.

:class:`MaskedLinear` computes ``x (W * M)^T + b``. The gradient of ``W * M`` with
respect to ``W`` is ``M`` times the upstream gradient, so weights off the mask get
exactly zero gradient; they are also zero in storage (set at construction), so any
optimizer whose update of a zero weight with zero gradient is zero (SGD, momentum,
RMSprop, Adam, weight decay) leaves them at zero. :func:`fixed_masks` collects the masks
as :class:`~compactnn.sparse.masks.SparsityMasks`, so a model's unpruned parameter count
is ``fixed_masks(model).num_params(model)``, the convention of the other baselines.

:class:`FixedSparseLinear` computes the same function with only the connected weights
as parameters (a vector of ``mask.sum()`` values): its parameter count is its number of
connections, and an optimizer's step costs in proportion to the connections, not to
``out_features * in_features``. At 9% density that is most of a small network's step.

Masks over a flattened ``(C, H, W)`` image (``C``-major, as ``Tensor.flatten`` lays it):

- :func:`random_mask`: exactly ``nonzeros`` entries, uniformly at random;
- :func:`local_mask`: ``units`` hidden units per ``kernel x kernel`` patch position
  (stride 1, no padding), each connected to every channel of its patch and nothing
  else: the connectivity of a convolution without its weight sharing;
- :func:`conv_connections`: the nonzeros of an ``nn.Conv2d``'s unrolled matrix on an
  input shape (equal to :func:`local_mask`'s count for the same kernel and units), the
  conv's number of connections, against its far smaller number of distinct weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_bool, check_int, check_module, check_tensor
from compactnn._modules import unwrap
from compactnn.sparse.masks import SparsityMasks

__all__ = ["FixedSparseLinear", "MaskedLinear", "conv_connections", "equal_dense_width",
           "fixed_masks", "local_mask", "random_mask"]


def _check_mask(mask: Tensor) -> None:
    check_tensor("mask", mask, ndim=2)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.numel() == 0:
        raise ValueError(f"mask must not be empty, got shape {tuple(mask.shape)}")


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by the fixed boolean ``mask``
    (``(out_features, in_features)``, ``True`` = connected) in every forward pass.

    Initialization is ``nn.Linear``'s, with each unit's fan-in taken as its number of
    connections (not ``in_features``), so a sparse unit starts with the pre-activation
    scale of a dense unit of the same fan-in."""

    def __init__(self, mask: Tensor, bias: bool = True, device=None, dtype=None) -> None:
        _check_mask(mask)
        check_bool("bias", bias)
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias, device, dtype)
        self.register_buffer("mask", mask.detach().clone().to(self.weight.device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        mask = getattr(self, "mask", None)
        if mask is None:  # called by nn.Linear.__init__ before the mask exists
            return
        fan_in = mask.sum(1, keepdim=True).clamp_min(1).to(self.weight.dtype)
        bound = 1.0 / fan_in.sqrt()
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0).mul_(bound.to(self.weight.device))
            self.weight.masked_fill_(~mask.to(self.weight.device), 0.0)
            if self.bias is not None:
                self.bias.uniform_(-1.0, 1.0).mul_(bound.squeeze(1).to(self.bias.device))

    def _weight_mask(self) -> Tensor:
        """The mask in the weight's dtype, cached: multiplying by a bool mask promotes it
        on every call, about half the cost of the product. The cache is keyed on the
        mask's version counter, so an in-place change (``load_state_dict`` included) or a
        move of the mask or the weight is seen at the next call."""
        mask, w = self.mask, self.weight
        key = (mask._version, mask.data_ptr(), mask.device, w.dtype)
        cached = self.__dict__.get("_mask_cache")
        if cached is None or cached[0] != key:
            cached = (key, mask.to(w.dtype))
            self.__dict__["_mask_cache"] = cached
        return cached[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self._weight_mask(), self.bias)

    def nonzeros(self) -> int:
        """Connections of the mask (the weights that can be nonzero)."""
        return int(self.mask.sum())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonzeros={self.nonzeros()}"


class FixedSparseLinear(nn.Module):
    """A linear layer on the fixed connectivity ``mask`` (``(out_features,
    in_features)``, ``True`` = connected) whose parameters are the connected weights
    only: ``values[i]`` is the weight of the ``i``-th ``True`` entry of ``mask`` in
    row-major order, and :attr:`weight` is the dense ``(out_features, in_features)``
    matrix they fill (zeros elsewhere).

    The same function, gradients and initialization law as :class:`MaskedLinear`
    (``nn.Linear``'s uniform law with each unit's fan-in taken as its connections), so
    ``FixedSparseLinear.from_masked(m)`` continues ``m`` exactly (and :meth:`to_masked`
    goes back); what differs is the storage, hence the optimizer's cost. Loading a state
    with another mask of the same number of connections is allowed and takes effect at
    the next call."""

    def __init__(self, mask: Tensor, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        _check_mask(mask)
        check_bool("bias", bias)
        self.out_features, self.in_features = mask.shape
        mask = mask.detach().to(device=device).clone()
        self.register_buffer("mask", mask)
        factory = {"device": mask.device, "dtype": dtype}
        self.values = nn.Parameter(torch.empty(int(mask.sum()), **factory))
        self.bias = nn.Parameter(torch.empty(self.out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.mask.sum(1).clamp_min(1).to(self.values.dtype)
        bound = 1.0 / fan_in.sqrt()
        rows = self.mask.nonzero(as_tuple=True)[0]
        with torch.no_grad():
            self.values.uniform_(-1.0, 1.0).mul_(bound[rows])
            if self.bias is not None:
                self.bias.uniform_(-1.0, 1.0).mul_(bound)

    @classmethod
    def from_masked(cls, layer: MaskedLinear) -> FixedSparseLinear:
        """The same layer (mask, connected weights, bias) with values as parameters."""
        check_module("layer", layer, MaskedLinear)
        new = cls(layer.mask, layer.bias is not None, dtype=layer.weight.dtype)
        with torch.no_grad():
            new.values.copy_(layer.weight[layer.mask])
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        return new

    def to_masked(self) -> MaskedLinear:
        """The same layer as a :class:`MaskedLinear` (the inverse of :meth:`from_masked`)."""
        dense = MaskedLinear(self.mask, self.bias is not None, dtype=self.values.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def _flat_index(self) -> Tensor:
        """Row-major positions of the connections, cached on the mask's version (a
        loaded or edited mask is seen at the next call)."""
        mask = self.mask
        key = (mask._version, mask.data_ptr(), mask.device)
        cached = self.__dict__.get("_index_cache")
        if cached is None or cached[0] != key:
            index = mask.flatten().nonzero().squeeze(1)
            if index.numel() != self.values.numel():
                raise ValueError(f"mask has {index.numel()} connections but values has "
                                 f"{self.values.numel()}; load a mask and values together")
            cached = (key, index)
            self.__dict__["_index_cache"] = cached
        return cached[1]

    @property
    def weight(self) -> Tensor:
        """The dense ``(out_features, in_features)`` weight (differentiable in values).

        Built afresh whenever autograd may need it; otherwise (a frozen layer, a target
        network, ``torch.no_grad``) reused until the values or the mask change in place,
        are replaced or moved: the key holds their version counters and storage."""
        v, index = self.values, self._flat_index()
        if torch.is_grad_enabled() and v.requires_grad:
            return self._fill(v, index)
        key = (v._version, v.data_ptr(), v.dtype, v.device, index.data_ptr())
        cached = self.__dict__.get("_weight_cache")
        # a caller who edits the returned matrix in place gets a fresh one next time
        if cached is None or cached[0] != key or cached[1]._version != cached[2]:
            w = self._fill(v.detach(), index)
            cached = (key, w, w._version)
            self.__dict__["_weight_cache"] = cached
        return cached[1]

    def _fill(self, values: Tensor, index: Tensor) -> Tensor:
        flat = values.new_zeros(self.out_features * self.in_features)
        flat.index_put_((index,), values)  # in place: no copy of the zeros
        return flat.view(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"input must end in {self.in_features} features, got shape "
                             f"{tuple(x.shape)}")
        return F.linear(x, self.weight, self.bias)

    def nonzeros(self) -> int:
        """Connections of the mask (the number of weight parameters)."""
        return self.values.numel()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nonzeros={self.nonzeros()}")


def fixed_masks(model: nn.Module) -> SparsityMasks:
    """The masks of every :class:`MaskedLinear` in ``model``, by weight name."""
    check_module("model", model)
    inner = unwrap(model)
    return SparsityMasks({f"{n}.weight" if n else "weight": m.mask
                          for n, m in inner.named_modules() if isinstance(m, MaskedLinear)})


def _shape(in_shape) -> tuple[int, int, int]:
    if not isinstance(in_shape, tuple | list) or len(in_shape) != 3:
        raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}")
    return tuple(check_int(f"in_shape[{i}]", v, 1) for i, v in enumerate(in_shape))


def random_mask(out_features: int, in_features: int, nonzeros: int,
                generator: torch.Generator | None = None) -> Tensor:
    """A ``(out_features, in_features)`` mask with exactly ``nonzeros`` connections,
    chosen uniformly among all such masks."""
    check_int("out_features", out_features, 1)
    check_int("in_features", in_features, 1)
    check_int("nonzeros", nonzeros, 0, out_features * in_features)
    flat = torch.zeros(out_features * in_features, dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=generator)[:nonzeros]] = True
    return flat.reshape(out_features, in_features)


def local_mask(in_shape: tuple[int, int, int], kernel: int, units: int = 1) -> Tensor:
    """Units connected to one ``kernel x kernel`` patch each (all channels), ``units``
    per patch position; rows ordered ``(unit, row, column)`` as a conv's output
    flattens. Shape ``(units * Ho * Wo, C * H * W)``, ``Ho = H - kernel + 1``."""
    c, h, w = _shape(in_shape)
    check_int("kernel", kernel, 1, min(h, w))
    check_int("units", units, 1)
    ho, wo = h - kernel + 1, w - kernel + 1
    grid = torch.zeros(ho, wo, c, h, w, dtype=torch.bool)
    for i in range(ho):
        for j in range(wo):
            grid[i, j, :, i:i + kernel, j:j + kernel] = True
    per_position = grid.reshape(ho * wo, c * h * w)
    return per_position.repeat(units, 1)


def conv_connections(conv: nn.Conv2d, in_shape: tuple[int, int, int]) -> int:
    """Nonzeros of ``conv``'s unrolled ``(outputs, inputs)`` matrix on ``in_shape``:
    output positions times ``out_channels`` times the input pixels each one reads
    (padding reads no pixel). Groups and dilation are refused."""
    check_module("conv", conv, nn.Conv2d)
    c, h, w = _shape(in_shape)
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.in_channels != c:
        raise ValueError(f"conv must have groups=1, dilation=1 and {c} input channels, got "
                         f"{conv}")
    if isinstance(conv.padding, str):
        raise ValueError(f"conv padding must be numeric, got {conv.padding!r}")
    ones = torch.ones(1, 1, h, w)
    k = torch.ones(1, 1, *conv.kernel_size)
    reads = F.conv2d(ones, k, stride=conv.stride, padding=conv.padding)
    return int(round(float(reads.sum()))) * c * conv.out_channels


def equal_dense_width(nonzeros: int, in_features: int) -> int:
    """The dense layer width with at most ``nonzeros`` weights (at least 1)."""
    return max(1, math.floor(check_int("nonzeros", nonzeros, 1) / check_int(
        "in_features", in_features, 1)))
