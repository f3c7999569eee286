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


# --------------------------------------------------------------- failures and hazards


class Diverging(Regression):
    """Its loss turns NaN at step ``bad_step`` (1-based)."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.bad_step, self.calls = bad_step, 0

    def train_step(self, model, batch):
        self.calls += 1
        loss, sums, n = super().train_step(model, batch)
        if self.calls >= self.bad_step:
            loss = loss * float("nan")
        return loss, sums, n


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    from compactnn.engine import TrainingDiverged, checkpoint_state

    with pytest.raises(TrainingDiverged, match=r"became nan at step 7 \(epoch 2\).*step 4"):
        run(Diverging(bad_step=7), loop(tmp_path))
    state = checkpoint_state(tmp_path / "checkpoint.safetensors")
    assert state["step"] == 4 and state["epoch"] == 1  # the end of epoch 1, not the NaN
    assert not (tmp_path / "result.json").exists()
    with pytest.raises(TrainingDiverged, match="no checkpoint of this run was written"):
        run(Diverging(bad_step=2), loop(tmp_path / "early"))


def test_a_torn_last_csv_row_is_dropped_on_resume(tmp_path):
    full = run(Regression(), loop(tmp_path / "full"))
    run(Regression(), loop(tmp_path / "r", stop_after_steps=9))  # two epochs logged
    csv_path = tmp_path / "r" / "metrics.csv"
    whole = csv_path.read_text()
    csv_path.write_text(whole + whole.splitlines()[-1][:7])  # a kill mid-row
    resumed = run(Regression(), loop(tmp_path / "r"))
    assert resumed.metrics["test_mse"] == full.metrics["test_mse"]
    rows = [r.rsplit(",", 1)[0] for r in csv_path.read_text().splitlines()]
    want = [r.rsplit(",", 1)[0] for r in (tmp_path / "full" / "metrics.csv").read_text()
            .splitlines()]
    assert rows == want


def test_stale_temp_files_of_the_run_are_removed_on_start(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    stale = [tmp_path / "checkpoint.safetensors.tmp", tmp_path / "checkpoint.safetensors.tmpx1",
             tmp_path / "result.json.tmp"]
    for f in stale:
        f.write_bytes(b"\0" * 64)
    other = tmp_path / "notes.tmp"
    other.write_text("mine")
    run(Regression(), loop(tmp_path, epochs=1))
    assert not any(f.exists() for f in stale) and other.read_text() == "mine"


def test_a_second_run_in_the_same_folder_is_refused_at_once(tmp_path):
    from compactnn.engine import RunFolder, RunFolderBusy

    task = Regression()
    with RunFolder(tmp_path), pytest.raises(RunFolderBusy, match="another run is using"):
        run(task, loop(tmp_path))
    assert not hasattr(task, "model")  # refused before building anything
    assert run(Regression(), loop(tmp_path, epochs=1)).metrics["finished"]  # lock released


@pytest.mark.parametrize("sub,match", [
    ("f", "is a file, not a folder"),
    ("f/sub", "cannot create the run folder"),
])
def test_an_unusable_out_fails_before_training(tmp_path, sub, match):
    from compactnn.engine import RunFolderError

    (tmp_path / "f").write_text("x")
    task = Regression()
    with pytest.raises(RunFolderError, match=match):
        run(task, loop(tmp_path / sub))
    assert not hasattr(task, "model")


def test_a_failed_save_says_which_checkpoint_is_kept(tmp_path, monkeypatch):
    import compactnn.engine.loop as engine_loop
    from compactnn.engine import RunFolderError

    real = engine_loop.save_checkpoint
    calls = []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        real(path, *args, **kwargs)

    monkeypatch.setattr(engine_loop, "save_checkpoint", flaky)
    with pytest.raises(RunFolderError, match="Permission denied; the last checkpoint kept "
                                             "is the one of step 4"):
        run(Regression(), loop(tmp_path))


def test_a_signal_stops_after_saving_and_is_reported(tmp_path, monkeypatch):
    import os
    import signal

    import compactnn.engine.loop as engine_loop

    class SignalOnEnter(engine_loop.StopFlag):
        def __enter__(self):
            super().__enter__()
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the first step
            return self

    monkeypatch.setattr(engine_loop, "StopFlag", SignalOnEnter)
    r = run(Regression(), loop(tmp_path))
    assert not r.metrics["finished"] and r.metrics["signal"] == signal.SIGTERM
    assert r.metrics["step"] == 1 and (tmp_path / "checkpoint.safetensors").exists()


def test_result_json_is_strict(tmp_path):
    class NanMetric(Regression):
        def final_metrics(self):
            return {"test_mse": float("nan"), "nested": [float("inf"), 1.0]}

    run(NanMetric(), loop(tmp_path, epochs=1))

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    result = json.loads((tmp_path / "result.json").read_text(), parse_constant=refuse)
    assert result["test_mse"] is None and result["nested"] == [None, 1.0]


def test_a_run_failing_before_writing_leaves_no_folder(tmp_path):
    from compactnn.config import ConfigError

    with pytest.raises(ConfigError, match="exceeds"):
        run(Regression(), loop(tmp_path / "a" / "b", batch_size=100))
    assert list(tmp_path.iterdir()) == []
