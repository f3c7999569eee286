"""Early stopping: the stopping epoch on a scripted metric, exact restore of the
best weights, resume in the middle of the patience window, task configs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compactnn.config import ConfigError, build_config, parse_overrides
from compactnn.engine import DistInfo, EarlyStopConfig, EarlyStopping, LoopConfig, Task, run

SCORES = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.9, 2.8, 2.7, 2.6]  # best at 3 until epoch 7


class Scripted(Task):
    """Least squares whose validation "score" follows SCORES by epoch; keeps a copy
    of the weights after each epoch to check the restore."""

    monitor = "val_score"

    def __init__(self, scores=SCORES) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True)
        self.scores, self.epochs_done, self.snapshots = scores, 0, {}

    def setup(self, info: DistInfo) -> None:
        self.num_train = 32

    def build(self, info: DistInfo, steps_per_epoch: int):
        self.model = nn.Linear(4, 1)
        return self.model, torch.optim.SGD(self.model.parameters(), lr=0.01), None

    def train_step(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float], int]:
        loss = nn.functional.mse_loss(model(self.x[batch]), self.y[batch])
        return loss, {"loss": float(loss.detach()) * len(batch)}, len(batch)

    def evaluate(self, split: str) -> dict[str, float]:
        self.epochs_done += 1
        self.snapshots[self.epochs_done] = [p.detach().clone() for p in self.model.parameters()]
        return {"score": self.scores[self.epochs_done - 1]}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": torch.tensor(self.epochs_done)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])


def loop(out=None, patience=3, **kw) -> LoopConfig:
    return LoopConfig(epochs=10, batch_size=8, seed=0, device="cpu",
                      out=None if out is None else str(out),
                      early_stop=EarlyStopConfig(patience=patience, **kw))


def test_rule_on_a_scripted_sequence():
    rule, model = EarlyStopping("val_score", patience=3), nn.Linear(1, 1)
    stops = [rule.update({"val_score": v}, e + 1, model) for e, v in enumerate(SCORES[:6])]
    assert stops == [False] * 5 + [True]
    assert rule.best == 3.0 and rule.best_epoch == 3 and rule.bad_epochs == 3
    up = EarlyStopping("val_accuracy", patience=1)  # auto mode: higher is better
    assert up.mode == "max"
    assert not up.update({"val_accuracy": 0.5}, 1, model)
    assert up.update({"val_accuracy": 0.4}, 2, model)


def test_min_delta_and_nan_are_not_improvements():
    rule, model = EarlyStopping("m", patience=2, mode="min", min_delta=0.5), nn.Linear(1, 1)
    assert not rule.update({"m": 3.0}, 1, model)
    assert not rule.update({"m": 2.6}, 2, model)  # better by less than min_delta
    assert rule.update({"m": float("nan")}, 3, model)
    assert rule.best == 3.0 and rule.best_epoch == 1


def test_stops_at_the_right_epoch_and_restores_the_best_weights_exactly():
    task = Scripted()
    r = run(task, loop())
    assert r.metrics["finished"] and r.metrics["early_stopped"]
    assert r.metrics["epoch"] == 6 and [h["epoch"] for h in r.history] == list(range(1, 7))
    assert r.metrics["best_epoch"] == 3 and r.metrics["best_val_score"] == 3.0
    for got, want in zip(r.model.parameters(), task.snapshots[3], strict=True):
        assert torch.equal(got, want)
    assert not torch.equal(task.snapshots[6][0], task.snapshots[3][0])  # it did move on
    last = Scripted()
    kept = run(last, loop(restore_best=False))
    assert torch.equal(kept.model.weight, last.snapshots[6][0])


def test_off_by_default_trains_every_epoch():
    r = run(Scripted(), loop(patience=0))
    assert r.metrics["epoch"] == 10 and "early_stopped" not in r.metrics


@pytest.mark.parametrize("stop_at", [13, 17, 24])  # epochs 4, 5 (mid-patience), 6 (the stop)
def test_resume_mid_patience_equals_an_uninterrupted_run(tmp_path, stop_at):
    full = run(Scripted(), loop(tmp_path / "full"))
    first = run(Scripted(), LoopConfig(**{**loop(tmp_path / "r").__dict__,
                                          "stop_after_steps": stop_at}))
    assert not first.metrics["finished"]
    resumed = run(Scripted(), loop(tmp_path / "r"))
    assert resumed.metrics["early_stopped"] and resumed.metrics["epoch"] == 6
    assert resumed.metrics["best_epoch"] == 3
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # a finished early-stopped run is not trained further by a rerun
    again = run(Scripted(), loop(tmp_path / "r"))
    assert again.metrics["epoch"] == 6 and torch.equal(again.model.weight, resumed.model.weight)
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["early_stopped"] and saved["best_epoch"] == 3


def test_unknown_metric_names_the_columns():
    with pytest.raises(ConfigError, match="early_stop.metric='val_acc' .*val_score"):
        run(Scripted(), loop(metric="val_acc"))


def test_task_configs_carry_early_stopping(tmp_path):
    from compactnn.tasks.classify import TrainConfig, train
    from compactnn.tasks.mtl import MTLConfig

    cfg = build_config(TrainConfig, parse_overrides([
        "data.name=digits", "model.hidden=16", "optim.batch_size=64", "optim.epochs=30",
        "optim.lr=0.5", "optim.schedule=constant", "progress=false",
        "early_stop.patience=1", "early_stop.metric=val_accuracy", f"out={tmp_path}"]))
    r = train(cfg)
    assert r.metrics["early_stopped"] and r.metrics["epoch"] < 30
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + r.metrics["epoch"]
    assert r.metrics["val_accuracy"] == r.metrics["best_val_accuracy"]  # best weights back
    assert build_config(MTLConfig, {}).early_stop.patience == 0
    with pytest.raises(ConfigError, match="early_stop.patience must be >= 0"):
        build_config(MTLConfig, parse_overrides(["early_stop.patience=-1"]))
    with pytest.raises(ConfigError, match="data.val_size must be >= 1"):
        build_config(TrainConfig, parse_overrides(["early_stop.patience=2", "data.val_size=0"]))
