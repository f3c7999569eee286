"""Mixtures of experts: the DSelect-k gate [DSK], softmax [MMoE] and noisy Top-k [TopK]
baselines, single- and multi-gate layers, and sparse execution. See docs/moe.md."""

from .dispatch import combine, dense_combine, sparse_combine
from .gates import DSelectKGate, Gate, NoisyTopKGate, SoftmaxGate, cv_squared, smooth_step
from .inspect import (
    gate_weights,
    nonzeros_per_example,
    nonzeros_per_task,
    plot_task_expert_weights,
    selector_entropies,
    task_expert_weights,
)
from .layers import MixtureOfExperts, MultiGateMoE, mlp_experts

__all__ = [
    "DSelectKGate",
    "Gate",
    "MixtureOfExperts",
    "MultiGateMoE",
    "NoisyTopKGate",
    "SoftmaxGate",
    "combine",
    "cv_squared",
    "dense_combine",
    "gate_weights",
    "mlp_experts",
    "nonzeros_per_example",
    "nonzeros_per_task",
    "plot_task_expert_weights",
    "selector_entropies",
    "smooth_step",
    "sparse_combine",
    "task_expert_weights",
]
