"""Early stopping at its edges: ``min_delta`` in both directions, the first epoch a
task lets it use, and a sparse run never ending on weights from before its budget."""

from __future__ import annotations

import csv

import pytest
import torch
from test_early_stop import Scripted, loop
from torch import nn

from compactnn.config import build_config, parse_overrides
from compactnn.engine import EarlyStopping, run
from compactnn.tasks.classify import count_nonzero_params


@pytest.mark.parametrize("mode, sign", [("min", -1.0), ("max", 1.0)])
def test_min_delta_is_a_margin_in_the_better_direction(mode, sign):
    rule, model = EarlyStopping("m", patience=5, mode=mode, min_delta=0.5), nn.Linear(1, 1)
    rule.update({"m": 3.0}, 1, model)
    rule.update({"m": 3.0 + sign * 0.25}, 2, model)  # better, but by less than min_delta
    rule.update({"m": 3.0 + sign * 0.5}, 3, model)  # better by exactly min_delta: not enough
    rule.update({"m": 3.0 - sign * 0.75}, 4, model)  # worse
    assert rule.best == 3.0 and rule.best_epoch == 1 and rule.bad_epochs == 3
    rule.update({"m": 3.0 + sign * 0.625}, 5, model)  # better by more than min_delta
    assert rule.best == 3.0 + sign * 0.625 and rule.best_epoch == 5 and rule.bad_epochs == 0


class LateStart(Scripted):
    """Scripted scores whose first usable epoch (0-based) is ``start``."""

    def __init__(self, scores, start: int) -> None:
        super().__init__(scores)
        self.start = start

    def early_stop_from(self) -> int:
        return self.start


SCORES = [0.1, 0.2, 1.0, 1.5, 1.6, 1.7, 0.9, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("start, best, stop", [(0, 1, 4), (1, 2, 5), (2, 3, 6), (3, 7, 10)])
def test_the_rule_sees_exactly_the_epochs_from_early_stop_from(start, best, stop):
    r = run(LateStart(SCORES, start), loop())
    assert r.metrics["best_epoch"] == best and r.metrics["best_val_score"] == SCORES[best - 1]
    assert r.metrics["epoch"] == stop
    assert r.metrics["early_stopped"]


def test_a_sparse_run_keeps_weights_from_its_budget_only(tmp_path):
    # IMP with 2 rounds over 6 epochs prunes at the starts of epochs 3 and 5 (1-based);
    # a tiny budget makes the dense epochs much better, so only a rule that ignores them
    # ends at the budget
    from compactnn.tasks.classify import TrainConfig, train

    cfg = build_config(TrainConfig, parse_overrides([
        "data.name=digits", "model.name=mlp", "model.hidden=64,64,64", "optim.batch_size=64",
        "optim.epochs=6", "optim.name=adamw", "optim.lr=0.01", "progress=false",
        "sparse.method=imp", "sparse.rounds=2", "sparse.param_ratio=0.39", "early_stop.patience=6",
        "early_stop.metric=val_loss", f"out={tmp_path}"]))
    r = train(cfg)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(row["val_loss"]) for row in rows]
    assert min(losses[:4]) < min(losses[4:])  # the precondition: dense epochs look better
    assert r.metrics["best_epoch"] == 5 + losses[4:].index(min(losses[4:]))
    assert r.metrics["best_val_loss"] == min(losses[4:])
    budget = int(0.39 * r.metrics["dense_params"])
    assert count_nonzero_params(r.model) <= budget
    assert torch.isfinite(torch.tensor(r.metrics["test_loss"]))
