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
from compactnn.engine.evaluate import batched, evaluate
from compactnn.io import load_model
from compactnn.tasks.classify import TrainConfig, build_model, load_data, train

BASE = ["data.name=digits", "model.name=mlp", "model.hidden=64,64,64", "optim.batch_size=32",
        "optim.epochs=2", "progress=false", "optim.lr=0.05"]


def make(tmp_path: Path, *extra: str, out: str = "run") -> TrainConfig:
    return build_config(TrainConfig, parse_overrides([*BASE, f"out={tmp_path / out}", *extra]))


def test_deterministic_for_a_fixed_seed(tmp_path, assert_same_state):
    r1 = train(make(tmp_path, "lowrank.param_ratio=0.5", out="a"))
    r2 = train(make(tmp_path, "lowrank.param_ratio=0.5", out="b"))
    assert_same_state(r1.model, r2.model)
    assert r1.metrics["test_accuracy"] == r2.metrics["test_accuracy"]
    r3 = train(make(tmp_path, "lowrank.param_ratio=0.5", "seed=1", out="c"))
    assert not torch.equal(r1.model.head.weight, r3.model.head.weight)


@pytest.mark.parametrize("extra", [
    ["lowrank.param_ratio=0.4", "lowrank.frobenius_decay=1e-3"],
    ["optim.name=adamw", "optim.lr=1e-3"],
])
def test_resume_mid_epoch_is_exact(tmp_path, extra, assert_same_state):
    full = train(make(tmp_path, *extra, out="full"))
    # Stop in the middle of the first epoch (digits: 34 steps per epoch at batch 32).
    stopped = train(make(tmp_path, *extra, "stop_after_steps=20", out="resumed"))
    assert not stopped.metrics["finished"] and stopped.metrics["step"] == 20
    assert (tmp_path / "resumed" / "checkpoint.safetensors").exists()
    resumed = train(make(tmp_path, *extra, out="resumed"))
    assert resumed.metrics["finished"]
    assert_same_state(full.model, resumed.model)
    assert full.metrics["test_accuracy"] == resumed.metrics["test_accuracy"]
    # one CSV row per epoch, no duplicates from the interrupted run
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2


def test_resume_refuses_a_different_config(tmp_path):
    train(make(tmp_path, "stop_after_steps=5", out="x"))
    with pytest.raises(ConfigError, match="different config"):
        train(make(tmp_path, "model.hidden=16,16", out="x"))


def test_outputs_written(tmp_path):
    cfg = make(tmp_path, "lowrank.rank=4", out="o")
    train(cfg)
    out = tmp_path / "o"
    for f in ("config.json", "metrics.csv", "checkpoint.safetensors", "model.safetensors",
              "result.json", "factorize_report.md"):
        assert (out / f).exists(), f
    result = json.loads((out / "result.json").read_text())
    assert result["params"] < result["dense_params"]
    # the reported accuracy is the saved model's on the test split
    model = build_model(cfg.model, (1, 8, 8), 10)
    load_model(model, out / "model.safetensors")
    split = load_data(cfg.data, cfg.seed)
    acc = evaluate(model, batched(split.x_test, split.y_test, batch_size=64))["accuracy"]
    assert result["test_accuracy"] == pytest.approx(acc, abs=1e-9)


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=0.1", "unknown config key 'optim.lrr'"),
    ("optim.lr=fast", "optim.lr='fast': expected a number"),
    ("optim.epochs=0", "optim.epochs must be >= 1"),
    ("model.name=vgg", "expected one of"),
    ("lowrank.param_ratio=1.5", "lowrank.param_ratio must be in"),
    ("deterministic=maybe", "expected true or false"),
    ("nosuchsection.key=1", "unknown config key 'nosuchsection'"),
    ("optim.lr=inf", "optim.lr must be finite and > 0"),
    ("optim.lr=nan", "optim.lr must be finite and > 0"),
    ("optim.momentum=nan", r"optim.momentum must be in \[0, 1\)"),
    ("optim.momentum=1", r"optim.momentum must be in \[0, 1\)"),
    ("optim.weight_decay=inf", "optim.weight_decay must be finite and >= 0"),
    ("optim.label_smoothing=2", r"optim.label_smoothing must be in \[0, 1\)"),
    ("eval_batch_size=-5", "eval_batch_size must be >= 1"),
    ("eval_batch_size=0", "eval_batch_size must be >= 1"),
    ("model.hidden=0", "model.hidden must be a non-empty list of widths >= 1"),
    ("model.hidden=[]", "model.hidden must be a non-empty list"),
    ("lowrank.frobenius_decay=inf", "lowrank.frobenius_decay must be finite"),
    ("lowrank.rank=0", "lowrank.rank must be an int >= 1"),
    ("out=", "out must name a folder"),
    ("early_stop.patience=-1", "early_stop.patience must be >= 0"),
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
def test_ddp_two_processes_match_single_process(tmp_path, assert_same_state):
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
    assert_same_state(r0, r1)  # DDP keeps ranks bit-identical
    assert_same_state(ref, r0, exact=False)  # same steps as one process, up to summation order


@pytest.mark.parametrize("extra", [
    ["sparse.method=iht", "sparse.param_ratio=0.5"],
    ["sparse.method=imp", "sparse.param_ratio=0.5", "sparse.rounds=2", "optim.epochs=3"],
    ["sparse.method=imp", "sparse.param_ratio=0.5", "sparse.rounds=1", "sparse.rewind=true"],
])
def test_sparse_baselines_reach_budget_and_resume_exactly(tmp_path, extra, assert_same_state):
    full = train(make(tmp_path, *extra, out="full"))
    budget = int(0.5 * full.metrics["dense_params"])
    assert full.metrics["nonzero_params"] <= budget
    # masks keep exactly the budget (+ rare zeros)
    assert full.metrics["nonzero_params"] >= budget - 50
    train(make(tmp_path, *extra, "stop_after_steps=40", out="resumed"))
    resumed = train(make(tmp_path, *extra, out="resumed"))
    assert_same_state(full.model, resumed.model)


def test_lowrank_and_sparse_together_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="separate methods"):
        make(tmp_path, "lowrank.param_ratio=0.5", "sparse.method=iht")


def test_divergence_exits_nonzero_with_one_line(tmp_path, capsys):
    code = main(["train", *BASE, f"out={tmp_path / 'e'}", "optim.lr=1e30"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error: the training loss became nan at step")
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "e" / "result.json").exists()


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    from compactnn.engine import RunFolder

    with RunFolder(tmp_path / "busy"):
        assert main(["train", *BASE, f"out={tmp_path / 'busy'}"]) == 2
    err = capsys.readouterr().err
    assert "another run is using" in err and not (tmp_path / "busy" / "config.json").exists()


def test_a_signal_exits_with_128_plus_its_number(tmp_path, capsys, monkeypatch):
    import os
    import signal

    import compactnn.engine.loop as engine_loop

    class SignalOnEnter(engine_loop.StopFlag):
        def __enter__(self):
            super().__enter__()
            os.kill(os.getpid(), self.sent)
            return self

    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        SignalOnEnter.sent = sig
        monkeypatch.setattr(engine_loop, "StopFlag", SignalOnEnter)
        assert main(["train", *BASE, f"out={tmp_path / sig.name}"]) == code
        result = json.loads(capsys.readouterr().out)
        assert not result["finished"] and result["signal"] == sig
        assert (tmp_path / sig.name / "checkpoint.safetensors").exists()

