"""The shared gate checks and helpers, exactly: messages that name the argument and the
gate, the smallest accepted routing width, the repr, and where the zero aux loss lives."""

from __future__ import annotations

import pytest
import torch

from compactnn.moe import SoftmaxGate
from compactnn.moe.gates.base import check_input_dim, check_routing_input, zero_like


def test_input_dim_errors_name_the_argument_and_one_is_the_smallest_width() -> None:
    with pytest.raises(ValueError, match=r"^input_dim must be >= 1, got input_dim=0$"):
        check_input_dim(0)
    assert check_input_dim(1) == 1 and check_input_dim(None) is None
    gate = SoftmaxGate(3, input_dim=1)
    weights, _ = gate(torch.ones(4, 1))
    assert weights.shape == (4, 3)


def test_routing_input_errors_name_the_gate_and_the_wrong_type() -> None:
    gate = SoftmaxGate(3, input_dim=2)
    with pytest.raises(ValueError, match=r"^SoftmaxGate is per-example \(input_dim=2\)"):
        gate()
    with pytest.raises(TypeError, match=r"^routing input must be a Tensor, got list$"):
        check_routing_input([[1.0, 2.0]], 2, "G")
    with pytest.raises(ValueError, match=r"shape \(batch, 2\), got \(1, 3\)$"):
        check_routing_input(torch.ones(1, 3), 2, "G")


def test_repr_lists_the_config_comma_separated() -> None:
    assert repr(SoftmaxGate(3)) == "SoftmaxGate(num_experts=3, input_dim=None)"


def test_zero_aux_loss_is_on_the_weights_device_and_dtype() -> None:
    # the meta device tells "like's device" from the default device without a GPU
    z = zero_like(torch.empty(2, dtype=torch.float16, device="meta"))
    assert z.device.type == "meta" and z.dtype == torch.float16 and z.shape == ()


def test_a_per_example_softmax_gate_has_no_static_logits() -> None:
    gate = SoftmaxGate(3, input_dim=2)
    assert gate.logits is None
    assert set(dict(gate.named_parameters())) == {"proj.weight", "proj.bias"}
