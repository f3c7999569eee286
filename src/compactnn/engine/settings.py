"""The run-level keys every task config shares (``seed``, ``out``, ``resume``...),
their validation, and their translation into the loop's :class:`LoopConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from compactnn.config import ConfigError, config_to_dict
from compactnn.engine.early_stop import EarlyStopConfig
from compactnn.engine.loop import LoopConfig

__all__ = ["RUN_KEYS", "RunConfig", "loop_config"]

# Keys that may change between an interrupted run and its resume.
RUN_KEYS = frozenset({"resume", "stop_after_steps", "progress", "out", "device", "save_model"})


@dataclass
class RunConfig:
    """Base of the task configs: the keys of a run rather than of a method."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = "runs/run"
    resume: bool = True  # continue from out/checkpoint.safetensors when present
    checkpoint_every: int = 1  # epochs
    stop_after_steps: int | None = None  # save and stop early (to test resuming)
    eval_batch_size: int = 1000
    deterministic: bool = True
    progress: bool = True
    save_model: bool = True  # write out/model.safetensors at the end
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)  # off by default

    def validate_run(self) -> None:
        """Check the run-level keys (the task configs' ``validate`` calls it)."""
        checks = [
            (self.checkpoint_every >= 1,
             f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.eval_batch_size >= 1,
             f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.stop_after_steps is None or self.stop_after_steps >= 1,
             f"stop_after_steps must be >= 1, got {self.stop_after_steps}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        self.early_stop.validate()


def loop_config(cfg: RunConfig, *, epochs: int, batch_size: int, desc: str,
                tensorboard: bool = True) -> LoopConfig:
    """The loop settings of a task config."""
    return LoopConfig(epochs=epochs, batch_size=batch_size, seed=cfg.seed, out=cfg.out,
                      resume=cfg.resume, checkpoint_every=cfg.checkpoint_every,
                      stop_after_steps=cfg.stop_after_steps, progress=cfg.progress, desc=desc,
                      device=cfg.device, deterministic=cfg.deterministic,
                      tensorboard=tensorboard, save_model=cfg.save_model,
                      early_stop=cfg.early_stop,
                      config=config_to_dict(cfg), run_keys=RUN_KEYS)
