"""metrics.csv on resume when its header was replaced or edited: rewritten with the
run's columns (rows remapped by name), never rows written under a foreign header."""

from __future__ import annotations

import csv
import warnings

import pytest
import torch
from torch import Tensor, nn

from compactnn.engine import DistInfo, LoopConfig, MetricLogger, Task, run

COLUMNS = ["epoch", "step", "lr", "train_loss", "val_mse", "seconds"]


def _row(epoch: int) -> dict:
    return {"epoch": epoch, "step": 4 * epoch, "lr": 0.1, "train_loss": 1.0 / epoch,
            "val_mse": 2.0 / epoch, "seconds": 0.5 * epoch}


def _write(path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _read(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _resume_and_log(tmp_path, step: int, row: dict) -> MetricLogger:
    logger = MetricLogger(tmp_path, tensorboard=False)
    logger.truncate_after(step)
    logger.log(row)
    logger.close()
    return logger


def test_a_foreign_header_is_rewritten_not_filled_with_empty_rows(tmp_path):
    _write(tmp_path / "metrics.csv", ["a", "b", "c"], [["1", "2", "3"]])
    with pytest.warns(UserWarning, match=r"header \(a, b, c\) is not this run's columns"):
        _resume_and_log(tmp_path, 4, _row(2))
    rows = _read(tmp_path / "metrics.csv")
    # the foreign row had no step and was dropped by the resume; nothing empty remains
    assert rows == [COLUMNS, [str(v) for v in _row(2).values()]]


def test_an_edited_column_name_keeps_the_rows_remapped_by_name(tmp_path):
    edited = [c if c != "val_mse" else "val_mze" for c in COLUMNS]
    first = [str(v) for v in _row(1).values()]
    _write(tmp_path / "metrics.csv", edited, [first])
    with pytest.warns(UserWarning, match="1 earlier rows kept"):
        _resume_and_log(tmp_path, 4, _row(2))
    rows = _read(tmp_path / "metrics.csv")
    assert rows[0] == COLUMNS
    assert rows[1] == [*first[:4], "", first[5]]  # the renamed column's value is gone
    assert rows[2] == [str(v) for v in _row(2).values()]


def test_a_duplicated_column_is_not_ours(tmp_path):
    _write(tmp_path / "metrics.csv", [*COLUMNS, "step"], [])
    with pytest.warns(UserWarning, match="not this run's columns"):
        _resume_and_log(tmp_path, 4, _row(1))
    assert _read(tmp_path / "metrics.csv")[0] == COLUMNS


@pytest.mark.parametrize("header", [COLUMNS, COLUMNS[:-1], [*COLUMNS, "val_acc"]])
def test_the_runs_own_header_is_kept_without_a_warning(tmp_path, header):
    """A row with fewer or more columns than the header (an epoch without training
    batches, a later extra) is not a replaced header."""
    first = [str(_row(1)[c]) if c in COLUMNS else "0.5" for c in header]
    _write(tmp_path / "metrics.csv", header, [first])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _resume_and_log(tmp_path, 4, _row(2))
    rows = _read(tmp_path / "metrics.csv")
    assert rows[0] == header and rows[1] == first
    assert rows[2] == [str(_row(2).get(c, "")) for c in header]


class _Fit(Task):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(48, 3, generator=g)
        self.y = self.x.sum(1, keepdim=True)

    def setup(self, info: DistInfo) -> None:
        self.num_train = 32

    def build(self, info: DistInfo, steps_per_epoch: int):
        self.model = nn.Linear(3, 1)
        return self.model, torch.optim.SGD(self.model.parameters(), lr=0.05), None

    def train_step(self, model: nn.Module, batch: Tensor):
        loss = nn.functional.mse_loss(model(self.x[batch]), self.y[batch])
        return loss, {"loss": float(loss.detach()) * len(batch)}, len(batch)

    def evaluate(self, split: str) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(nn.functional.mse_loss(self.model(self.x[32:]),
                                                        self.y[32:]))}


def test_resume_through_the_loop_after_the_header_was_replaced(tmp_path):
    cfg = {"epochs": 3, "batch_size": 16, "seed": 0, "device": "cpu", "out": str(tmp_path),
           "config": {"x": 1}}
    run(_Fit(), LoopConfig(**cfg, stop_after_steps=3))  # epoch 1 logged, stopped in 2
    path = tmp_path / "metrics.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    path.write_text("\n".join(["x,y,z", *lines[1:]]) + "\n")
    with pytest.warns(UserWarning, match="not this run's columns"):
        run(_Fit(), LoopConfig(**cfg))
    rows = _read(path)
    assert rows[0] == header
    assert all(len(r) == len(header) and all(v != "" for v in r) for r in rows[1:])
    assert [int(r[header.index("epoch")]) for r in rows[1:]] == [2, 3]  # the resumed ones
