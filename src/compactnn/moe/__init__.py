"""Mixtures of experts: the DSelect-k gate [DSK], softmax [MMoE] and noisy Top-k [TopK]
baselines and their banks, stacked MLP experts and towers, single- and multi-gate layers,
and dense, sparse and capacity execution. See docs/moe.md."""

from .analysis import (
    gate_weights,
    nonzeros_per_example,
    nonzeros_per_task,
    plot_task_expert_weights,
    selector_entropies,
    task_expert_weights,
)
from .dispatch import (
    capacity_mix,
    combine,
    dense_combine,
    dense_mix,
    expert_capacity,
    mix,
    sparse_combine,
    sparse_mix,
)
from .experts import BankMember, MLPBank, mlp_experts, mlp_towers
from .feed_forward import MoEFeedForward, make_token_gate
from .gates import (
    BalancedTopKGate,
    DSelectKBank,
    DSelectKGate,
    Gate,
    GateBank,
    NoisyTopKBank,
    NoisyTopKGate,
    SoftmaxBank,
    SoftmaxGate,
    cv_squared,
    gate_bank,
    smooth_step,
)
from .layers import MixtureOfExperts, MultiGateMoE

__all__ = [
    "BalancedTopKGate",
    "MoEFeedForward",
    "DSelectKBank",
    "DSelectKGate",
    "Gate",
    "GateBank",
    "BankMember",
    "MLPBank",
    "MixtureOfExperts",
    "MultiGateMoE",
    "NoisyTopKBank",
    "NoisyTopKGate",
    "SoftmaxBank",
    "SoftmaxGate",
    "capacity_mix",
    "combine",
    "cv_squared",
    "dense_combine",
    "dense_mix",
    "expert_capacity",
    "gate_bank",
    "gate_weights",
    "mix",
    "mlp_experts",
    "make_token_gate",
    "mlp_towers",
    "nonzeros_per_example",
    "nonzeros_per_task",
    "plot_task_expert_weights",
    "selector_entropies",
    "smooth_step",
    "sparse_combine",
    "sparse_mix",
    "task_expert_weights",
]
