"""The loop's outputs and failure texts exactly: the model file's name, a failed model
save and a first-step divergence named, an epoch row's mean over one example."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from compactnn.engine import DistInfo, LoopConfig, Task, TrainingDiverged, run
from compactnn.engine.loop import _epoch_row
from compactnn.engine.run_folder import RunFolderError


class _Line(Task):
    def __init__(self, diverge: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 2, generator=g)
        self.y = self.x.sum(1, keepdim=True)
        self.diverge = diverge

    def setup(self, info: DistInfo) -> None:
        self.num_train = 16

    def build(self, info: DistInfo, steps_per_epoch: int):
        self.model = nn.Linear(2, 1)
        return self.model, torch.optim.SGD(self.model.parameters(), lr=0.1), None

    def train_step(self, model: nn.Module, batch: Tensor) -> tuple[Tensor, dict[str, float], int]:
        loss = nn.functional.mse_loss(model(self.x[batch]), self.y[batch])
        if self.diverge:
            loss = loss * float("nan")
        return loss, {"loss": float(loss.detach()) * len(batch)}, len(batch)


def _cfg(out, **kw) -> LoopConfig:
    return LoopConfig(**{"epochs": 1, "batch_size": 8, "seed": 0, "device": "cpu",
                         "out": str(out), "tensorboard": False, **kw})


def test_a_finished_run_writes_its_model_file(tmp_path) -> None:
    run(_Line(), _cfg(tmp_path), DistInfo())
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "result.json").is_file()


def test_a_failed_model_save_is_named(tmp_path, monkeypatch) -> None:
    import compactnn.io

    def full(model, path, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compactnn.io, "save_model", full)
    want = f"cannot write {tmp_path / 'model.safetensors'}: No space left on device"
    with pytest.raises(RunFolderError, match="^" + re.escape(want) + "$"):
        run(_Line(), _cfg(tmp_path), DistInfo())


def test_a_first_step_divergence_says_no_checkpoint_was_written(tmp_path) -> None:
    with pytest.raises(TrainingDiverged, match=r"training stopped and no checkpoint of this "
                       r"run was written\. Lower optim\.lr"):
        run(_Line(diverge=True), _cfg(tmp_path), DistInfo())


def test_an_epoch_row_averages_over_the_examples_seen() -> None:
    class T(Task):
        def evaluate(self, split: str) -> dict[str, Any]:
            return {"mse": 0.5}

    row = _epoch_row(T(), 0, 7, 0.1, {"count": 1, "sums": {"loss": 3.0}})
    assert row == {"epoch": 1, "step": 7, "lr": 0.1, "train_loss": 3.0, "val_mse": 0.5}
    row = _epoch_row(T(), 2, 9, 0.2, {"count": 4, "sums": {"loss": 3.0}})
    assert row["train_loss"] == 0.75 and row["epoch"] == 3
    assert _epoch_row(T(), 0, 0, 0.1, {"count": 0, "sums": {}})["val_mse"] == 0.5


def test_a_fresh_run_records_its_config(tmp_path) -> None:
    import json

    run(_Line(), _cfg(tmp_path, config={"lr": 0.1, "name": "x"}), DistInfo())
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.1, "name": "x"}


def test_a_checkpoint_past_this_runs_end_is_refused_by_position(tmp_path) -> None:
    run(_Line(), _cfg(tmp_path, epochs=2), DistInfo())
    ckpt = tmp_path / "checkpoint.safetensors"
    want = f"checkpoint {ckpt}: its position (epoch 2, batch 0) is outside this run"
    with pytest.raises(ValueError, match="^" + re.escape(want) + "$"):
        run(_Line(), _cfg(tmp_path, epochs=1), DistInfo())


def test_a_resume_says_where_it_starts(tmp_path, capsys) -> None:
    try:
        run(_Line(), _cfg(tmp_path, epochs=2, stop_after_steps=3), DistInfo())
    except KeyboardInterrupt:  # RunInterrupted: saved and stopped on request
        pass
    capsys.readouterr()
    run(_Line(), _cfg(tmp_path, epochs=2), DistInfo())
    assert f"resuming from epoch 2 (step 3) of {tmp_path}\n" in capsys.readouterr().err


def test_the_task_says_whether_ddp_must_find_unused_parameters(tmp_path, monkeypatch) -> None:
    from compactnn.engine import loop as loop_mod

    seen = []

    def wrap(model, info, find_unused_parameters=False):
        seen.append(find_unused_parameters)
        return model

    monkeypatch.setattr(loop_mod, "wrap_model", wrap)
    task = _Line()
    task.find_unused_parameters = True
    run(task, _cfg(tmp_path), DistInfo())
    assert seen == [True]


def test_the_progress_bar_shows_the_running_loss(tmp_path, capsys) -> None:
    run(_Line(), _cfg(tmp_path, progress=True, desc="linebar"), DistInfo())
    err = capsys.readouterr().err
    assert "linebar" in err and re.search(r"loss=\d+\.\d{4}", err)


def test_only_the_main_process_writes_the_metrics_log(tmp_path) -> None:
    run(_Line(), _cfg(tmp_path / "other"), DistInfo(rank=1))
    assert not (tmp_path / "other" / "metrics.csv").exists()
    run(_Line(), _cfg(tmp_path / "main"), DistInfo(rank=0))
    assert (tmp_path / "main" / "metrics.csv").read_text().startswith("epoch,step,lr,")


def test_a_resumed_run_counts_the_seconds_before_the_interruption(tmp_path, monkeypatch):
    import time

    from compactnn.engine import checkpoint_state

    try:
        run(_Line(), _cfg(tmp_path, epochs=2, stop_after_steps=3), DistInfo())
    except KeyboardInterrupt:
        pass
    before = checkpoint_state(tmp_path / "checkpoint.safetensors")["seconds"]
    monkeypatch.setattr(time, "perf_counter", lambda: 100.0)  # no time passes from here
    result = run(_Line(), _cfg(tmp_path, epochs=2), DistInfo())
    assert before > 0 and result.metrics["train_seconds"] == before


def test_the_bar_counts_every_step_of_the_run(tmp_path, capsys) -> None:
    run(_Line(), _cfg(tmp_path, epochs=2, progress=True), DistInfo())
    assert "4/4" in capsys.readouterr().err
