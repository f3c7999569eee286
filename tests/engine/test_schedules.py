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


def test_step_decays_by_ten_at_half_and_three_quarters():
    f = lr_lambda("step", 8)
    assert [f(s) for s in range(8)] == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_step_counts_milestones_after_warmup_and_per_phase():
    f = lr_lambda("step", 12, warmup_steps=4)  # 8 decay steps: milestones at 4 + 4, 4 + 6
    assert [f(s) for s in range(12)] == pytest.approx(
        [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    g = lr_lambda("step", 16, phase_starts=[0, 8])
    assert [g(s) for s in range(8)] == [g(s) for s in range(8, 16)]
    assert g(7) == pytest.approx(0.01) and g(8) == 1.0


def test_step_scheduler_drives_sgd():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = lr_scheduler(opt, "step", 100)
    seen = []
    for _ in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[49] == pytest.approx(0.1) and seen[50] == pytest.approx(0.01)
    assert seen[74] == pytest.approx(0.01) and seen[75] == pytest.approx(0.001)


def test_group_scale_slows_one_group_for_its_first_steps():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.2)
    sched = lr_scheduler(opt, "cosine", 8, warmup_steps=2, group_scale={1: (0.1, 3)})
    f = lr_lambda("cosine", 8, warmup_steps=2)
    for step in range(8):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * f(step))
        assert opt.param_groups[1]["lr"] == pytest.approx(0.5 * f(step) * (0.1 if step < 3
                                                                            else 1.0))
        opt.step()
        sched.step()


@pytest.mark.parametrize("scale, match", [
    ({2: (0.1, 3)}, "has 2 groups"), ({True: (0.1, 3)}, "names group"),
    ({1: (0.0, 3)}, "factor must be finite and > 0"),
    ({1: (float("nan"), 3)}, "factor must be finite"), ({1: (0.1, -1)}, "steps"),
])
def test_group_scale_refuses_bad_entries(scale, match):
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b]}], lr=0.2)
    with pytest.raises(ValueError, match=match):
        lr_scheduler(opt, "constant", 8, group_scale=scale)
    assert opt.param_groups[1]["lr"] == 0.2  # a refused call leaves the optimizer as it was
