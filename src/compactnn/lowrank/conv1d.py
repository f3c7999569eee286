"""``LowRankConv1d``: a drop-in ``nn.Conv1d`` computed as two thin convolutions, the
layer of audio and sequence models.

The channel scheme of :class:`LowRankConv2d` on a one-dimensional signal: a
``k``-wide convolution from ``in`` to ``r`` channels (it carries stride, padding,
dilation and groups), then a width-1 convolution from ``r`` to ``out``; the kernel
is seen as an ``out x (in*k)`` matrix. It is a :class:`LowRankConv2d` with kernel
``(1, k)`` run on the signal as an image of height 1, so every padding mode, the
initializers and calibration work unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.lowrank.conv import LowRankConv2d, conv_weight_to_matrix

__all__ = ["LowRankConv1d"]


def _single(v: Any, name: str, minimum: int = 1) -> int:
    # checked here so that errors name the 1-D value, not the (1, k) the 2-D layer sees
    if isinstance(v, tuple | list):
        if len(v) != 1:
            raise ValueError(f"{name} of a 1-D convolution must be an int or a 1-tuple, got {v!r}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={v}")
    return v


class LowRankConv1d(LowRankConv2d):
    """A rank-``r`` factorized ``nn.Conv1d`` (channel scheme).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
        bias, padding_mode, device, dtype: as ``nn.Conv1d``.
        rank: an int (a multiple of ``groups``, at most the full rank) or a float in
            ``(0, 1]`` meaning that fraction of the full rank.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        rank: int | float,
        stride: int | tuple[int] = 1,
        padding: str | int | tuple[int] = 0,
        dilation: int | tuple[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        scheme: str = "channel",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if scheme != "channel":
            raise ValueError(f"LowRankConv1d has the channel scheme only, got scheme={scheme!r}")
        pad: str | tuple[int, int] = (padding if isinstance(padding, str)
                                      else (0, _single(padding, "padding", minimum=0)))
        super().__init__(in_channels, out_channels, (1, _single(kernel_size, "kernel_size")),
                         rank, (1, _single(stride, "stride")), pad,
                         (1, _single(dilation, "dilation")), groups, bias, padding_mode,
                         "channel", device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3):
            raise ValueError(f"LowRankConv1d expects (N, C, L) or (C, L) input, got shape "
                             f"{tuple(x.shape)}")
        return super().forward(x.unsqueeze(-2)).squeeze(-2)

    # -- matrix view of the (out, in/G, k) kernel ------------------------------
    @property
    def dense_weight_shape(self) -> tuple[int, int, int]:  # type: ignore[override]
        return (self.out_channels, self.in_channels // self.groups, self.kernel_size[1])

    def weight_to_matrix(self, weight: Tensor) -> Tensor:
        out, in_g, k = self.dense_weight_shape
        return conv_weight_to_matrix(weight.reshape(out, in_g, 1, k), self.groups, "channel")

    def matrix_to_weight(self, matrix: Tensor) -> Tensor:
        return matrix.reshape(self.dense_weight_shape)

    def input_rows(self, x: Tensor) -> Tensor:
        """The unfolded ``in * k`` windows of ``x`` (padded as the layer pads), one row
        per output position."""
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3:
            raise ValueError(f"inputs of shape {tuple(x.shape)} do not fit the convolution: "
                             f"expected (N, {self.in_channels}, L)")
        return super().input_rows(x.unsqueeze(-2))

    def rows_per_sample(self, x: Tensor) -> int:
        return x.shape[-1] if x.dim() == 3 else 1

    def config(self) -> dict[str, Any]:
        return {**self.dense_kwargs(), "rank": self.rank}

    # -- conversion --------------------------------------------------------------
    dense_type = nn.Conv1d

    def dense_kwargs(self) -> dict[str, Any]:
        """The ``nn.Conv1d`` constructor arguments of the equivalent dense layer."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size[1], stride=self.stride[1],
                    padding=self.padding if isinstance(self.padding, str) else self.padding[1],
                    dilation=self.dilation[1], groups=self.groups, bias=self.bias is not None,
                    padding_mode=self.padding_mode)

    conv_kwargs = dense_kwargs

    @classmethod
    def dense_structure(cls, module: nn.Module) -> dict[str, Any]:
        return dict(in_channels=module.in_channels, out_channels=module.out_channels,
                    kernel_size=module.kernel_size[0], stride=module.stride[0],
                    padding=module.padding if isinstance(module.padding, str)
                    else module.padding[0], dilation=module.dilation[0],
                    groups=module.groups, bias=module.bias is not None,
                    padding_mode=module.padding_mode)

    @classmethod
    def from_dense(cls, module: nn.Module, rank: int | float,
                   init: str | Callable[..., Any] = "spectral", scheme: str = "channel",
                   **init_kwargs: Any) -> LowRankConv1d:
        """Low-rank copy of an ``nn.Conv1d`` (see :meth:`LowRankLayer.from_dense`)."""
        return cls._from_dense(module, rank, init, init_kwargs, scheme=scheme)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[1]}, "
             f"rank={self.rank}, stride={self.stride[1]}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding if isinstance(self.padding, str) else self.padding[1]}"
        if self.dilation[1] != 1:
            s += f", dilation={self.dilation[1]}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s
