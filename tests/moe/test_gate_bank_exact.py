"""Gate banks exactly: saturation at the bank's width (static and per-example), a bank
from a single gate, the index error's name, and the per-example Top-k bank's attributes."""

from __future__ import annotations

import pytest
import torch

from compactnn.moe import DSelectKBank, NoisyTopKBank, SoftmaxBank, SoftmaxGate


def test_saturation_counts_logits_beyond_half_the_gamma() -> None:
    bank = DSelectKBank(2, 4, k=1, gamma=2.0, entropy_reg=0.5)
    with torch.no_grad():  # |z| >= gamma / 2 = 1 saturates: 2 of the 4 logits
        bank.z_logits.copy_(torch.tensor([[[1.0, 0.5]], [[-0.9, -1.5]]]))
    assert bank.saturation() == 0.5
    assert bank.saturation(per_task=True).tolist() == [0.5, 0.5]


def test_a_per_example_banks_saturation_reads_the_routing_input() -> None:
    torch.manual_seed(0)
    bank = DSelectKBank(2, 4, k=1, gamma=1.0, input_dim=3)
    x = torch.randn(5, 3) * 10
    z = bank.logits(x)[0]  # (batch, T, k, m)
    want = ((z / 1.0).abs() >= 0.5).float().mean().item()
    assert bank.saturation(x) == pytest.approx(want, abs=1e-12)
    per_task = ((z / 1.0).abs() >= 0.5).float().mean(dim=(0, 2, 3))
    assert bank.saturation(x, per_task=True).tolist() == pytest.approx(per_task.tolist())


def test_a_bank_of_one_gate_and_the_index_error() -> None:
    gate = SoftmaxGate(3)
    with torch.no_grad():
        gate.logits.copy_(torch.tensor([0.1, 0.2, 0.3]))
    bank = SoftmaxBank.from_gates([gate])
    assert bank.num_tasks == 1 and torch.equal(bank.logits[0], gate.logits)
    with pytest.raises(ValueError, match=r"^t must be <= 0, got t=1$"):
        bank.gate(1)


def test_a_per_example_top_k_bank_has_no_static_logits() -> None:
    bank = NoisyTopKBank(2, 4, input_dim=3)
    assert bank.gate_logits is None and bank.noise_logits is None
    assert set(dict(bank.named_parameters())) == {"gate_proj.weight", "noise_proj.weight"}
