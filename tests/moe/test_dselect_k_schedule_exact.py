"""The DSelect-k schedules at their smallest length: a one-step ramp starts at ``start``
and a one-step schedule counts its step."""

from __future__ import annotations

import math

import pytest

from compactnn.moe import DSelectKGate
from compactnn.moe.gates.dselect_k_schedule import geometric_ramp, linear_ramp


def test_one_step_ramps_start_at_start_and_end_at_end() -> None:
    assert linear_ramp(2.0, 5.0, 0, 1) == 2.0 and linear_ramp(2.0, 5.0, 1, 1) == 5.0
    assert geometric_ramp(8.0, 2.0, 0, 1) == pytest.approx(8.0, rel=1e-15)
    assert geometric_ramp(8.0, 2.0, 1, 1) == 2.0
    assert geometric_ramp(8.0, 2.0, 1, 2) == pytest.approx(4.0, rel=1e-15)
    assert linear_ramp(2.0, 5.0, 1, 3) == pytest.approx(3.0, rel=1e-15)
    assert linear_ramp(2.0, 5.0, 0, 0) == 5.0 and math.isfinite(geometric_ramp(8.0, 2.0, 0, 0))


def test_a_one_step_schedule_counts_its_step() -> None:
    gate = DSelectKGate(4, k=2, gamma=1.0, gamma_start=4.0, schedule_steps=1)
    assert gate.steps_done is not None and gate.current()[0] == 4.0
    gate.train()
    gate()
    assert int(gate.steps_done) == 1 and gate.current()[0] == 1.0


def test_inconsistent_schedules_are_refused_with_the_fix_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"^entropy_reg_start / gamma_start need "
                       r"schedule_steps >= 1 \(the length of the ramp\), got schedule_steps=0$"):
        DSelectKGate(4, k=2, gamma_start=4.0)
    with pytest.raises(ValueError, match=r"^schedule_steps=3 schedules nothing: give "
                       r"entropy_reg_start and/or gamma_start$"):
        DSelectKGate(4, k=2, schedule_steps=3)
