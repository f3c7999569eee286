"""``LowRankConv2d``: a drop-in ``nn.Conv2d`` computed as two thin convolutions.

Two factorization schemes:

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

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from compactnn._checks import check_bool, check_choice, check_int
from compactnn.lowrank.base import LowRankLayer, resolve_rank

__all__ = ["LowRankConv2d", "CONV_SCHEMES", "conv_matrix_shape", "conv_weight_to_matrix",
           "conv_matrix_to_weight"]

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


def conv_matrix_shape(out_channels: int, in_channels: int, kernel_size: tuple[int, int],
                      groups: int, scheme: str) -> tuple[int, int, int]:
    """``(G, m, n)`` of a convolution kernel seen as ``G`` matrices: ``out/G x
    (in/G * kh * kw)`` (``"channel"``) or ``(out/G * kh) x (in/G * kw)``
    (``"spatial"``)."""
    kh, kw = kernel_size
    out_g, in_g = out_channels // groups, in_channels // groups
    if scheme == "channel":
        return (groups, out_g, in_g * kh * kw)
    return (groups, out_g * kh, in_g * kw)


def conv_weight_to_matrix(weight: Tensor, groups: int, scheme: str) -> Tensor:
    """A convolution kernel ``(out, in/G, kh, kw)`` -> its ``(G, m, n)`` matrix view."""
    out, in_g, kh, kw = weight.shape
    g, m, n = conv_matrix_shape(out, in_g * groups, (kh, kw), groups, scheme)
    if scheme == "channel":
        return weight.reshape(g, m, n)
    w = weight.reshape(g, out // g, in_g, kh, kw)
    return w.permute(0, 1, 3, 2, 4).reshape(g, m, n)


def conv_matrix_to_weight(matrix: Tensor, weight_shape: tuple[int, int, int, int],
                          scheme: str) -> Tensor:
    """Inverse of :func:`conv_weight_to_matrix` for a kernel of ``weight_shape``."""
    out, in_g, kh, kw = weight_shape
    if scheme == "channel":
        return matrix.reshape(weight_shape)
    g = matrix.shape[0]
    w = matrix.reshape(g, out // g, kh, in_g, kw)
    return w.permute(0, 1, 3, 2, 4).reshape(weight_shape)


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
            check_int(name, value, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} "
                             f"must be divisible by groups={groups}")
        check_choice("scheme", scheme, CONV_SCHEMES)
        check_choice("padding_mode", padding_mode, tuple(_PAD_MODES))
        check_bool("bias", bias)
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
        return conv_matrix_shape(self.out_channels, self.in_channels, self.kernel_size,
                                 self.groups, self.scheme)

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
        return conv_weight_to_matrix(weight.reshape(self.dense_weight_shape), self.groups,
                                     self.scheme)

    def matrix_to_weight(self, matrix: Tensor) -> Tensor:
        return conv_matrix_to_weight(matrix, self.dense_weight_shape, self.scheme)

    @property
    def dense_weight_shape(self) -> tuple[int, int, int, int]:
        kh, kw = self.kernel_size
        return (self.out_channels, self.in_channels // self.groups, kh, kw)

    def dense_fan_in(self) -> int:
        kh, kw = self.kernel_size
        return self.in_channels // self.groups * kh * kw

    # -- calibration rows ----------------------------------------------------
    @property
    def rows_are_outputs(self) -> bool:
        return self.scheme == "channel"

    def input_rows_problem(self) -> str | None:
        bad = []
        if self.scheme != "channel":
            bad.append(f"scheme={self.scheme!r} (its matrix rows are not output channels)")
        if self.groups != 1:
            bad.append(f"groups={self.groups}")
        return ", ".join(bad) + "; use scheme='channel' and groups=1" if bad else None

    def input_rows(self, x: Tensor) -> Tensor:
        """The unfolded ``in * kh * kw`` patches of ``x`` (padded as the layer pads),
        one row per output position."""
        self.check_input_rows()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"inputs of shape {tuple(x.shape)} do not fit the convolution: "
                             f"expected (N, {self.in_channels}, H, W)")
        x = self._pad(x, True, True)
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        if x.shape[-2] < dh * (kh - 1) + 1 or x.shape[-1] < dw * (kw - 1) + 1:
            raise ValueError(f"inputs of spatial size {tuple(x.shape[-2:])} (after padding) are "
                             f"smaller than the kernel {self.kernel_size}")
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, stride=self.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])

    def rows_per_sample(self, x: Tensor) -> int:
        return x.shape[-2] * x.shape[-1] if x.dim() == 4 else 1

    def config(self) -> dict[str, Any]:
        return {**self.dense_kwargs(), "rank": self.rank, "scheme": self.scheme}

    # -- conversion ------------------------------------------------------------
    dense_type = nn.Conv2d

    def dense_kwargs(self) -> dict[str, Any]:
        """The ``nn.Conv2d`` constructor arguments of the equivalent dense layer."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    dilation=self.dilation, groups=self.groups, bias=self.bias is not None,
                    padding_mode=self.padding_mode)

    conv_kwargs = dense_kwargs

    @classmethod
    def dense_structure(cls, module: nn.Module) -> dict[str, Any]:
        return dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    kernel_size=module.kernel_size, stride=module.stride,
                    padding=module.padding, dilation=module.dilation, groups=module.groups,
                    bias=module.bias is not None, padding_mode=module.padding_mode)

    @classmethod
    def from_dense(cls, module: nn.Module, rank: int | float,
                   init: str | Callable[..., Any] = "spectral", scheme: str = "channel",
                   **init_kwargs: Any) -> LowRankConv2d:
        """Low-rank copy of an ``nn.Conv2d`` (see :meth:`LowRankLayer.from_dense`),
        factorized by ``scheme``."""
        return cls._from_dense(module, rank, init, init_kwargs, scheme=scheme)

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
