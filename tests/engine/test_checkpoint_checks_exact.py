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
