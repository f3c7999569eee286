"""Initializers for low-rank layers, each also available by name through
``from_dense(..., init=NAME)`` and ``factorize(..., init=NAME)``.

``"default"`` and ``"spectral"`` [FNL] need only the dense weight;
``"nonlinear"`` [LR-NL] matches the layer's function (Gaussian inputs, or
calibration ``inputs=``); ``"whitened"`` (SVD-LLM) and ``"lstsq"`` (MosaicML)
are the data-aware linear baselines (see :data:`DATA_AWARE_INITS`).
"""

from compactnn.init import gaussian
from compactnn.init.calibration import (
    ACTIVATIONS,
    DATA_AWARE_INITS,
    compress_sequential,
    detect_activations,
    detect_norms,
    norm_affine,
)
from compactnn.init.depth_aware import depth_aware_, depth_aware_schedule  # noqa: F401
from compactnn.init.nonlinear import (
    fit_data,
    lstsq_,
    nonlinear_,
    refine_gaussian,
    solve_gaussian,
    whitened_,
)
from compactnn.init.spectral import balanced_factors, default_, spectral_, truncated_svd

__all__ = [
    "ACTIVATIONS",
    "DATA_AWARE_INITS",
    "balanced_factors",
    "compress_sequential",
    "default_",
    "detect_activations",
    "detect_norms",
    "fit_data",
    "gaussian",
    "lstsq_",
    "nonlinear_",
    "norm_affine",
    "refine_gaussian",
    "solve_gaussian",
    "spectral_",
    "truncated_svd",
    "whitened_",
]
