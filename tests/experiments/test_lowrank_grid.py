"""The grid experiment's runner: worker processes give the serial results, runs
resume from their folders, and the table carries paired tests."""

import csv

import pytest

from compactnn.engine import Run
from compactnn.experiments import get
from compactnn.experiments.lowrank_grid import Scale, paired_pvalue, run_grid

TINY = Scale("mlp", seeds=2, epochs=3, max_train=256, fractions=(0.25,), data="digits")


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return out, run_grid(out, TINY, seed=0, jobs=1)


def test_grid_covers_every_arm_with_paired_tests(serial):
    out, result = serial
    rows = _rows(out / "lowrank_grid_mlp.csv")
    # dense + 6 low-rank arms + 2 sparse baselines, for each of 2 seeds
    assert len(rows) == 2 * 9
    methods = {r["method"] for r in rows}
    assert methods == {"dense", "default", "default + FD", "spectral", "spectral + FD",
                       "nonlinear", "nonlinear + FD", "magnitude pruning", "IHT"}
    for r in rows:
        if r["method"] != "dense":  # every compressed arm is within its budget
            assert int(r["params"]) <= 0.25 * int(r["dense_params"]) * 1.02
    assert (out / "lowrank_grid_mlp.png").exists()
    assert "| 25% | spectral + FD |" in result.markdown and "ref" in result.markdown
    assert "| 100% | dense |" in result.markdown


def test_worker_processes_reproduce_the_serial_grid(serial, tmp_path):
    out, _ = serial
    run_grid(tmp_path, TINY, seed=0, jobs=2)
    assert _rows(tmp_path / "lowrank_grid_mlp.csv") == _rows(out / "lowrank_grid_mlp.csv")


def test_finished_runs_are_reused_on_rerun(serial, monkeypatch):
    import compactnn.experiments.lowrank_grid as grid

    out, _ = serial
    before = (out / "lowrank_grid_mlp.csv").read_text()
    monkeypatch.setattr(grid, "train", lambda cfg: pytest.fail("a finished run was retrained"))
    run_grid(out, TINY, seed=0, jobs=1)  # every run folder holds its result.json
    assert (out / "lowrank_grid_mlp.csv").read_text() == before  # train_seconds included


def test_a_changed_config_is_refused_on_rerun(serial, tmp_path):
    import shutil

    out, _ = serial
    shutil.copytree(out / "runs", tmp_path / "runs")
    longer = Scale("mlp", seeds=2, epochs=4, max_train=256, fractions=(0.25,), data="digits")
    with pytest.raises(ValueError, match="different config"):
        run_grid(tmp_path, longer, seed=0, jobs=1)


def test_paired_pvalue():
    assert paired_pvalue([0.5], [0.4]) == "-"
    assert paired_pvalue([0.5, 0.6], [0.5, 0.6]) == "1.000"
    p = float(paired_pvalue([0.90, 0.91, 0.93], [0.80, 0.83, 0.82]))
    assert 0 < p < 0.05


def test_both_models_are_registered_for_parallel_runs():
    assert get("lowrank_grid").parallel and get("lowrank_grid").in_quick
    resnet = get("lowrank_grid_resnet")
    assert resnet.parallel and not resnet.in_quick


def test_an_interrupted_run_stops_the_grid(tmp_path, monkeypatch):
    import compactnn.experiments.lowrank_grid as grid

    started = []

    def stopped_train(cfg):  # what train returns after SIGINT: saved, not finished
        started.append(cfg.out)
        return Run(metrics={"finished": False}, model=None, history=[])

    monkeypatch.setattr(grid, "train", stopped_train)
    with pytest.raises(KeyboardInterrupt):
        run_grid(tmp_path, TINY, seed=0, jobs=1)
    assert len(started) == 1  # no further arm was started


def test_a_budget_that_cannot_be_met_fails_before_any_training(tmp_path, monkeypatch):
    import compactnn.experiments.lowrank_grid as grid

    monkeypatch.setattr(grid, "train", lambda cfg: pytest.fail("training started"))
    impossible = Scale("mlp", seeds=1, epochs=3, max_train=256, fractions=(0.25, 0.0005),
                       data="digits")
    with pytest.raises(ValueError, match="param_ratio=0.0005 cannot be met"):
        run_grid(tmp_path, impossible, seed=0, jobs=1)
