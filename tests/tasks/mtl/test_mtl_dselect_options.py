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
