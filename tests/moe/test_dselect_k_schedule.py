"""DSelect-k's remedies of early saturation: ramps, warm-up box, saturation fraction."""

import math

import pytest
import torch

from compactnn.moe import DSelectKGate
from compactnn.moe.gates.bank import DSelectKBank, gate_bank
from compactnn.moe.gates.dselect_k import dselect_k_regularization, smooth_step
from compactnn.moe.gates.dselect_k_schedule import (
    geometric_ramp,
    linear_ramp,
    saturation_fraction,
)


def test_saturation_fraction_by_hand():
    z = torch.tensor([[-0.5, 0.49, 0.5], [1.0, -0.2, 0.0]])
    assert saturation_fraction(z, 1.0) == 3 / 6  # |z| >= 0.5: -0.5, 0.5, 1.0
    assert saturation_fraction(z, 2.0) == 1 / 6  # |z| >= 1: 1.0
    assert saturation_fraction(z, 0.01) == 5 / 6  # all but 0.0
    with pytest.raises(ValueError, match="non-empty"):
        saturation_fraction(torch.zeros(0), 1.0)


def test_saturated_exactly_where_the_smooth_step_gradient_is_zero():
    torch.manual_seed(0)
    for gamma in (0.01, 1.0, 7.0):
        z = (torch.randn(500) * gamma).requires_grad_()
        smooth_step(z, gamma).sum().backward()
        flat = int((z.grad == 0).sum()) / z.numel()
        assert saturation_fraction(z, gamma) == flat


def test_ramps_at_given_steps():
    assert linear_ramp(0.0, 1.0, 0, 10) == 0.0
    assert linear_ramp(0.0, 1.0, 5, 10) == 0.5
    assert linear_ramp(2.0, 1.0, 10, 10) == 1.0
    assert linear_ramp(2.0, 1.0, 99, 10) == 1.0
    assert linear_ramp(2.0, 1.0, 3, 0) == 1.0
    assert geometric_ramp(10.0, 0.1, 0, 10) == pytest.approx(10.0)
    assert geometric_ramp(10.0, 0.1, 5, 10) == pytest.approx(1.0)
    assert geometric_ramp(8.0, 0.5, 2, 4) == pytest.approx(2.0)
    assert geometric_ramp(8.0, 0.5, 4, 4) == 0.5


def _entropy(r):
    return float(-(r * torch.log(r + 1e-6)).sum())


def test_entropy_weight_follows_its_ramp_and_eval_does_not_advance():
    gate = DSelectKGate(8, k=2, entropy_reg=1.0, entropy_reg_start=0.0, schedule_steps=4)
    assert gate.config()["entropy_reg_start"] == 0.0
    for step in range(6):
        gate.eval()
        gate()  # eval forwards do not count
        gate.train()
        assert int(gate.steps_done) == step
        expected_weight = min(step / 4, 1.0)
        assert gate.current()[1] == pytest.approx(expected_weight)
        r = gate.selector_outputs().detach()
        _, aux = gate()
        assert float(aux.detach()) == pytest.approx(expected_weight * _entropy(r), rel=1e-5)


def test_gamma_ramp_gives_the_weights_of_a_gate_at_that_width():
    torch.manual_seed(0)
    gate = DSelectKGate(6, k=2, gamma=0.5, gamma_start=8.0, schedule_steps=4)
    with torch.no_grad():
        gate.z_logits.copy_(torch.randn(2, 3))
    for _ in range(2):
        gate()
    assert gate.current()[0] == pytest.approx(2.0)
    fixed = DSelectKGate(6, k=2, gamma=2.0)
    fixed.load_state_dict({k: v for k, v in gate.state_dict().items() if k != "steps_done"})
    gate.eval()
    fixed.eval()
    torch.testing.assert_close(gate()[0], fixed()[0])
    assert gate.saturation() == saturation_fraction(gate.z_logits, 2.0)


def test_warmup_keeps_static_logits_inside_the_box_then_lets_go():
    gate = DSelectKGate(4, k=2, gamma=2.0, warmup_steps=3, warmup_margin=0.5)
    opt = torch.optim.SGD(gate.parameters(), lr=100.0)
    bound = 0.5 * 2.0 / 2
    for _ in range(3):
        with torch.no_grad():
            gate.z_logits.fill_(5.0)  # far past the boundary before each step
        w, _ = gate()
        assert gate.z_logits.abs().max() <= bound + 1e-7
        assert gate.saturation() == 0.0
        loss = (w * torch.arange(4.0)).sum()
        opt.zero_grad()
        loss.backward()
        assert gate.z_logits.grad.abs().sum() > 0  # the routing still learns
        opt.step()
    assert gate.current()[2] is False
    with torch.no_grad():
        gate.z_logits.fill_(5.0)
    gate()
    assert float(gate.z_logits.detach().max()) == 5.0  # the warm-up is over
    g2 = DSelectKGate(4, k=2, gamma=1.0, warmup_steps=2).eval()
    with torch.no_grad():
        g2.z_logits.fill_(3.0)
    g2()
    assert float(g2.z_logits.detach().max()) == 3.0  # eval mode never projects
    assert int(g2.steps_done) == 0


@pytest.mark.parametrize("kwargs, err, match", [
    ({"schedule_steps": 5}, ValueError, "schedules nothing"),
    ({"entropy_reg_start": 0.0}, ValueError, "schedule_steps >= 1"),
    ({"gamma_start": 2.0}, ValueError, "schedule_steps >= 1"),
    ({"gamma_start": 1e9, "schedule_steps": 2}, ValueError, "gamma"),
    ({"entropy_reg_start": -1.0, "schedule_steps": 2}, ValueError, "entropy_reg_start"),
    ({"warmup_steps": -1}, ValueError, "warmup_steps"),
    ({"warmup_steps": 2, "warmup_margin": 1.0}, ValueError, "warmup_margin"),
    ({"warmup_steps": 2, "warmup_margin": 0.0}, ValueError, "warmup_margin"),
    ({"warmup_steps": 2, "input_dim": 3}, ValueError, "static gates only"),
    ({"schedule_steps": 2.5, "gamma_start": 2.0}, TypeError, "schedule_steps"),
    ({"warmup": 3}, TypeError, "warmup"),
])
def test_bad_options_are_refused(kwargs, err, match):
    with pytest.raises(err, match=match):
        DSelectKGate(4, k=2, **kwargs)


def test_defaults_leave_config_and_state_unchanged():
    gate = DSelectKGate(4, k=2)
    assert set(gate.config()) == {"num_experts", "k", "gamma", "input_dim", "entropy_reg",
                                  "reduction", "penalty_eps"}
    assert "steps_done" not in gate.state_dict()
    assert gate.steps_done is None


def test_step_counter_is_saved_and_restored():
    a = DSelectKGate(4, k=2, entropy_reg=1.0, entropy_reg_start=0.0, schedule_steps=10)
    for _ in range(3):
        a()
    b = DSelectKGate(4, k=2, entropy_reg=1.0, entropy_reg_start=0.0, schedule_steps=10)
    b.load_state_dict(a.state_dict())
    assert int(b.steps_done) == 3 and b.current() == a.current()


@pytest.mark.parametrize("options", [
    {"entropy_reg": 0.5, "entropy_reg_start": 2.0, "schedule_steps": 3},
    {"gamma": 0.5, "gamma_start": 4.0, "schedule_steps": 3, "entropy_reg": 0.1},
    {"warmup_steps": 2, "warmup_margin": 0.3, "entropy_reg": 0.1},
])
def test_bank_matches_separate_gates_step_by_step(options):
    torch.manual_seed(1)
    template = DSelectKGate(6, k=2, **options)
    bank = gate_bank(template, 3)
    assert isinstance(bank, DSelectKBank)
    with torch.no_grad():
        bank.z_logits.copy_(torch.randn(3, 2, 3) * 2)
    gates = [bank.gate(t) for t in range(3)]
    for _ in range(4):
        w, aux = bank.task_forward()
        for t, g in enumerate(gates):
            wt, at = g()
            torch.testing.assert_close(w[t], wt)
            torch.testing.assert_close(aux[t], at)
        assert int(bank.steps_done) == int(gates[0].steps_done)
        torch.testing.assert_close(bank.z_logits[1], gates[1].z_logits)
    per_task = bank.saturation(per_task=True)
    assert per_task.shape == (3,)
    assert bank.saturation() == pytest.approx(float(per_task.mean()))
    # the regularizer at the scheduled weight, by the shared function
    gamma, weight, _ = bank.current()
    r = bank.selector_outputs().detach()
    expected = dselect_k_regularization(r, num_experts=6, entropy_reg=weight,
                                        penalty_eps=1e-6, per_example=False)
    assert math.isfinite(gamma)
    bank.train()
    torch.testing.assert_close(bank.task_forward()[1], expected)
