"""Learning-rate multipliers: warm-up, cosine, constant, restarts per phase."""

import math

import pytest
import torch

from compactnn.engine import lr_lambda, lr_scheduler


def test_cosine_without_warmup_is_the_half_cosine():
    f = lr_lambda("cosine", 10)
    assert [f(s) for s in range(11)] == [0.5 * (1 + math.cos(math.pi * s / 10))
                                         for s in range(11)]


def test_warmup_is_linear_then_cosine_over_the_rest():
    f = lr_lambda("cosine", 12, warmup_steps=4)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(12) == pytest.approx(0.0, abs=1e-15)
    assert f(8) == pytest.approx(0.5)


def test_constant_and_phase_restarts():
    assert {lr_lambda("constant", 7, 0)(s) for s in range(8)} == {1.0}
    f = lr_lambda("cosine", 20, warmup_steps=0, phase_starts=[0, 10])
    assert [f(s) for s in range(10)] == [f(s) for s in range(10, 20)]
    assert f(10) == 1.0 and f(9) < 0.1


@pytest.mark.parametrize("kwargs,match", [
    ({"schedule": "linear", "total_steps": 5}, "schedule must be one of"),
    ({"schedule": "cosine", "total_steps": 0}, "total_steps must be >= 1"),
    ({"schedule": "cosine", "total_steps": 5, "phase_starts": [2, 4]}, "start at 0"),
    ({"schedule": "cosine", "total_steps": 5, "warmup_steps": -1}, "warmup_steps"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lr_lambda(**kwargs)


def test_scheduler_follows_the_lambda():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = lr_scheduler(opt, "cosine", 6, warmup_steps=2)
    f = lr_lambda("cosine", 6, warmup_steps=2)
    for step in range(6):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * f(step))
        opt.step()
        sched.step()
