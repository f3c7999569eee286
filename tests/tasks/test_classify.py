"""The training command: config validation, determinism, exact resume, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch as st
import torch

from compactnn.cli import main
from compactnn.config import ConfigError, build_config, parse_overrides
from compactnn.tasks.classify import TrainConfig, train

BASE = ["data.name=digits", "model.name=mlp", "model.hidden=64,64,64", "optim.batch_size=32",
        "optim.epochs=2", "progress=false", "optim.lr=0.05"]


def make(tmp_path: Path, *extra: str, out: str = "run") -> TrainConfig:
    return build_config(TrainConfig, parse_overrides([*BASE, f"out={tmp_path / out}", *extra]))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict, exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_deterministic_for_a_fixed_seed(tmp_path):
    r1 = train(make(tmp_path, "lowrank.param_ratio=0.5", out="a"))
    r2 = train(make(tmp_path, "lowrank.param_ratio=0.5", out="b"))
    assert_same(weights(r1.model), weights(r2.model))
    assert r1.metrics["test_accuracy"] == r2.metrics["test_accuracy"]
    r3 = train(make(tmp_path, "lowrank.param_ratio=0.5", "seed=1", out="c"))
    assert not torch.equal(r1.model.head.weight, r3.model.head.weight)


@pytest.mark.parametrize("extra", [
    ["lowrank.param_ratio=0.4", "lowrank.frobenius_decay=1e-3"],
    ["optim.name=adamw", "optim.lr=1e-3"],
])
def test_resume_mid_epoch_is_exact(tmp_path, extra):
    full = train(make(tmp_path, *extra, out="full"))
    # Stop in the middle of the first epoch (digits: 34 steps per epoch at batch 32).
    stopped = train(make(tmp_path, *extra, "stop_after_steps=20", out="resumed"))
    assert not stopped.metrics["finished"] and stopped.metrics["step"] == 20
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    resumed = train(make(tmp_path, *extra, out="resumed"))
    assert resumed.metrics["finished"]
    assert_same(weights(full.model), weights(resumed.model))
    assert full.metrics["test_accuracy"] == resumed.metrics["test_accuracy"]
    # one CSV row per epoch, no duplicates from the interrupted run
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2


def test_resume_refuses_a_different_config(tmp_path):
    train(make(tmp_path, "stop_after_steps=5", out="x"))
    with pytest.raises(ConfigError, match="different config"):
        train(make(tmp_path, "model.hidden=16,16", out="x"))


def test_outputs_written(tmp_path):
    train(make(tmp_path, "lowrank.rank=4", out="o"))
    out = tmp_path / "o"
    for f in ("config.json", "metrics.csv", "checkpoint.safetensors", "model.safetensors",
              "result.json", "factorize_report.md"):
        assert (out / f).exists(), f
    result = json.loads((out / "result.json").read_text())
    assert result["params"] < result["dense_params"]
    assert 0 <= result["test_accuracy"] <= 1


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
    ("optim.lr=fast", "optim.lr='fast': expected a number"),
    ("optim.epochs=0", "optim.epochs must be >= 1"),
    ("model.name=vgg", "expected one of"),
    ("lowrank.param_ratio=1.5", "lowrank.param_ratio must be in"),
    ("deterministic=maybe", "expected true or false"),
    ("nosuchsection.key=1", "unknown config key 'nosuchsection'"),
])
def test_config_errors(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        make(tmp_path, override)


def test_cli_reports_config_errors_in_one_line(capsys):
    assert main(["train", "optim.lr=fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_cli_print_config(capsys, tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[optim]\nlr = 0.2\n[model]\nname = "resnet20"\n')
    assert main(["train", "--config", str(cfg_file), "optim.epochs=3", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.2 and cfg["optim"]["epochs"] == 3
    assert cfg["model"]["name"] == "resnet20"


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun test uses Linux loopback")
def test_ddp_two_processes_match_single_process(tmp_path):
    """Two gloo CPU processes under torchrun end with identical weights, equal to a
    single process on the same global batch."""
    worker = Path(__file__).with_name("ddp_worker.py")
    common = [*BASE, "optim.epochs=1", "lowrank.param_ratio=0.5", "lowrank.frobenius_decay=1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = tmp_path / "single"
    subprocess.run([sys.executable, str(worker), str(single), *common, f"out={tmp_path / 's'}"],
                   check=True, env=env, timeout=300)
    multi = tmp_path / "multi"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node=2", str(worker), str(multi), *common,
                    f"out={tmp_path / 'm'}"], check=True, env=env, timeout=300)
    ref = st.load_file(f"{single}.rank0")
    r0, r1 = st.load_file(f"{multi}.rank0"), st.load_file(f"{multi}.rank1")
    assert_same(r0, r1)  # DDP keeps ranks bit-identical
    assert_same(ref, r0, exact=False)  # same steps as one process, up to summation order


@pytest.mark.parametrize("extra", [
    ["sparse.method=iht", "sparse.param_ratio=0.5"],
    ["sparse.method=imp", "sparse.param_ratio=0.5", "sparse.rounds=2", "optim.epochs=3"],
    ["sparse.method=imp", "sparse.param_ratio=0.5", "sparse.rounds=1", "sparse.rewind=true"],
])
def test_sparse_baselines_reach_budget_and_resume_exactly(tmp_path, extra):
    full = train(make(tmp_path, *extra, out="full"))
    budget = int(0.5 * full.metrics["dense_params"])
    assert full.metrics["nonzero_params"] <= budget
    # masks keep exactly the budget (+ rare zeros)
    assert full.metrics["nonzero_params"] >= budget - 50
    train(make(tmp_path, *extra, "stop_after_steps=40", out="resumed"))
    resumed = train(make(tmp_path, *extra, out="resumed"))
    assert_same(weights(full.model), weights(resumed.model))


def test_lowrank_and_sparse_together_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="separate methods"):
        make(tmp_path, "lowrank.param_ratio=0.5", "sparse.method=iht")
