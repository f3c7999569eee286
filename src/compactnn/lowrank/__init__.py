"""Factorized layers: drop-in replacements for ``nn.Linear``, ``nn.Conv1d`` and
``nn.Conv2d``."""

from compactnn.lowrank.base import LowRankLayer, break_even_rank, resolve_rank
from compactnn.lowrank.conv import CONV_SCHEMES, LowRankConv2d
from compactnn.lowrank.conv1d import LowRankConv1d
from compactnn.lowrank.dense import (
    FACTORIZABLE,
    dense_matrix,
    dense_matrix_shape,
    is_factorizable,
    is_linear_like,
    is_transposed_linear,
    linear_view,
    to_lowrank,
)
from compactnn.lowrank.linear import LowRankLinear
from compactnn.lowrank.registry import (
    Initializer,
    available_initializers,
    get_initializer,
    is_data_aware,
    lookup_initializer,
    register_initializer,
)

__all__ = [
    "CONV_SCHEMES",
    "FACTORIZABLE",
    "Initializer",
    "LowRankConv1d",
    "LowRankConv2d",
    "LowRankLayer",
    "LowRankLinear",
    "available_initializers",
    "break_even_rank",
    "dense_matrix",
    "dense_matrix_shape",
    "get_initializer",
    "is_data_aware",
    "is_factorizable",
    "is_linear_like",
    "is_transposed_linear",
    "linear_view",
    "lookup_initializer",
    "register_initializer",
    "resolve_rank",
    "to_lowrank",
]
