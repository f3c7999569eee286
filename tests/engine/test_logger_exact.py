"""The metrics log's rewrites go through the temporary name the run folder cleans."""

from __future__ import annotations

from pathlib import Path

import pytest

from compactnn.engine.logger import MetricLogger
from compactnn.engine.run_folder import OUTPUT_FILES


def _fail(self, target):
    raise OSError("disk gone")


@pytest.mark.parametrize("rewrite", ["foreign header", "truncate"])
def test_a_rewrite_cut_short_leaves_a_cleanable_temp_file(tmp_path, monkeypatch, rewrite):
    path = tmp_path / "metrics.csv"
    if rewrite == "foreign header":
        path.write_text("a,b\n1,2\n")
    else:
        path.write_text("epoch,step,loss\n0,1,0.5\n1,2,0.4\n")
    logger = MetricLogger(tmp_path, tensorboard=False)
    monkeypatch.setattr(Path, "replace", _fail)
    with pytest.raises(OSError, match="disk gone"):
        if rewrite == "foreign header":
            logger.log({"epoch": 0, "step": 1, "loss": 0.5})
        else:
            logger.truncate_after(1)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["metrics.csv", "metrics.csv.tmp"]
    stem, dot_tmp, _ = left[1].partition(".tmp")
    assert stem in OUTPUT_FILES and dot_tmp


class _Board:
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.flushes = 0

    def add_scalar(self, tag, value, step) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        self.flushes += 1


def test_every_numeric_column_but_step_and_epoch_goes_to_the_board(tmp_path) -> None:
    logger = MetricLogger(tmp_path, tensorboard=False)
    logger._tb = board = _Board()
    logger.log({"epoch": 2, "step": 40, "loss": 0.5, "acc": 1, "note": "x"})
    logger.log({"epoch": 3, "step": 60, "loss": 0.25, "acc": 0, "note": "y"})
    assert board.scalars == [("loss", 0.5, 40), ("acc", 1, 40), ("loss", 0.25, 60),
                             ("acc", 0, 60)]
    assert board.flushes == 2


def test_an_empty_log_file_gets_a_header(tmp_path) -> None:
    (tmp_path / "metrics.csv").write_text("")
    logger = MetricLogger(tmp_path, tensorboard=False)
    logger.log({"epoch": 0, "step": 1, "loss": 0.5})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,step,loss",
                                                                   "0,1,0.5"]


def test_the_header_warning_points_at_the_log_call(tmp_path) -> None:
    import inspect

    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    logger = MetricLogger(tmp_path, tensorboard=False)
    with pytest.warns(UserWarning, match="is not this run's columns") as caught:
        logger.log({"epoch": 0, "step": 1})
    lines, first = inspect.getsourcelines(MetricLogger.log)
    call = first + next(i for i, s in enumerate(lines) if "self._fix_header(" in s)
    assert caught[0].lineno == call


def test_tensorboard_logs_go_to_the_run_folders_tensorboard_folder(tmp_path, monkeypatch):
    import sys
    import types

    made = []

    class Writer(_Board):
        def __init__(self, log_dir) -> None:
            super().__init__()
            made.append(log_dir)

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    logger = MetricLogger(tmp_path, tensorboard=True)
    assert made == [str(tmp_path / "tensorboard")] and isinstance(logger._tb, Writer)
    assert MetricLogger(tmp_path / "b", tensorboard=False)._tb is None
