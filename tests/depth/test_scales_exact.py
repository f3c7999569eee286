"""LayerScales' penalties exactly: the stage-1 L1 value and its coefficient's range."""

from __future__ import annotations

import pytest
import torch

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
