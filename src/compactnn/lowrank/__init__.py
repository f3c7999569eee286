"""Factorized layers: drop-in replacements for ``nn.Linear`` and ``nn.Conv2d``."""

from compactnn.lowrank.base import (
    LowRankLayer,
    available_initializers,
    break_even_rank,
    get_initializer,
    register_initializer,
    resolve_rank,
)
from compactnn.lowrank.conv import CONV_SCHEMES, LowRankConv2d
from compactnn.lowrank.linear import LowRankLinear

__all__ = [
    "CONV_SCHEMES",
    "LowRankConv2d",
    "LowRankLayer",
    "LowRankLinear",
    "available_initializers",
    "break_even_rank",
    "get_initializer",
    "register_initializer",
    "resolve_rank",
]
