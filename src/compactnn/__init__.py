"""compactnn: compact neural networks by structure.

Low-rank (factorized) layers with spectral and function-matching
initialization, Frobenius decay, model surgery, and DSelect-k mixtures of
experts. See the README and docs/ for usage.
"""

__version__ = "0.1.0"

from compactnn import init  # noqa: F401  (registers the initializers)
from compactnn.io import load_model, save_model
from compactnn.lowrank import LowRankConv1d, LowRankConv2d, LowRankLayer, LowRankLinear
from compactnn.moe import (
    DSelectKGate,
    MixtureOfExperts,
    MultiGateMoE,
    NoisyTopKGate,
    SoftmaxGate,
    mlp_experts,
)
from compactnn.regularize import frobenius_decay, param_groups
from compactnn.sparse import (
    IterativeHardThresholding,
    IterativeMagnitudePruning,
    SparsityMasks,
    magnitude_masks,
    prunable_weights,
    target_keep_for_param_ratio,
    target_keep_for_params,
)
from compactnn.surgery import FactorizeReport, count_macs, factorize, merge

__all__ = [
    "DSelectKGate",
    "FactorizeReport",
    "IterativeHardThresholding",
    "IterativeMagnitudePruning",
    "LowRankConv1d",
    "LowRankConv2d",
    "LowRankLayer",
    "LowRankLinear",
    "MixtureOfExperts",
    "MultiGateMoE",
    "NoisyTopKGate",
    "SoftmaxGate",
    "SparsityMasks",
    "count_macs",
    "factorize",
    "frobenius_decay",
    "init",
    "load_model",
    "magnitude_masks",
    "merge",
    "mlp_experts",
    "param_groups",
    "prunable_weights",
    "save_model",
    "target_keep_for_param_ratio",
    "target_keep_for_params",
]
