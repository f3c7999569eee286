"""The grid experiment's runner: worker processes give the serial results, runs
resume from their folders, and the table carries paired tests."""

import csv

import pytest

from compactnn.engine import Run
from compactnn.experiments import get
from compactnn.experiments.lowrank_grid import (
    CHANNEL_ARM,
    DECAY,
    REFERENCE,
    Scale,
    run_grid,
)

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
    # dense + 7 low-rank arms + 2 sparse baselines, for each of 2 seeds
    assert len(rows) == 2 * 10
    methods = {r["method"] for r in rows}
    assert methods == {"dense", "kaiming_factors", "kaiming_factors + FD", "default",
                       "spectral", "spectral + FD", "nonlinear", "nonlinear + FD",
                       "magnitude pruning", "IHT"}
    for r in rows:
        if r["method"] != "dense" and r["diverged"] == "False":  # within its budget
            assert int(r["params"]) <= 0.25 * int(r["dense_params"]) * 1.02
    assert (out / "lowrank_grid_mlp.png").exists()
    assert "| 25% | spectral + FD |" in result.markdown and "ref" in result.markdown
    assert "| 100% | dense |" in result.markdown
    assert "p (Holm)" in result.markdown


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


def _sections(model, fraction):
    import compactnn.experiments.lowrank_grid as grid

    return dict(grid._arms(model, fraction))


@pytest.mark.parametrize("model", ["mlp", "resnet20"])
def test_every_arm_follows_the_fnl_recipe(model, tmp_path):
    """Weight decay = Frobenius decay = 1e-4, factors free of weight decay under
    Frobenius decay, SGD momentum 0.9, step decay, no warm-up."""
    import compactnn.experiments.lowrank_grid as grid

    scale = Scale(model, seeds=1, epochs=4, max_train=256, data="digits")
    for label, sections in _sections(model, 0.1).items():
        cfg = grid._config(scale, 0, tmp_path / "x", **sections)
        o = cfg.optim
        assert (o.name, o.momentum, o.nesterov, o.weight_decay, o.schedule,
                o.warmup_epochs) == ("sgd", 0.9, False, DECAY, "step", 0)
        assert o.factor_weight_decay is None  # the task resolves it from frobenius_decay
        fd = cfg.lowrank.frobenius_decay
        assert fd == (DECAY if label.startswith(("spectral + FD", "kaiming_factors + FD",
                                                 "nonlinear + FD")) else 0.0)
    assert _sections(model, 0.1)["kaiming_factors"]["lowrank"]["init"] == "kaiming_factors"


def test_factors_get_no_weight_decay_under_frobenius_decay(tmp_path):
    import compactnn.experiments.lowrank_grid as grid
    from compactnn.engine.distributed import DistInfo
    from compactnn.tasks.classify import ClassifyTask

    scale = Scale("mlp", seeds=1, epochs=4, max_train=256, data="digits")
    for label, want in ((REFERENCE, 0.0), ("spectral", DECAY)):
        cfg = grid._config(scale, 0, tmp_path / "x", **_sections("mlp", 0.25)[label])
        task = ClassifyTask(cfg)
        task.setup(DistInfo())
        _, opt, _ = task.build(DistInfo(), 4)
        factor_ids = {id(p) for n, p in task.model.named_parameters()
                      if n.endswith((".U", ".V"))}
        assert factor_ids
        for group in opt.param_groups:
            assert group["nesterov"] is False and group["momentum"] == 0.9
            if {id(p) for p in group["params"]} & factor_ids:
                assert group["weight_decay"] == want


def test_resnet_keeps_stem_and_classifier_dense_and_uses_the_spatial_scheme():
    arms = _sections("resnet20", 0.1)
    for label, sections in arms.items():
        lr = sections["lowrank"]
        assert lr["keep_first_last"] is True and lr["exclude"] == []
        if "param_ratio" in lr:
            want = "channel" if label == CHANNEL_ARM or "nonlinear" in label else "spatial"
            assert lr["conv_scheme"] == want
    assert CHANNEL_ARM in arms and CHANNEL_ARM not in _sections("mlp", 0.1)
    assert _sections("mlp", 0.1)["spectral"]["lowrank"]["exclude"] == ["head"]


def test_an_arm_subset_runs_only_those_arms():
    import compactnn.experiments.lowrank_grid as grid

    assert [a for a, _ in grid._arms("mlp", 0.1, ("default", "IHT"))] == ["default", "IHT"]


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


def test_a_signal_to_a_worker_between_runs_stops_cleanly(tmp_path):
    """The worker survives SIGTERM between runs (no BrokenProcessPool) and starts no
    further run; the grid then stops with exit status 143."""
    import os
    import signal

    import compactnn.experiments.lowrank_grid as grid
    from compactnn.engine import RunInterrupted, exit_code

    pool = grid._pool(1)
    try:
        pid = pool.submit(os.getpid).result()
        pool.submit(os.kill, pid, signal.SIGTERM).result()  # between runs
        cfg = grid._config(TINY, 0, tmp_path / "run")
        res = pool.submit(grid._train_job, cfg, 1).result()
    finally:
        pool.shutdown()
    assert res == {"finished": False, "signal": signal.SIGTERM}
    assert not (tmp_path / "run").exists()
    with pytest.raises(RunInterrupted) as info:
        grid._finished(res)
    assert exit_code(info.value.signum) == 143
