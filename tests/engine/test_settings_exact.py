"""The run-level config keys exactly: defaults, each check's message, and loop_config
passing every key to the loop."""

from __future__ import annotations

import pytest

from compactnn.config import ConfigError
from compactnn.engine.early_stop import EarlyStopConfig
from compactnn.engine.settings import RUN_KEYS, RunConfig, loop_config


def test_defaults() -> None:
    c = RunConfig()
    assert (c.seed, c.device, c.out, c.resume, c.checkpoint_every, c.stop_after_steps,
            c.eval_batch_size, c.deterministic, c.progress, c.save_model) == (
        0, "auto", "runs/run", True, 1, None, 1000, True, True, True)
    assert c.early_stop == EarlyStopConfig()
    assert RUN_KEYS == {"resume", "stop_after_steps", "progress", "out", "device", "save_model"}
    c.validate_run()


@pytest.mark.parametrize(("change", "message"), [
    ({"out": "  "}, "out must name a folder, got an empty string"),
    ({"checkpoint_every": 0}, "checkpoint_every must be >= 1, got 0"),
    ({"eval_batch_size": 0}, "eval_batch_size must be >= 1, got 0"),
    ({"stop_after_steps": 0}, "stop_after_steps must be >= 1, got 0"),
])
def test_each_check_names_its_key(change, message) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        RunConfig(**change).validate_run()
    ok = {"out": "x", "checkpoint_every": 1, "eval_batch_size": 1, "stop_after_steps": 1}
    key = next(iter(change))
    RunConfig(**{key: ok[key]}).validate_run()  # the smallest accepted value passes


def test_loop_config_carries_every_run_key() -> None:
    stop = EarlyStopConfig()
    c = RunConfig(seed=7, device="cpu", out="o", resume=False, checkpoint_every=3,
                  stop_after_steps=5, deterministic=False, progress=True, save_model=False,
                  early_stop=stop)

    def hook(row):
        return None

    lc = loop_config(c, epochs=4, batch_size=16, desc="d", tensorboard=False, on_epoch_end=hook)
    assert (lc.epochs, lc.batch_size, lc.seed, lc.out, lc.resume, lc.checkpoint_every,
            lc.stop_after_steps, lc.progress, lc.desc, lc.device, lc.deterministic,
            lc.tensorboard, lc.save_model) == (4, 16, 7, "o", False, 3, 5, True, "d", "cpu",
                                               False, False, False)
    assert lc.early_stop is stop and lc.on_epoch_end is hook and lc.run_keys == RUN_KEYS
    assert lc.config["seed"] == 7 and lc.config["out"] == "o"
    assert loop_config(c, epochs=1, batch_size=1, desc="d").tensorboard is True
