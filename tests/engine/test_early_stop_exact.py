"""Early stopping at its edges: ``min_delta`` in both directions, the first epoch a
task lets it use, and a sparse run never ending on weights from before its budget."""

from __future__ import annotations

import csv
import math
import re

import pytest
import torch
from test_early_stop import Scripted, loop
from torch import nn

from compactnn.config import ConfigError, build_config, parse_overrides
from compactnn.engine import EarlyStopConfig, EarlyStopping, run
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


@pytest.mark.parametrize("metric, mode", [("val_accuracy", "max"), ("val_t0_auc", "max"),
                                          ("val_loss", "min"), ("val_mean_mse", "min"),
                                          ("val_AUC", "min")])
def test_auto_mode_follows_the_metric_name(metric, mode):
    assert EarlyStopping(metric, patience=1).mode == mode
    other = "min" if mode == "max" else "max"
    assert EarlyStopping(metric, patience=1, mode=other).mode == other


def test_config_and_rule_validation():
    assert not EarlyStopConfig().enabled and EarlyStopConfig(patience=1).enabled
    EarlyStopConfig(patience=0, min_delta=0.0).validate()
    for cfg, match in [(EarlyStopConfig(patience=-1), "early_stop.patience must be >= 0, got -1"),
                       (EarlyStopConfig(min_delta=-0.5), "early_stop.min_delta must be finite "
                                                         "and >= 0, got -0.5"),
                       (EarlyStopConfig(min_delta=math.inf), "early_stop.min_delta"),
                       (EarlyStopConfig(min_delta=math.nan), "early_stop.min_delta"),
                       (EarlyStopConfig(metric=""), "early_stop.metric must name a metric")]:
        with pytest.raises(ConfigError, match=re.escape(match)):
            cfg.validate()
    with pytest.raises(ValueError, match="patience must be >= 1, got 0"):
        EarlyStopping("m", patience=0)
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max', got 'up'"):
        EarlyStopping("m", patience=1, mode="up")


def test_update_counts_keeps_a_copy_and_restores():
    model = nn.Linear(2, 1)
    rule = EarlyStopping("m", patience=2, mode="min")
    assert not rule.update({"m": math.inf}, 1, model)  # no finite value yet: not a best
    assert rule.best is None and rule.bad_epochs == 1 and not rule.restore(model)
    assert not rule.update({"m": 1.0}, 2, model)
    assert (rule.best, rule.best_epoch, rule.bad_epochs) == (1.0, 2, 0)
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # later training must not change the kept copy
    assert not rule.update({"m": 1.0}, 3, model)  # equal is not better
    assert rule.update({"m": 2.0}, 4, model)  # the second bad epoch in a row
    assert rule.summary() == {"best_epoch": 2, "best_m": 1.0}
    assert rule.restore(model)
    assert all(torch.equal(model.state_dict()[k], kept[k]) for k in kept)


def test_a_missing_metric_lists_the_metric_columns():
    rule = EarlyStopping("val_m", patience=1)
    row = {"epoch": 1, "step": 3, "seconds": 0.5, "loss": 2.0, "val_x": 1.0}
    with pytest.raises(ConfigError, match=re.escape(
            "early_stop.metric='val_m' is not a metric of this task; choose one of: loss, "
            "val_x")):
        rule.update(row, 1, nn.Linear(1, 1))


def test_state_round_trip_and_refusals():
    model = nn.Linear(2, 1)
    rule = EarlyStopping("m", patience=3)
    rule.update({"m": 0.5}, 1, model)
    rule.update({"m": 0.7}, 2, model)
    state = rule.state_dict()
    assert (state["best"], state["best_epoch"], state["bad_epochs"]) == (0.5, 1, 1)
    back = EarlyStopping("m", patience=3)
    back.load_state_dict({**state, "best": 1}, model)
    assert back.best == 1.0 and isinstance(back.best, float)
    assert (back.best_epoch, back.bad_epochs) == (1, 1)
    assert back.best_weights is state["weights"]
    back.load_state_dict({**state, "best": None, "weights": None})
    assert back.best is None and back.best_weights is None
    for bad, match in [({"best": "x"}, "best must be a number, got 'x'"),
                       ({"weights": {"weight": 1.0}}, "weights must be a table of tensors"),
                       ({"weights": [torch.zeros(1)]}, "weights must be a table of tensors"),
                       ({"bad_epochs": -1}, "negative counters"),
                       ({"best_epoch": -1}, "negative counters")]:
        with pytest.raises(ValueError, match=re.escape(match)):
            EarlyStopping("m", patience=3).load_state_dict({**state, **bad}, model)
    wrong = {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)}
    with pytest.raises(ValueError, match=re.escape("do not fit the model (entry 'weight')")):
        EarlyStopping("m", patience=3).load_state_dict({**state, "weights": wrong}, model)
    extra = {**state["weights"], "scale": torch.ones(1)}
    with pytest.raises(ValueError, match=re.escape("(entry 'scale')")):
        EarlyStopping("m", patience=3).load_state_dict({**state, "weights": extra}, model)
    EarlyStopping("m", patience=3).load_state_dict(state)  # no model: names not checked


def test_a_fresh_rule_and_its_state():
    rule = EarlyStopping("m", patience=1)
    assert rule.min_delta == 0.0 and rule.summary() == {"best_epoch": 0, "best_m": None}
    back = EarlyStopping("m", patience=1)
    back.load_state_dict(rule.state_dict(), nn.Linear(1, 1))  # nothing recorded yet: valid
    assert (back.best, back.best_epoch, back.bad_epochs) == (None, 0, 0)
    assert not rule.update({"m": 1.0}, 1, nn.Linear(1, 1))
    assert not rule.update({"m": 1.0 - 1e-9}, 2, nn.Linear(1, 1))  # any gain counts
    assert rule.best_epoch == 2


def test_refusal_messages_are_exact():
    with pytest.raises(ConfigError) as e:
        EarlyStopConfig(metric="").validate()
    assert str(e.value) == "early_stop.metric must name a metric (or be 'auto')"
    state = EarlyStopping("m", patience=1).state_dict()
    with pytest.raises(ValueError) as e:
        EarlyStopping("m", patience=1).load_state_dict({**state, "weights": [1]})
    assert str(e.value) == "early stopping state: weights must be a table of tensors"
    with pytest.raises(ValueError) as e:
        EarlyStopping("m", patience=1).load_state_dict({**state, "bad_epochs": -2})
    assert str(e.value) == "early stopping state: negative counters"
