"""``LowRankConv2d``: a drop-in ``nn.Conv2d`` computed as two thin convolutions.

Two factorization schemes (METHODS.md, Sec. 1):

* ``"channel"``: a ``kh x kw`` convolution from ``in`` to ``r`` channels (it
  carries stride, padding and dilation), then a ``1 x 1`` convolution from
  ``r`` to ``out``. The kernel is seen as an ``out x (in*kh*kw)`` matrix.
* ``"spatial"`` [FNL, after Jaderberg et al. 2014]: the kernel seen as an
  ``(out*kh) x (in*kw)`` matrix; a ``1 x kw`` convolution to ``r`` channels
  (horizontal stride, padding, dilation), then a ``kh x 1`` convolution to
  ``out`` (vertical ones).

With ``groups > 1`` both convolutions are grouped, so each group is factorized
on its own (``r`` must be a multiple of ``groups``). Every padding mode of
``nn.Conv2d`` is honoured by both schemes: each mode pads each spatial axis
independently, so padding the input horizontally before the first convolution
and its output vertically before the second is the same as padding the input
on both axes at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from compactnn.lowrank.base import LowRankLayer, resolve_rank

__all__ = ["LowRankConv2d", "CONV_SCHEMES"]

CONV_SCHEMES = ("channel", "spatial")
_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
              "circular": "circular"}


def _explicit_padding(padding: str | tuple[int, int], kernel: tuple[int, int],
                      dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding of a 2-D convolution, as PyTorch
    resolves it (``'same'`` puts the odd pixel at the bottom/right)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]
        return tuple(out)  # type: ignore[return-value]
    ph, pw = padding
    return (ph, ph, pw, pw)


class LowRankConv2d(LowRankLayer):
    """A rank-``r`` factorized ``nn.Conv2d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
        bias, padding_mode, device, dtype: as ``nn.Conv2d``.
        rank: an int (a multiple of ``groups``, at most the full rank) or a float in
            ``(0, 1]`` meaning that fraction of the full rank.
        scheme: ``"channel"`` or ``"spatial"`` (see the module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int | float,
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        scheme: str = "channel",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {name}={value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} "
                             f"must be divisible by groups={groups}")
        if scheme not in CONV_SCHEMES:
            raise ValueError(f"scheme must be one of {CONV_SCHEMES}, got scheme={scheme!r}")
        if padding_mode not in _PAD_MODES:
            raise ValueError(f"padding_mode must be one of {tuple(_PAD_MODES)}, "
                             f"got padding_mode={padding_mode!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        if min(self.kernel_size + self.stride + self.dilation) < 1:
            raise ValueError("kernel_size, stride and dilation must be positive, got "
                             f"{self.kernel_size}, {self.stride}, {self.dilation}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions "
                                 f"(stride={self.stride}), as in nn.Conv2d")
            self.padding: str | tuple[int, int] = padding
        else:
            self.padding = _pair(padding)
            if min(self.padding) < 0:
                raise ValueError(f"padding must be non-negative, got padding={padding!r}")
        self.padding_mode = padding_mode
        self.scheme = scheme

        g, m, n = self.matrix_shape
        self.rank = resolve_rank(rank, g * min(m, n), multiple_of=groups)
        r_g = self.rank // groups
        kh, kw = self.kernel_size
        kw_ = {"device": device, "dtype": dtype}
        in_g = in_channels // groups
        if scheme == "channel":
            self.V = nn.Parameter(torch.empty(self.rank, in_g, kh, kw, **kw_))
            self.U = nn.Parameter(torch.empty(out_channels, r_g, 1, 1, **kw_))
        else:
            self.V = nn.Parameter(torch.empty(self.rank, in_g, 1, kw, **kw_))
            self.U = nn.Parameter(torch.empty(out_channels, r_g, kh, 1, **kw_))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **kw_))
        else:
            self.register_parameter("bias", None)

        top, bottom, left, right = _explicit_padding(self.padding, self.kernel_size,
                                                     self.dilation)
        self._pad_hw = (top, bottom, left, right)
        # Zero padding that is symmetric per axis goes into the convolution itself.
        self._pad_in_conv = padding_mode == "zeros" and top == bottom and left == right
        self.reset_parameters()

    # -- forward -----------------------------------------------------------
    def _pad(self, x: Tensor, vertical: bool, horizontal: bool) -> Tensor:
        top, bottom, left, right = self._pad_hw
        pad = (left if horizontal else 0, right if horizontal else 0,
               top if vertical else 0, bottom if vertical else 0)
        if not any(pad):
            return x
        return F.pad(x, pad, mode=_PAD_MODES[self.padding_mode])

    def forward(self, x: Tensor) -> Tensor:
        (sh, sw), (dh, dw), g = self.stride, self.dilation, self.groups
        top, _, left, _ = self._pad_hw
        inner = self._pad_in_conv
        if self.scheme == "channel":
            if not inner:
                x = self._pad(x, True, True)
            pad = (top, left) if inner else (0, 0)
            z = F.conv2d(x, self.V, None, self.stride, pad, self.dilation, g)
            return F.conv2d(z, self.U, self.bias, 1, 0, 1, g)
        if not inner:
            x = self._pad(x, False, True)
        z = F.conv2d(x, self.V, None, (1, sw), (0, left if inner else 0), (1, dw), g)
        if not inner:
            z = self._pad(z, True, False)
        return F.conv2d(z, self.U, self.bias, (sh, 1), (top if inner else 0, 0), (dh, 1), g)

    # -- matrix view ---------------------------------------------------------
    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        g = self.groups
        kh, kw = self.kernel_size
        out_g, in_g = self.out_channels // g, self.in_channels // g
        if self.scheme == "channel":
            return (g, out_g, in_g * kh * kw)
        return (g, out_g * kh, in_g * kw)

    def factor_matrices(self) -> tuple[Tensor, Tensor]:
        g, m, n = self.matrix_shape
        r_g = self.rank // g
        v = self.V.reshape(g, r_g, n)
        if self.scheme == "channel":
            return self.U.reshape(g, m, r_g), v
        kh = self.kernel_size[0]
        u = self.U.reshape(g, m // kh, r_g, kh).transpose(2, 3).reshape(g, m, r_g)
        return u, v

    @torch.no_grad()
    def set_factor_matrices(self, u: Tensor, v: Tensor) -> None:
        g, m, _ = self.matrix_shape
        r_g = self.rank // g
        self.V.copy_(v.reshape(self.V.shape))
        if self.scheme == "channel":
            self.U.copy_(u.reshape(self.U.shape))
        else:
            kh = self.kernel_size[0]
            self.U.copy_(u.reshape(g, m // kh, kh, r_g).transpose(2, 3).reshape(self.U.shape))

    def weight_to_matrix(self, weight: Tensor) -> Tensor:
        g, m, n = self.matrix_shape
        if self.scheme == "channel":
            return weight.reshape(g, m, n)
        kh, kw = self.kernel_size
        w = weight.reshape(g, self.out_channels // g, self.in_channels // g, kh, kw)
        return w.permute(0, 1, 3, 2, 4).reshape(g, m, n)

    def matrix_to_weight(self, matrix: Tensor) -> Tensor:
        kh, kw = self.kernel_size
        g, in_g = self.groups, self.in_channels // self.groups
        shape = (self.out_channels, in_g, kh, kw)
        if self.scheme == "channel":
            return matrix.reshape(shape)
        w = matrix.reshape(g, self.out_channels // g, kh, in_g, kw)
        return w.permute(0, 1, 3, 2, 4).reshape(shape)

    def dense_fan_in(self) -> int:
        kh, kw = self.kernel_size
        return self.in_channels // self.groups * kh * kw

    def dense_init_weight(self) -> Tensor:
        kh, kw = self.kernel_size
        w = torch.empty(self.out_channels, self.in_channels // self.groups, kh, kw,
                        device=self.U.device, dtype=self.U.dtype)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        return w

    # -- conversion ------------------------------------------------------------
    def conv_kwargs(self) -> dict[str, Any]:
        """The ``nn.Conv2d`` constructor arguments of the equivalent dense layer."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups, bias=self.bias is not None,
                    padding_mode=self.padding_mode)

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        rank: int | float,
        init: str | Callable[..., Any] = "spectral",
        scheme: str = "channel",
        **init_kwargs: Any,
    ) -> LowRankConv2d:
        """Low-rank copy of an ``nn.Conv2d`` with every constructor argument kept,
        bias copied and factors set by ``init`` (see ``LowRankLinear.from_dense``)."""
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"LowRankConv2d.from_dense expects nn.Conv2d, got {type(module)}")
        w = module.weight
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, rank,
                    stride=module.stride, padding=module.padding, dilation=module.dilation,
                    groups=module.groups, bias=module.bias is not None,
                    padding_mode=module.padding_mode, scheme=scheme,
                    device=w.device, dtype=w.dtype)
        layer._init_from(module, init, init_kwargs)
        return layer

    def to_dense(self) -> nn.Conv2d:
        dense = nn.Conv2d(**self.conv_kwargs(), device=self.U.device, dtype=self.U.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.dense_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"rank={self.rank}, scheme={self.scheme!r}, stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s
