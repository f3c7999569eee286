"""compactnn: compact neural networks by structure.

Low-rank (factorized) layers with spectral and function-matching
initialization, Frobenius decay, model surgery, and DSelect-k mixtures of
experts. See the README and docs/ for usage.
"""

__version__ = "0.1.0"

from compactnn import init  # noqa: E402,F401  (registers the initializers)
from compactnn.lowrank import LowRankConv2d, LowRankLayer, LowRankLinear  # noqa: E402

__all__ = ["LowRankConv2d", "LowRankLayer", "LowRankLinear", "init"]
from compactnn.regularize import frobenius_decay, param_groups  # noqa: E402
from compactnn.surgery import FactorizeReport, count_macs, factorize, merge  # noqa: E402

__all__ += ["FactorizeReport", "count_macs", "factorize", "frobenius_decay", "merge",
            "param_groups"]
from compactnn.io import load_model, save_model  # noqa: E402

__all__ += ["load_model", "save_model"]
from compactnn.sparse import (  # noqa: E402
    IterativeHardThresholding,
    IterativeMagnitudePruning,
    SparsityMasks,
    global_magnitude_masks,
    prunable_weights,
    target_keep_for_param_ratio,
    target_keep_for_params,
)

__all__ += ["IterativeHardThresholding", "IterativeMagnitudePruning", "SparsityMasks",
            "global_magnitude_masks", "prunable_weights", "target_keep_for_param_ratio",
            "target_keep_for_params"]
from compactnn.moe import (  # noqa: E402
    DSelectKGate,
    MixtureOfExperts,
    MultiGateMoE,
    NoisyTopKGate,
    SoftmaxGate,
    mlp_experts,
)

__all__ += ["DSelectKGate", "MixtureOfExperts", "MultiGateMoE", "NoisyTopKGate", "SoftmaxGate",
            "mlp_experts"]
