"""The tuned reproductions' plumbing: parameters reach the engine's config, and the whole
protocol runs end to end through ``compactnn mtl`` with early stopping."""

from __future__ import annotations

import json

import pytest

from compactnn.data.synthetic import make_mmoe_synthetic
from compactnn.experiments import tuned
from compactnn.experiments.mtl_synthetic import gate_spaces
from compactnn.experiments.tuned import EngineRun, report_tables, run_tuned
from compactnn.tune import LogUniform, Method


def test_engine_run_maps_params_to_config_keys(monkeypatch, tmp_path):
    seen = {}

    def fake(out_dir, overrides, data):
        seen["out"], seen["overrides"], seen["data"] = out_dir, overrides, data
        return {"val_x": 0.5, "test_x": 0.25, "epoch": 7, "best_epoch": 4,
                "mean_experts_per_example": 2.0, "train_seconds": 1.0, "extra": 3}

    monkeypatch.setattr(tuned, "run_arm", fake)
    run = EngineRun(tmp_path, ["a=1"], lambda s: f"data{s}", "val_x", "test_x",
                    {"e": lambda m: m["extra"] * 2})
    out = run("topk", {"lr": 0.01, "noisy": False, "batch_size": 256}, 3)
    assert seen["data"] == "data3"
    assert seen["overrides"] == ["a=1", "gate.name=topk", "seed=3", "optim.lr=0.01",
                                 "gate.noisy=false", "optim.batch_size=256"]
    assert out == {"val": 0.5, "test": 0.25, "best_epoch": 4, "epochs_run": 7,
                   "experts_per_example": 2.0, "train_seconds": 1.0, "e": 6}
    # the same parameters always land in the same folder, other ones elsewhere
    first = seen["out"]
    run("topk", {"batch_size": 256, "noisy": False, "lr": 0.01}, 3)
    assert seen["out"] == first
    run("topk", {"lr": 0.02, "noisy": False, "batch_size": 256}, 3)
    assert seen["out"] != first
    with pytest.raises(ValueError, match="no config key"):
        run("topk", {"momentum": 0.9}, 0)


def test_a_run_stopped_by_a_signal_stops_the_search_without_using_a_slot(monkeypatch,
                                                                          tmp_path):
    calls = []

    def fake(out_dir, overrides, data):
        calls.append(overrides)
        if len(calls) == 2:  # the second trial is cut off by SIGTERM (the engine saved)
            return {"signal": 15, "epoch": 1}
        return {"val_x": 0.5 + 0.01 * len(calls), "test_x": 0.1, "epoch": 2}

    monkeypatch.setattr(tuned, "run_arm", fake)
    run = EngineRun(tmp_path / "runs", [], lambda s: None, "val_x", "test_x")
    methods = {"softmax": Method({"lr": LogUniform(1e-3, 1e-2)})}
    with pytest.raises(KeyboardInterrupt) as err:
        run_tuned(tmp_path, methods, run, n_trials=3, seeds=[0], direction="minimize")
    assert err.value.signum == 15
    # resuming runs the interrupted slot again and ends with exactly 3 counted trials
    rep = run_tuned(tmp_path, methods, run, n_trials=3, seeds=[0], direction="minimize")
    info = rep.methods["softmax"]
    assert (info["n_trials"], info["n_failed"]) == (3, 0)
    assert calls[1] == calls[2]  # the same configuration, drawn again for the same slot
    assert len(calls) == 5  # 3 trials + the interrupted one + 1 final seed


def test_every_gate_space_maps_to_the_config():
    for m in gate_spaces().values():
        assert set(m.space) <= set(tuned.PARAM_KEYS) and m.start == ()
    # with defaults, each gate's start is one valid point of its own space
    from compactnn.tune.space import check_config

    spaces = gate_spaces((512, 1024), (1e-4, 1e-2), defaults=True)
    for m in spaces.values():
        (start,) = m.start
        assert check_config("start", m.space, start) == start
        assert start["batch_size"] == 512 and start["lr"] == 1e-3
    assert spaces["dselect_k"].start[0]["gamma"] == 1.0


def test_protocol_end_to_end_with_the_engine(tmp_path):
    data = {s: make_mmoe_synthetic(n_train=256, n_val=64, n_test=64, seed=s) for s in (0, 1)}
    data[10_000] = make_mmoe_synthetic(n_train=256, n_val=64, n_test=64, seed=5)
    common = ["data.name=synthetic", "experts.num=4", "experts.hidden=[8]", "experts.out=4",
              "towers.hidden=[]", "gate.per_example=true", "gate.k=2", "optim.epochs=3",
              "optim.batch_size=64", "early_stop.patience=1",
              "early_stop.metric=val_mean_mse"]
    run = EngineRun(tmp_path / "runs", common, data.__getitem__, "val_mean_mse",
                    "test_mean_mse")
    methods = {"softmax": Method({"lr": LogUniform(1e-3, 1e-2)}),
               "topk": Method({"lr": LogUniform(1e-3, 1e-2),
                               "importance_reg": LogUniform(1e-3, 1.0)})}
    rep = run_tuned(tmp_path, methods, run, n_trials=2, seeds=[0, 1], direction="minimize")
    assert {m: i["n_trials"] for m, i in rep.methods.items()} == {"softmax": 2, "topk": 2}
    for m in methods:
        assert [r["seed"] for r in rep.final[m]] == [0, 1]
        assert all(1 <= r["best_epoch"] <= r["epochs_run"] <= 3 for r in rep.final[m])
        # the search trained with the tuning seed only, each final run with its own seed
        # (its data, its config), and reports that run's test split as test
        assert len(list((tmp_path / "runs").glob(f"{m}_s10000_*"))) == 2
        for rec in rep.final[m]:
            (folder,) = (tmp_path / "runs").glob(f"{m}_s{rec['seed']}_*")
            assert json.loads((folder / "config.json").read_text())["seed"] == rec["seed"]
            result = json.loads((folder / "result.json").read_text())
            assert (rec["val"], rec["test"]) == (result["val_mean_mse"],
                                                 result["test_mean_mse"])
            assert rec["test"] != rec["val"]
        assert rep.final[m][0]["test"] != rep.final[m][1]["test"]
    md = report_tables(rep, "softmax", [("test", True, "test MSE")], {"topk": "Top-k"})
    assert "| Top-k | 2 |" in md and "p (Holm)" in md
