"""Initializers for low-rank layers, each also available by name through
``from_dense(..., init=NAME)`` and ``factorize(..., init=NAME)``.

``"default"``, ``"kaiming_factors"`` and ``"spectral"`` [FNL] need only the dense weight;
``"nonlinear"`` [LR-NL] matches the layer's function (Gaussian inputs, or
calibration ``inputs=``); ``"whitened"`` (SVD-LLM), ``"asvd"`` (activation-scaled
SVD) and ``"lstsq"`` (MosaicML) are the data-aware linear baselines. Which
initializers take calibration data is recorded in the registry
(:func:`compactnn.lowrank.is_data_aware`).

Modules: :mod:`~compactnn.init.spectral` (truncated SVD, balanced factors),
:mod:`~compactnn.init.gaussian` (closed-form Gaussian ReLU expectations),
:mod:`~compactnn.init.relu_solver` (the Gaussian-mode solver),
:mod:`~compactnn.init.asvd` (activation-scaled SVD),
:mod:`~compactnn.init.gated_ffn` (function matching through a gated FFN),
:mod:`~compactnn.init.moments` (moment solvers: least squares, whitened, lstsq),
:mod:`~compactnn.init.data_fit` (the data-mode fit), :mod:`~compactnn.init.inputs`
(calibration rows, activations, folded norms) and
:mod:`~compactnn.init.nonlinear` (the registered data-aware initializers).
"""

from compactnn.init import gaussian
from compactnn.init.asvd import ASVD_STATS, asvd_, asvd_factors, asvd_scales
from compactnn.init.data_fit import DataSolution, FitOptions, fit_data
from compactnn.init.depth_aware import depth_aware_, depth_aware_schedule
from compactnn.init.gated_ffn import fit_gated_ffn
from compactnn.init.inputs import (
    ACTIVATIONS,
    LayerInputs,
    activation_fn,
    check_activation,
    layer_inputs,
    norm_affine,
)
from compactnn.init.moments import (
    WHITENED_REFITS,
    InputMoments,
    check_moments,
    cross_moment,
    input_moments,
    least_squares_factors,
    lstsq_factors,
    refit_u,
    shifted_cholesky,
    whitened_factors,
)
from compactnn.init.nonlinear import lstsq_, nonlinear_, whitened_
from compactnn.init.relu_solver import GaussianSolution, refine_gaussian, solve_gaussian
from compactnn.init.spectral import (
    SVD_METHODS,
    balanced_factors,
    default_,
    kaiming_factors_,
    rebalance,
    spectral_,
    truncated_svd,
)

__all__ = [
    "ACTIVATIONS",
    "ASVD_STATS",
    "WHITENED_REFITS",
    "asvd_",
    "asvd_factors",
    "asvd_scales",
    "check_moments",
    "cross_moment",
    "fit_gated_ffn",
    "refit_u",
    "shifted_cholesky",
    "DataSolution",
    "FitOptions",
    "GaussianSolution",
    "InputMoments",
    "LayerInputs",
    "SVD_METHODS",
    "activation_fn",
    "balanced_factors",
    "check_activation",
    "default_",
    "depth_aware_",
    "depth_aware_schedule",
    "kaiming_factors_",
    "fit_data",
    "gaussian",
    "input_moments",
    "layer_inputs",
    "least_squares_factors",
    "lstsq_",
    "lstsq_factors",
    "nonlinear_",
    "norm_affine",
    "rebalance",
    "refine_gaussian",
    "solve_gaussian",
    "spectral_",
    "truncated_svd",
    "whitened_",
    "whitened_factors",
]
