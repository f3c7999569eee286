"""``LowRankLinear``: a drop-in ``nn.Linear`` whose weight is ``U @ V``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_bool, check_int
from compactnn.lowrank.base import LowRankLayer, resolve_rank

__all__ = ["LowRankLinear"]


class LowRankLinear(LowRankLayer):
    """``y = (x V^T) U^T + b`` with ``U`` (out x r) and ``V`` (r x in).

    Parameters and multiply-adds per input row fall from ``out*in`` to
    ``r*(out+in)`` [FNL, Sec. 2]. The forward pass is two thin matmuls; the
    product ``U V`` is never formed.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        rank: an int in ``[1, min(in, out)]``, or a float in ``(0, 1]`` meaning
            that fraction of ``min(in, out)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | float,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        check_bool("bias", bias)
        self.rank = resolve_rank(rank, min(in_features, out_features))
        kw = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.empty(out_features, self.rank, **kw))
        self.V = nn.Parameter(torch.empty(self.rank, in_features, **kw))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **kw))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    # -- matrix view -----------------------------------------------------
    @property
    def matrix_shape(self) -> tuple[int, int, int]:
        return (1, self.out_features, self.in_features)

    def factor_matrices(self) -> tuple[Tensor, Tensor]:
        return self.U.unsqueeze(0), self.V.unsqueeze(0)

    @torch.no_grad()
    def set_factor_matrices(self, u: Tensor, v: Tensor) -> None:
        self.U.copy_(u.reshape(self.U.shape))
        self.V.copy_(v.reshape(self.V.shape))

    def weight_to_matrix(self, weight: Tensor) -> Tensor:
        return weight.reshape(1, self.out_features, self.in_features)

    def matrix_to_weight(self, matrix: Tensor) -> Tensor:
        return matrix.reshape(self.out_features, self.in_features)

    @property
    def dense_weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def dense_fan_in(self) -> int:
        return self.in_features

    # -- calibration rows --------------------------------------------------
    def input_rows(self, x: Tensor) -> Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"inputs have feature size {tuple(x.shape)[-1:] or ()} but "
                             f"the layer expects in_features={self.in_features} "
                             f"(input shape {tuple(x.shape)})")
        return x.reshape(-1, self.in_features)

    def rows_per_sample(self, x: Tensor) -> int:
        return max(1, x[:1].numel() // self.in_features) if x.dim() > 1 else 1

    def config(self) -> dict[str, Any]:
        return {**self.dense_kwargs(), "rank": self.rank}

    # -- conversion ------------------------------------------------------
    dense_type = nn.Linear

    def dense_kwargs(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    @classmethod
    def dense_structure(cls, module: nn.Module) -> dict[str, Any]:
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")
