"""DSelect-k's warm-up box at margins other than the default: during the first
``warmup_steps`` training forwards the static selector logits are projected onto
``[-b, b]`` with ``b = warmup_margin * gamma_t / 2`` (``gamma_t`` the scheduled width),
and are left alone afterwards."""

from __future__ import annotations

import pytest
import torch

from compactnn.moe import DSelectKGate
from compactnn.moe.gates.bank import gate_bank
from compactnn.moe.gates.dselect_k import smooth_step

# logits far outside, on, and strictly inside any box used below
RAW = torch.tensor([[5.0, -5.0, 0.01], [-0.02, 0.7, -0.35]])


def _box(margin: float, gamma: float) -> torch.Tensor:
    """``RAW`` projected onto the documented box, computed independently of the gate."""
    b = margin * gamma / 2
    return torch.where(RAW > b, torch.tensor(b), torch.where(RAW < -b, torch.tensor(-b), RAW))


def _set(gate, z: torch.Tensor) -> None:
    with torch.no_grad():
        gate.z_logits.copy_(z)


@pytest.mark.parametrize("margin", [0.3, 0.1, 0.9])
def test_warmup_projects_onto_the_box_of_its_margin_then_stops(margin):
    gamma, steps = 2.0, 3
    gate = DSelectKGate(6, k=2, gamma=gamma, warmup_steps=steps, warmup_margin=margin)
    assert gate.config()["warmup_margin"] == margin
    for _ in range(steps):
        _set(gate, RAW)
        gate()
        torch.testing.assert_close(gate.z_logits.detach(), _box(margin, gamma),
                                   rtol=0, atol=0)
    assert gate.current()[2] is False
    _set(gate, RAW)
    gate()  # the warm-up is over: no projection
    torch.testing.assert_close(gate.z_logits.detach(), RAW, rtol=0, atol=0)


def test_the_box_uses_the_scheduled_width():
    # gamma_t = 8 * (1/8)^(step/3): 8, 4, 2, then 1; margin 0.3 -> b = 1.2, 0.6, 0.3
    gate = DSelectKGate(6, k=2, gamma=1.0, gamma_start=8.0, schedule_steps=3,
                        warmup_steps=3, warmup_margin=0.3)
    for gamma_t in (8.0, 4.0, 2.0):
        assert gate.current()[0] == pytest.approx(gamma_t, rel=1e-12)
        _set(gate, RAW)
        gate()
        torch.testing.assert_close(gate.z_logits.detach(), _box(0.3, gamma_t),
                                   rtol=1e-6, atol=0)


def test_two_margins_give_different_boxes_and_the_documented_slope():
    outs = {}
    for margin in (0.3, 0.1):
        gate = DSelectKGate(6, k=2, gamma=2.0, warmup_steps=1, warmup_margin=margin)
        _set(gate, RAW)
        gate()
        z = gate.z_logits.detach()
        outs[margin] = z.clone()
        assert float(z.abs().max()) == pytest.approx(margin * 2.0 / 2, rel=1e-7)
        # inside the box the smooth-step's slope is at least 1.5 (1 - margin^2) / gamma
        t = z.clone().requires_grad_()
        smooth_step(t, 2.0).sum().backward()
        assert float(t.grad.min()) >= 1.5 * (1 - margin**2) / 2.0 - 1e-6
    assert not torch.equal(outs[0.3], outs[0.1])


def test_eval_forwards_never_project_at_any_margin():
    gate = DSelectKGate(6, k=2, gamma=2.0, warmup_steps=3, warmup_margin=0.1).eval()
    _set(gate, RAW)
    gate()
    torch.testing.assert_close(gate.z_logits.detach(), RAW, rtol=0, atol=0)


def test_a_bank_projects_with_its_template_margin():
    template = DSelectKGate(6, k=2, gamma=2.0, warmup_steps=2, warmup_margin=0.3)
    bank = gate_bank(template, 3)
    for _ in range(2):
        with torch.no_grad():
            bank.z_logits.copy_(RAW.expand(3, 2, 3))
        bank.task_forward()
        torch.testing.assert_close(bank.z_logits.detach(), _box(0.3, 2.0).expand(3, 2, 3),
                                   rtol=0, atol=0)
    with torch.no_grad():
        bank.z_logits.copy_(RAW.expand(3, 2, 3))
    bank.task_forward()
    torch.testing.assert_close(bank.z_logits.detach(), RAW.expand(3, 2, 3), rtol=0, atol=0)
