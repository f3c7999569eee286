"""The default task hooks exactly: whole batches of the epoch's permutation from a start
batch, the batch-size checks' texts, and the early-stopping start."""

from __future__ import annotations

import pytest
import torch

from compactnn.config import ConfigError
from compactnn.engine.distributed import DistInfo, epoch_indices
from compactnn.engine.task import Task


class _Tiny(Task):
    num_train = 11


def test_batches_are_consecutive_whole_slices_of_the_permutation() -> None:
    task, info = _Tiny(), DistInfo()
    perm = epoch_indices(11, 3, 2)
    got = list(task.batches(2, 1, 4, 3, info))
    assert [b.tolist() for b in got] == [perm[4:8].tolist()]  # batch 0 skipped, 3 left over
    got = list(task.batches(2, 0, 3, 3, info))
    assert torch.equal(torch.cat(got), perm[:9]) and all(len(b) == 3 for b in got)
    two = DistInfo(rank=1, world_size=2)
    assert [b.tolist() for b in task.batches(2, 0, 4, 3, two)] == [perm[2:4].tolist(),
                                                                    perm[6:8].tolist()]


def test_steps_per_epoch_and_its_errors() -> None:
    task = _Tiny()
    assert task.steps_per_epoch(4, DistInfo()) == 2 and task.steps_per_epoch(11, DistInfo()) == 1
    with pytest.raises(ConfigError, match=r"^optim\.batch_size=3 must be divisible by the 2 "
                       r"processes$"):
        task.steps_per_epoch(3, DistInfo(world_size=2))
    with pytest.raises(ConfigError, match=r"^optim\.batch_size=12 exceeds the 11 training "
                       r"examples$"):
        task.steps_per_epoch(12, DistInfo())


def test_default_hooks() -> None:
    task = _Tiny()
    assert task.early_stop_from() == 0 and task.evaluate("val") == {}
    assert task.epoch_extras() == {} and task.summary() == {} and task.final_metrics() == {}
    assert task.state_dict() == {} and task.monitor == "val_loss"
    assert task.find_unused_parameters is False
