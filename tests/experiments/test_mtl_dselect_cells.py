"""The wiring of the DSelect-k study's cells (:mod:`compactnn.experiments.mtl_dselect_cells`)
and of its real data (:meth:`~compactnn.experiments.mtl_dselect.Study.real_data`): what
reaches the trainers and loaders, with the trainers and loaders replaced by recorders."""

from __future__ import annotations

import math
import signal

import pytest
import torch

from compactnn.config import build_config, parse_overrides
from compactnn.data.planted import make_planted_experts
from compactnn.engine.control import RunInterrupted
from compactnn.experiments import mtl_dselect as M
from compactnn.experiments import planted_moe, tuned
from compactnn.experiments.mtl_dselect_cells import run_planted_cell, run_real_cell, timed
from compactnn.moe import DSelectKGate
from compactnn.tasks.mtl.config import MTLConfig

# -- planted cells: the remedies reach train_routed

FAKE_ROUTED = {"val_mse": 0.25, "test_mse": 0.5, "best_epoch": 3, "epochs_run": 4,
               "val_history": [1.0, 0.5, 0.25, 0.3], "saturation_history": [0.0, 0.1, 0.2, 0.4],
               "weights": None, "model": None}


@pytest.fixture
def routed(monkeypatch):
    """``train_routed`` replaced: every call's arguments are appended to the list; the
    study's planted sizes are those of the small data below."""
    calls: list[dict] = []
    monkeypatch.setattr(M, "PLANTED", {**M.PLANTED, "tasks": 8, "clusters": 2})

    def fake(data, **kwargs):
        calls.append({"data": data, **kwargs})
        return dict(FAKE_ROUTED)

    monkeypatch.setattr(planted_moe, "train_routed", fake)
    return calls


@pytest.fixture(scope="module")
def planted():
    return make_planted_experts(8, 2, 2, input_dim=4, n_train=16, n_val=4, n_test=4, seed=0)


BASE = {"arm": "dselect_k", "lr": 3e-3, "seed": 2, "batch_size": 64, "epochs": 50,
        "patience": 7, "experts": "learned", "spare": 0, "gamma": 2.0, "entropy_reg": 0.5}
SPE, EPOCHS = 10, 3  # steps per epoch and warm-up epochs of the remedies below

# each remedy's gate options and routing learning-rate warm-up, written out (not derived
# from remedy_params or SCHEDULE_KEYS, whose loss is what these tests must see)
EXPECTED = {
    "none": ({}, 0),
    "entropy_ramp": ({"entropy_reg_start": 0.0, "schedule_steps": 30}, 0),
    "gamma_ramp": ({"gamma_start": 20.0, "schedule_steps": 30}, 0),
    "warmup_box": ({"warmup_steps": 30, "warmup_margin": 0.5}, 0),
    "gate_lr_warmup": ({}, 3),
}


def remedy_cell(remedy: str, **extra) -> dict:
    """A remedies-part cell as :meth:`Study.planted_remedies` builds it."""
    options = M.remedy_params(remedy, SPE, EPOCHS)
    if options.get("gamma_start") == "10x":
        options["gamma_start"] = 10 * BASE["gamma"]
    return {**BASE, "remedy": remedy, **options, **extra}


def test_the_remedies_cover_every_expected_one():
    assert set(EXPECTED) == set(M.REMEDIES)


@pytest.mark.parametrize("remedy", M.REMEDIES)
@pytest.mark.parametrize("experts, spare", [("learned", 0), ("frozen", 2)])
def test_each_remedy_reaches_the_gate_and_the_trainer(routed, planted, remedy, experts,
                                                      spare):
    out = run_planted_cell(planted, remedy_cell(remedy, experts=experts, spare=spare))
    (kw,) = routed
    options, warm = EXPECTED[remedy]
    assert kw["gate"] == "dselect_k" and kw["aux_per_task"] is True
    assert kw["gate_params"] == {"gamma": 2.0, "entropy_reg": 0.5, **options}
    assert kw["gate_warmup_epochs"] == warm and kw["gate_warmup_factor"] == 0.1
    if options:  # the options are the gate's own: a gate accepts them
        DSelectKGate(4, k=2, **kw["gate_params"])
    p = M.PLANTED
    assert kw["data"] is planted and "routing" not in kw
    assert (kw["num_experts"], kw["k"], kw["hidden"], kw["out"]) == (
        p["clusters"] * p["k"] + spare, p["k"], p["hidden"], p["out"])
    assert (kw["epochs"], kw["lr"], kw["batch_size"], kw["patience"], kw["seed"]) == (
        50, 3e-3, 64, 7, 2)
    if experts == "frozen":
        assert len(kw["frozen_experts"]["w1"]) == len(planted.meta["experts"]["w1"]) + spare
    else:
        assert kw["frozen_experts"] is None
    assert (out["val"], out["test"], out["best_epoch"], out["epochs_run"]) == (0.25, 0.5, 3, 4)
    assert out["saturation_history"] == FAKE_ROUTED["saturation_history"]
    assert out["best_in_last_10pct"] is False


def test_non_default_gate_options_and_trainer_warmup_pass_through(routed, planted):
    cell = {**BASE, "gamma_start": 8.0, "entropy_reg_start": 1.0, "schedule_steps": 5,
            "warmup_steps": 4, "warmup_margin": 0.3, "gate_warmup_epochs": 2,
            "gate_warmup_factor": 0.25}
    run_planted_cell(planted, cell)
    (kw,) = routed
    assert kw["gate_params"] == {"gamma": 2.0, "entropy_reg": 0.5, "gamma_start": 8.0,
                                 "entropy_reg_start": 1.0, "schedule_steps": 5,
                                 "warmup_steps": 4, "warmup_margin": 0.3}
    assert kw["gate_warmup_epochs"] == 2 and kw["gate_warmup_factor"] == 0.25


def test_topk_gets_its_balancing_weight_and_controls_get_no_gate(routed, planted):
    base = {k: v for k, v in BASE.items() if k not in ("gamma", "entropy_reg")}
    run_planted_cell(planted, {**base, "arm": "topk", "importance_reg": 0.1})
    run_planted_cell(planted, {**base, "arm": "oracle"})
    topk, oracle = routed
    assert topk["gate"] == "topk" and topk["gate_params"] == {"importance_reg": 0.1}
    assert topk["aux_per_task"] is True
    assert "gate" not in oracle and "gate_params" not in oracle
    assert oracle["routing"].shape == (M.PLANTED["tasks"], M.PLANTED["clusters"] * 2)


# -- real cells: the layouts reach compactnn mtl

FAKE_METRICS = {"val_mean_loss": 0.4, "test_mean_accuracy": 0.8, "val_watch_loss": 0.3,
                "test_watch_auc": 0.9, "best_epoch": 5, "epoch": 7,
                "mean_experts_per_example": 1.5,
                "val": {"a": {"loss": 0.4}}, "test": {"a": {"accuracy": 0.8}}}


@pytest.fixture
def arm(monkeypatch):
    """``run_arm`` replaced: every call's ``(out_dir, overrides, data)`` is appended;
    it returns ``arm.metrics`` (FAKE_METRICS unless a test sets it)."""
    class Recorder(list):
        metrics = FAKE_METRICS

    calls = Recorder()

    def fake(out_dir, overrides, data=None):
        calls.append((out_dir, list(overrides), data))
        return dict(calls.metrics)

    monkeypatch.setattr(tuned, "run_arm", fake)
    return calls


def overrides_of(calls) -> tuple[dict[str, str], MTLConfig]:
    """The single call's overrides as a dict (each key once) and the config they build,
    as ``run_arm`` builds it (an unknown or ill-typed key is refused there)."""
    ((_, overrides, _),) = calls
    keys = [o.split("=", 1)[0] for o in overrides]
    assert len(keys) == len(set(keys)), overrides
    cfg = build_config(MTLConfig, parse_overrides(
        ["progress=false", "save_model=false", "resume=false", "out=x", *overrides]))
    return dict(o.split("=", 1) for o in overrides), cfg


REAL_CELL = {"gate": "dselect_k", "lr": 3e-4, "batch_size": 256, "epochs": 15,
             "patience": 8, "seed": 3}


def test_multi_fashion_layout(arm):
    data = object()
    out = run_real_cell(data, {**REAL_CELL, "dataset": "fashion", "gamma": 5.0,
                               "entropy_reg": 0.1})
    ov, cfg = overrides_of(arm)
    assert arm[0][2] is data
    assert cfg.data.name == "multi_fashion_mnist"
    assert (cfg.experts.num, cfg.experts.arch) == (4, "lenet")
    assert (cfg.gate.per_example, cfg.gate.k, cfg.gate.name) == (True, 2, "dselect_k")
    assert (cfg.gate.gamma, cfg.gate.entropy_reg) == (5.0, 0.1)
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (3e-4, 256, 15)
    assert (cfg.early_stop.patience, cfg.early_stop.metric) == (8, "val_mean_loss")
    assert cfg.seed == 3
    assert "gate.importance_reg" not in ov
    assert out["val"] == 0.4 and out["test"] == 0.8
    assert (out["best_epoch"], out["epochs_run"], out["experts_per_example"]) == (5, 7, 1.5)
    assert out["val_a_loss"] == 0.4 and out["test_a_accuracy"] == 0.8
    assert out["best_in_last_10pct"] is False


def test_movielens_layout_names_its_data(arm):
    run_real_cell(None, {**REAL_CELL, "dataset": "movielens", "data": "movielens_1m",
                         "gate": "topk", "lr": 1.6e-4, "batch_size": 512, "epochs": 40,
                         "importance_reg": 0.01})
    ov, cfg = overrides_of(arm)
    assert cfg.data.name == "movielens_1m"
    assert (cfg.experts.num, cfg.experts.embedding_dim, cfg.experts.dropout) == (16, 128, 0.5)
    assert cfg.towers.hidden == [256] and cfg.loss.weights == [0.9, 0.1]
    assert (cfg.gate.per_example, cfg.gate.k, cfg.gate.name) == (True, 2, "topk")
    assert cfg.gate.importance_reg == 0.01
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.epochs) == (1.6e-4, 512, 40)
    assert cfg.early_stop.metric == "val_watch_loss"
    # gate options only when the cell gives them
    assert "gate.gamma" not in ov and "gate.entropy_reg" not in ov


def test_movielens_defaults_to_the_100k_sample_and_reads_its_metrics(arm):
    out = run_real_cell(None, {**REAL_CELL, "dataset": "movielens", "gate": "softmax",
                               "epochs": 8})
    ov, cfg = overrides_of(arm)
    assert cfg.data.name == "movielens" and cfg.gate.name == "softmax"
    assert not any(k.startswith("gate.") and k not in ("gate.per_example", "gate.k",
                                                       "gate.name") for k in ov)
    assert out["val"] == 0.3 and out["test"] == 0.9
    assert out["best_in_last_10pct"] is False  # best epoch 5 of a cap of 8, run 7


def test_a_run_at_its_cap_with_a_late_best_epoch_is_noted(arm):
    arm.metrics = {**FAKE_METRICS, "best_epoch": 10, "epoch": 10}
    out = run_real_cell(None, {**REAL_CELL, "dataset": "fashion", "epochs": 10})
    assert out["best_in_last_10pct"] is True


def test_a_missing_validation_metric_gives_nan(arm):
    arm.metrics = {k: v for k, v in FAKE_METRICS.items() if k != "val_mean_loss"}
    out = run_real_cell(None, {**REAL_CELL, "dataset": "fashion"})
    assert math.isnan(out["val"]) and out["test"] == 0.8


def test_a_signalled_run_raises_and_is_not_a_failed_cell(arm):
    arm.metrics = {**FAKE_METRICS, "signal": int(signal.SIGTERM)}
    with pytest.raises(RunInterrupted) as err:
        run_real_cell(None, {**REAL_CELL, "dataset": "fashion"})
    assert err.value.signum == signal.SIGTERM
    threads = torch.get_num_threads()
    try:  # (timed sets one thread)
        with pytest.raises(RunInterrupted):
            timed(lambda p: run_real_cell(None, p))({**REAL_CELL, "dataset": "movielens"})
    finally:
        torch.set_num_threads(threads)


# -- the study's real data

@pytest.fixture
def loaders(monkeypatch):
    """Both loaders replaced: every call's ``(name, kwargs)`` is appended; each returns a
    fresh object."""
    from compactnn.data import movielens, multi_fashion_mnist

    calls: list[tuple[str, dict]] = []

    def record(name):
        def load(*args, **kwargs):
            assert not args  # everything by keyword
            calls.append((name, kwargs))
            return object()
        return load

    monkeypatch.setattr(movielens, "load_movielens", record("movielens"))
    monkeypatch.setattr(multi_fashion_mnist, "load_multi_fashion_mnist", record("fashion"))
    return calls


@pytest.mark.parametrize("which", ["movielens", "movielens_1m"])
def test_movielens_is_loaded_ids_only_from_the_studys_data(tmp_path, loaders, which):
    study = M.Study(tmp_path, log=lambda m: None, movielens_data=which)
    data = study.real_data("movielens")
    assert study.real_data("movielens") is data  # loaded once
    assert loaders == [("movielens", {"seed": 0, "ids_only": True, "dataset": which})]


def test_multi_fashion_is_loaded_at_the_studys_sizes(tmp_path, loaders):
    study = M.Study(tmp_path, log=lambda m: None)
    data = study.real_data("fashion")
    r = M.REAL["fashion"]
    assert loaders == [("fashion", {"seed": 0, "max_train": r["max_train"],
                                    "max_val": r["max_eval"], "max_test": r["max_eval"]})]
    study.real_data("movielens")  # one data set is kept at a time
    assert study.real_data("fashion") is not data and len(loaders) == 3


def test_a_real_cell_trains_on_the_loaded_data(tmp_path, loaders, arm):
    study = M.Study(tmp_path, log=lambda m: None, movielens_data="movielens_1m")
    cell = study._real_base("movielens", "dselect_k", 5e-5, 0, 12, gamma=10.0,
                            entropy_reg=0.1)
    study.real_cell(cell)
    ov, cfg = overrides_of(arm)
    assert arm[0][2] is study.real_data("movielens")
    assert cfg.data.name == "movielens_1m" and cfg.gate.gamma == 10.0
    assert loaders[0][1]["dataset"] == "movielens_1m"
