"""DSelectKGate exactly: the selector outputs at the gate's own width, the step counter's
type, and penalty_eps's open lower bound."""

from __future__ import annotations

import pytest
import torch

from compactnn.moe import DSelectKGate


def _s(t: float, gamma: float) -> float:
    if t <= -gamma / 2:
        return 0.0
    if t >= gamma / 2:
        return 1.0
    return -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5


def test_selector_outputs_use_the_gates_gamma() -> None:
    gate = DSelectKGate(4, k=1, gamma=4.0)
    with torch.no_grad():
        gate.z_logits.copy_(torch.tensor([[0.5, -1.0]]))
    s0, s1 = _s(0.5, 4.0), _s(-1.0, 4.0)  # codes 00, 01, 10, 11 (top bit first)
    want = [(1 - s0) * (1 - s1), (1 - s0) * s1, s0 * (1 - s1), s0 * s1]
    assert gate.selector_outputs()[0].tolist() == pytest.approx(want, abs=1e-6)


def test_the_step_counter_is_an_integer_buffer() -> None:
    gate = DSelectKGate(4, k=2, gamma_start=4.0, schedule_steps=10)
    assert gate.steps_done.dtype == torch.long and gate.steps_done.shape == ()
    assert gate.state_dict()["steps_done"].dtype == torch.long


def test_penalty_eps_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^penalty_eps must be > 0"):
        DSelectKGate(4, k=2, penalty_eps=0.0)
    assert DSelectKGate(4, k=2, penalty_eps=1.0).penalty_eps == 1.0


def test_gamma_errors_start_with_its_name() -> None:
    with pytest.raises(ValueError, match=r"^gamma must be"):
        DSelectKGate(4, k=2, gamma=1e30)
