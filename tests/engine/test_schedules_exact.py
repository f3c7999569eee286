"""The LambdaLR scheduler follows lr_lambda with every argument, phases included."""

from __future__ import annotations

import math

import pytest
import torch

from compactnn.engine.schedules import lr_lambda, lr_scheduler


def test_the_scheduler_restarts_at_each_phase() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = lr_scheduler(opt, "cosine", 8, warmup_steps=1, phase_starts=(0, 4))
    f = lr_lambda("cosine", 8, 1, (0, 4))
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([f(s) for s in range(8)], abs=1e-12)
    # phase 2 starts with its own warm-up step at 1, then a half cosine over 3 steps
    assert seen[4] == 1.0 and seen[5] == pytest.approx(1.0)
    assert seen[6] == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))


def test_phase_starts_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"^phase_starts must be >= 0, got phase_starts=-2$"):
        lr_lambda("cosine", 8, 0, (0, -2))
    with pytest.raises(TypeError, match=r"^phase_starts must be an int"):
        lr_lambda("cosine", 8, 0, (0, 1.5))
    with pytest.raises(ValueError, match=r"^phase_starts must be sorted and start at 0, got "
                       r"\[0, 5, 3\]$"):
        lr_lambda("cosine", 8, 0, (0, 5, 3))
