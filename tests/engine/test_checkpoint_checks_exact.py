"""The checkpoint content checks exactly: the loop state's fields and the description
of a tensor that has the wrong shape."""

from __future__ import annotations

import pytest
import torch

from compactnn.engine.checkpoint_checks import check_loop_state, check_scheduler_state


def _state(**change):
    s = {"epoch": 1, "batch": 0, "step": 5, "seconds": 2.5,
         "running": {"count": 3, "sums": {"loss": 1.5}}}
    s.update(change)
    return s


def test_loop_state_fields_are_checked_by_name() -> None:
    assert check_loop_state(_state(), "w") == _state()
    no_seconds = _state()
    del no_seconds["seconds"]
    assert check_loop_state(no_seconds, "w") is no_seconds
    for bad in (-1.0, float("nan"), "3", True):
        with pytest.raises(ValueError, match=r"^w: state\.seconds must be a number >= 0, got "):
            check_loop_state(_state(seconds=bad), "w")
    with pytest.raises(ValueError, match=r"^w: state\.step must be an integer >= 0, got -1$"):
        check_loop_state(_state(step=-1), "w")


def test_a_tensor_where_a_table_belongs_is_described_by_its_shape() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    with pytest.raises(ValueError, match=r"^w: scheduler state must be a table, got a tensor "
                       r"of shape \(2, 3\)$"):
        check_scheduler_state(torch.zeros(2, 3), sched, "w")


class _Half:
    """A learning-rate function object: LambdaLR saves its __dict__."""

    def __init__(self) -> None:
        self.factor = 0.5

    def __call__(self, epoch: int) -> float:
        return self.factor


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)


def test_scheduler_states_are_checked_entry_by_entry() -> None:
    lam = torch.optim.lr_scheduler.LambdaLR(_opt(), lambda e: 0.5)
    good = lam.state_dict()
    assert check_scheduler_state(good, lam, "w") == good
    with pytest.raises(ValueError, match=r"^w: scheduler\.last_epoch must be >= -1, got -2$"):
        check_scheduler_state(dict(good, last_epoch=-2), lam, "w")
    with pytest.raises(ValueError, match=r"^w: scheduler\.lr_lambdas\[0\] must be null, got "
                       r"\{'a': 1\}$"):
        check_scheduler_state(dict(good, lr_lambdas=[{"a": 1}]), lam, "w")
    obj = torch.optim.lr_scheduler.LambdaLR(_opt(), _Half())
    with pytest.raises(ValueError, match=r"^w: scheduler\.lr_lambdas\[0\] holds a dict, which "
                       r"a checkpoint cannot restore$"):
        check_scheduler_state(obj.state_dict(), obj, "w")


def test_values_are_checked_against_the_live_ones() -> None:
    from compactnn.engine.checkpoint_checks import _like

    t = torch.ones(2)
    assert _like("w", "k", t, torch.zeros(2)) is t and _like("w", "k", "a", "b") == "a"
    with pytest.raises(ValueError, match=r"^w: k must be a string, got 3$"):
        _like("w", "k", 3, "s")
    for bad, shown in ((torch.zeros(3), "a tensor of shape \\(3,\\)"), (1.0, "1.0")):
        with pytest.raises(ValueError, match=rf"^w: k must be a tensor of shape \(2,\), got "
                           rf"{shown}$"):
            _like("w", "k", bad, torch.zeros(2))


@pytest.mark.parametrize("sums", [{1: 2.0}, {"loss": float("inf")}, {"loss": "x"}])
def test_running_sums_must_be_named_and_finite(sums) -> None:
    with pytest.raises(ValueError, match=r"^w: state\.running must hold a count and finite "
                       r"sums$"):
        check_loop_state(_state(running={"count": 1, "sums": sums}), "w")


def test_optimizer_state_shape_errors() -> None:
    from compactnn.engine.checkpoint_checks import check_optimizer_state

    opt = _opt()
    good = opt.state_dict()
    check_optimizer_state(good, opt, "w")
    with pytest.raises(ValueError, match=r"^w: optimizer state must have 'state' and "
                       r"'param_groups'$"):
        check_optimizer_state({"state": {}}, opt, "w")
    group = dict(good["param_groups"][0], extra=1)
    with pytest.raises(ValueError, match=r"^w: optimizer group 0 has other entries than this "
                       r"optimizer's$"):
        check_optimizer_state({"state": {}, "param_groups": [group]}, opt, "w")


def test_per_parameter_optimizer_entries_are_each_checked() -> None:
    from compactnn.engine.checkpoint_checks import check_optimizer_state

    opt = _opt()
    groups = opt.state_dict()["param_groups"]
    ok = {"state": {0: {"step": 3, "momentum_buffer": torch.zeros(2)}}, "param_groups": groups}
    check_optimizer_state(ok, opt, "w")
    bad = {0: {"step": 3, "momentum_buffer": torch.full((2,), float("inf"))}}
    with pytest.raises(ValueError, match=r"non-finite"):
        check_optimizer_state({"state": bad, "param_groups": groups}, opt, "w")
    with pytest.raises(ValueError, match=r"^w: optimizer state for unknown parameter 5$"):
        check_optimizer_state({"state": {5: {}}, "param_groups": groups}, opt, "w")
    with pytest.raises(ValueError, match=r"^w: optimizer state 0\.x must be a tensor or a "
                       r"number, got 'abc'$"):
        check_optimizer_state({"state": {0: {"x": "abc"}}, "param_groups": groups}, opt, "w")
