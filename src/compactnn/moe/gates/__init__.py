"""Gates for mixtures of experts: DSelect-k [DSK], softmax [MMoE], noisy Top-k [TopK],
and banks of ``T`` gates of one kind computed in one pass (see docs/moe.md)."""

from .balanced_topk import BalancedTopKGate, balance_loss
from .bank import DSelectKBank, GateBank, NoisyTopKBank, SoftmaxBank, gate_bank
from .base import Gate
from .dselect_k import DSelectKGate, smooth_step
from .softmax import SoftmaxGate
from .topk import NoisyTopKGate, cv_squared

__all__ = [
    "BalancedTopKGate",
    "DSelectKBank",
    "DSelectKGate",
    "Gate",
    "GateBank",
    "NoisyTopKBank",
    "NoisyTopKGate",
    "SoftmaxBank",
    "SoftmaxGate",
    "balance_loss",
    "cv_squared",
    "gate_bank",
    "smooth_step",
]
