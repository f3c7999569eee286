"""The noisy Top-k load probability exactly: [TopK] eq. 9 in closed form, computed in the
inputs' dtype and on the inputs' device whatever the default device, and its error text."""

from __future__ import annotations

import math

import pytest
import torch

from compactnn.moe import NoisyTopKGate
from compactnn.moe.gates.topk import load_probability


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _inputs(dtype: torch.dtype = torch.float32):
    clean = torch.tensor([[0.5, 0.1, -0.2, 0.3]], dtype=dtype)
    noisy = clean + torch.tensor([[0.1, -0.3, 0.2, 0.0]], dtype=dtype)  # 0.6 -0.2 0.0 0.3
    std = torch.full_like(clean, 0.5)
    return clean, noisy, std, noisy.topk(3, dim=-1).values


def test_load_probability_is_the_normal_cdf_against_the_right_threshold() -> None:
    clean, noisy, std, top = _inputs(torch.float64)
    # k=2: an expert in the top 2 (noisy > 3rd = 0.0) is compared with the 3rd largest,
    # one outside with the 2nd largest (0.3)
    want = [_phi(0.5 / 0.5), _phi((0.1 - 0.3) / 0.5), _phi((-0.2 - 0.3) / 0.5), _phi(0.3 / 0.5)]
    got = load_probability(clean, noisy, std, top, 2)
    assert got.dtype == torch.float64
    assert got[0].tolist() == pytest.approx(want, abs=1e-12)


def test_half_precision_stays_half() -> None:
    clean, noisy, std, top = _inputs(torch.float16)
    assert load_probability(clean, noisy, std, top, 2).dtype == torch.float16


def test_the_normal_lives_on_the_inputs_device_not_the_default_one() -> None:
    clean, noisy, std, top = _inputs()
    want = load_probability(clean, noisy, std, top, 2)
    with torch.device("meta"):  # stands in for a CUDA default device
        got = load_probability(clean, noisy, std, top, 2)
    assert got.device == clean.device and torch.equal(got, want)


def test_non_finite_logits_are_named_in_the_message() -> None:
    clean, noisy, std, top = _inputs()
    clean[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"^noisy Top-k gate: non-finite gate logits for the "
                       r"load loss; the routing input \(or the gate's parameters\) holds NaN "
                       r"or infinity$"):
        load_probability(clean, noisy, std, top, 2)


def test_with_k_equal_to_n_there_is_no_load_loss() -> None:
    # every expert is always in the top k: the load loss needs a (k+1)-th value and is 0
    for input_dim in (None, 2):
        torch.manual_seed(0)
        gate = NoisyTopKGate(3, k=3, input_dim=input_dim, importance_reg=0.0, load_reg=1.0)
        with torch.no_grad():
            for p in gate.parameters():
                p.uniform_(-1, 1)
        gate.train()
        x = None if input_dim is None else torch.randn(4, 2)
        weights, aux = gate(x)
        assert aux.item() == 0.0 and bool((weights > 0).all())
