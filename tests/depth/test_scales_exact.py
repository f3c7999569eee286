"""LayerScales' penalties exactly: the stage-1 L1 value and its coefficient's range."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn.depth import LayerScales
from compactnn.models import ResNet, ResNetConfig


def test_l1_penalty_is_coef_times_the_sum_of_absolute_scales() -> None:
    torch.manual_seed(0)
    scales = LayerScales(ResNet(ResNetConfig(depth=8, widths=(4, 4, 4))))
    with torch.no_grad():
        scales.weight.copy_(torch.tensor([0.5, -2.0, 0.25]))
    assert scales.l1_penalty(0.1).item() == pytest.approx(0.275, abs=1e-7)
    assert scales.l1_penalty(0.0).item() == 0.0
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^coef must be "):
            scales.l1_penalty(bad)


def test_difference_penalty_checks_its_coefficient_and_the_tracking() -> None:
    torch.manual_seed(0)
    scales = LayerScales(ResNet(ResNetConfig(depth=8, widths=(4, 4, 4))))
    with pytest.raises(ValueError, match=r"^coef must be >= 0\.0, got coef=-0\.1$"):
        scales.difference_penalty(-0.1)
    with pytest.raises(RuntimeError, match=r"^no block is tracked: call track\(names\) before "
                       r"the forward pass$"):
        scales.difference_penalty(0.1)


class _Shrink(nn.Module):
    """Maps width 4 to 3 in a way shape_change cannot see statically."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_plain_scales_are_found_on_the_model_and_errors_say_what_happened() -> None:
    import copy
    import re

    from compactnn.depth.scales import attached_scales

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    scales = LayerScales(model, include=["0"])
    assert attached_scales(model) == [scales]
    with pytest.raises(ValueError, match=r"^blocks \['0'\] already carry LayerScales; call "
                       r"remove\(\) on those first$"):
        LayerScales(model, include=["0"])
    twin = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="^" + re.escape(
            "this model is a copy made while LayerScales were attached; its hooks still use "
            "the original's scales. Copy models only after scales.remove(), then attach new "
            "LayerScales") + "$"):
        twin(torch.randn(2, 4))
    scales.remove()
    with pytest.raises(RuntimeError, match=r"^these LayerScales were removed from their "
                       r"model$"):
        scales.l1_penalty(0.1)
    with pytest.raises(TypeError, match=r"^model must be a Module, got str$"):
        LayerScales("model")


def test_a_plain_block_changing_shape_at_run_time_is_named() -> None:
    model = nn.Sequential(_Shrink(), nn.ReLU())
    LayerScales(model, include=["0"])
    with pytest.raises(ValueError, match=r"^block '0' maps shape \(2, 4\) to \(2, 3\); a plain "
                       r"block must keep its input's shape to be scaled toward the identity$"):
        model(torch.randn(2, 4))
