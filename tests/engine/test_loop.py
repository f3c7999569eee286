"""The engine's loop on a small task: exact resume, task state in checkpoints,
nothing written without a run folder, refusal of another config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compactnn.config import ConfigError
from compactnn.engine import DistInfo, LoopConfig, Task, lr_scheduler, run


class Regression(Task):
    """Least squares on planted data; counts its steps as task state."""

    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 5, generator=g)
        self.y = self.x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        self.steps_seen = 0

    def setup(self, info: DistInfo) -> None:
        self.num_train = 64  # the rest is the validation split

    def build(self, info: DistInfo, steps_per_epoch: int):
        self.model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
        opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        return self.model, opt, lr_scheduler(opt, "cosine", 4 * steps_per_epoch)

    def train_step(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float], int]:
        loss = nn.functional.mse_loss(model(self.x[batch]), self.y[batch])
        return loss, {"loss": float(loss.detach()) * len(batch)}, len(batch)

    def after_step(self) -> None:
        self.steps_seen += 1

    def evaluate(self, split: str) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(nn.functional.mse_loss(self.model(self.x[64:]), self.y[64:]))}

    def final_metrics(self) -> dict[str, Any]:
        return {"test_mse": self.evaluate("test")["mse"]}

    def state_dict(self) -> dict[str, Any]:
        return {"steps_seen": torch.tensor(self.steps_seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_seen = int(state["steps_seen"])


def loop(out: Path | None, **kw) -> LoopConfig:
    base = {"epochs": 4, "batch_size": 16, "seed": 3, "device": "cpu",
            "out": None if out is None else str(out), "config": {"lr": 0.05}}
    return LoopConfig(**{**base, **kw})


def params(model: nn.Module) -> list[Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_resume_mid_epoch_equals_an_uninterrupted_run(tmp_path):
    full = run(Regression(), loop(tmp_path / "full"))
    assert full.metrics["finished"] and full.metrics["step"] == 16
    stopped = run(Regression(), loop(tmp_path / "r", stop_after_steps=6))
    assert not stopped.metrics["finished"] and stopped.metrics["step"] == 6
    task = Regression()
    resumed = run(task, loop(tmp_path / "r"))
    assert task.steps_seen == 16  # task state came back from the checkpoint
    for a, b in zip(params(full.model), params(resumed.model), strict=True):
        assert torch.equal(a, b)
    assert resumed.metrics["test_mse"] == full.metrics["test_mse"]
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    full_rows = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    strip = [r.rsplit(",", 1)[0] for r in rows]  # the last column is wall time
    assert strip == [r.rsplit(",", 1)[0] for r in full_rows] and len(rows) == 1 + 4
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["finished"] and result["step"] == 16


def test_history_has_one_row_per_epoch_with_train_and_val_columns():
    r = run(Regression(), loop(None))
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]
    assert {"train_loss", "val_mse", "lr", "step", "seconds"} <= set(r.history[0])
    assert r.history[-1]["val_mse"] < r.history[0]["val_mse"]


def test_no_run_folder_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(Regression(), loop(None))
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_another_config(tmp_path):
    run(Regression(), loop(tmp_path, stop_after_steps=3))
    with pytest.raises(ConfigError, match="different config"):
        run(Regression(), loop(tmp_path, config={"lr": 0.1}))
    # keys named as run keys may change
    r = run(Regression(), loop(tmp_path, config={"lr": 0.05, "progress": True},
                               run_keys=frozenset({"progress"})))
    assert r.metrics["finished"]


def test_batch_larger_than_the_data_is_a_config_error():
    with pytest.raises(ConfigError, match="exceeds the 64 training examples"):
        run(Regression(), loop(None, batch_size=65))
