"""``compactnn mtl``'s DSelect-k remedy options: checked before any work, passed to the
gate bank."""

from __future__ import annotations

import pytest

from compactnn.config import ConfigError, build_config, parse_overrides
from compactnn.data.multitask import TaskSpec
from compactnn.tasks.mtl import MTLConfig
from compactnn.tasks.mtl.model import MTLModel


def build(*overrides: str) -> MTLConfig:
    return build_config(MTLConfig, parse_overrides(list(overrides)))


@pytest.mark.parametrize("overrides, message", [
    (["gate.name=topk", "gate.warmup_steps=3"], "gate.warmup_steps applies to dselect_k"),
    (["gate.name=softmax", "gate.gamma_start=3.0"], "gate.gamma_start applies to dselect_k"),
    (["gate.schedule_steps=5"], "schedules nothing"),
    (["gate.gamma_start=5.0"], "need gate.schedule_steps >= 1"),
    (["gate.entropy_reg_start=0.0"], "need gate.schedule_steps >= 1"),
    (["gate.gamma_start=1e9", "gate.schedule_steps=3"], "gate.gamma_start must be in"),
    (["gate.entropy_reg_start=-1.0", "gate.schedule_steps=3"], "entropy_reg_start must be"),
    (["gate.warmup_steps=-2"], "must be >= 0"),
    (["gate.warmup_steps=2", "gate.warmup_margin=1.0"], "warmup_margin must be in"),
    (["gate.warmup_steps=2", "gate.per_example=true"], "static gates only"),
    (["optim.gate_warmup_epochs=11"], "gate_warmup_epochs must be in \\[0, optim.epochs=10\\]"),
    (["optim.gate_warmup_epochs=-1"], "gate_warmup_epochs must be in"),
    (["optim.gate_warmup_factor=0.0"], "gate_warmup_factor must be in \\(0, 1\\]"),
    (["optim.gate_warmup_factor=1.5"], "gate_warmup_factor must be in"),
    (["optim.gate_warmup_factor=nan"], "gate_warmup_factor must be in"),
])
def test_bad_remedy_options_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(*overrides)


def test_remedy_options_reach_the_gate_bank():
    cfg = build("gate.gamma=0.5", "gate.gamma_start=4.0", "gate.entropy_reg=1.0",
                "gate.entropy_reg_start=0.0", "gate.schedule_steps=8", "gate.warmup_steps=2",
                "gate.warmup_margin=0.25", "experts.num=4")
    model = MTLModel((6,), [TaskSpec("a", "regression"), TaskSpec("b", "regression")],
                     experts=cfg.experts, gate=cfg.gate, towers=cfg.towers)
    bank = model.moe.gates
    c = bank.config()
    assert (c["gamma_start"], c["entropy_reg_start"], c["schedule_steps"]) == (4.0, 0.0, 8)
    assert (c["warmup_steps"], c["warmup_margin"]) == (2, 0.25)
    assert bank.current() == (4.0, 0.0, True)
    assert "moe.gates.steps_done" in model.state_dict()


def _lrs_per_step(cfg):
    """The learning rate of each parameter group at every optimizer step of a run."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from compactnn.tasks.mtl import train_mtl

    seen = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        result = train_mtl(cfg)
    finally:
        hook.remove()
    return seen, result


TINY = ["data.name=clustered", "data.num_tasks=4", "data.num_clusters=2", "data.n_train=128",
        "data.n_val=32", "data.n_test=32", "data.input_dim=6", "experts.num=4",
        "experts.hidden=[8]", "experts.out=4", "towers.hidden=[4]", "optim.batch_size=32",
        "optim.epochs=3", "optim.lr=0.01", "progress=false", "save_model=false",
        "gate.name=dselect_k"]


def test_routing_warmup_slows_only_the_gates_for_its_epochs(tmp_path):
    cfg = build(*TINY, "optim.gate_warmup_epochs=2", "optim.gate_warmup_factor=0.25",
                "optim.schedule=cosine", f"out={tmp_path / 'a'}")
    lrs, _ = _lrs_per_step(cfg)
    spe = 128 // 32
    assert len(lrs) == 3 * spe
    from compactnn.engine import lr_lambda

    base = lr_lambda("cosine", 3 * spe)
    for step, (experts_lr, gates_lr) in enumerate(lrs):
        assert experts_lr == pytest.approx(0.01 * base(step), abs=1e-12)
        factor = 0.25 if step < 2 * spe else 1.0
        assert gates_lr == pytest.approx(0.01 * base(step) * factor, abs=1e-12)


def test_routing_warmup_off_or_at_factor_one_changes_nothing(tmp_path):
    import torch

    _, plain = _lrs_per_step(build(*TINY, f"out={tmp_path / 'plain'}"))
    _, one = _lrs_per_step(build(*TINY, "optim.gate_warmup_epochs=3",
                                 "optim.gate_warmup_factor=1.0", f"out={tmp_path / 'one'}"))
    _, slow = _lrs_per_step(build(*TINY, "optim.gate_warmup_epochs=3",
                                  f"out={tmp_path / 'slow'}"))
    a, b, c = (r.model.state_dict() for r in (plain, one, slow))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "gate" in k)
