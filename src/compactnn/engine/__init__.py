"""The one training engine: a resumable, DDP-aware loop (:func:`run`) driven by a
small :class:`Task` protocol, with its checkpoints, logging, schedules and
evaluation. ``compactnn train`` and ``compactnn mtl`` are tasks
(:mod:`compactnn.tasks`); :func:`fit` trains a model on ready-made batches
through the same loop."""

from compactnn.engine.checkpoint import (
    check_same_config,
    checkpoint_state,
    load_checkpoint,
    save_checkpoint,
)
from compactnn.engine.control import RunClock, StopFlag, seed_everything
from compactnn.engine.distributed import DistInfo, init_distributed, shard, wrap_model
from compactnn.engine.early_stop import EarlyStopConfig, EarlyStopping
from compactnn.engine.evaluate import (
    batched,
    classification_metrics,
    evaluate,
    measure_latency,
    predict,
)
from compactnn.engine.fit import FitConfig, fit
from compactnn.engine.logger import MetricLogger
from compactnn.engine.loop import LoopConfig, Run, Task, run
from compactnn.engine.schedules import lr_lambda, lr_scheduler
from compactnn.engine.settings import RUN_KEYS, RunConfig, loop_config

__all__ = [
    "RUN_KEYS",
    "RunConfig",
    "loop_config",
    "DistInfo",
    "EarlyStopConfig",
    "EarlyStopping",
    "FitConfig",
    "LoopConfig",
    "MetricLogger",
    "Run",
    "RunClock",
    "StopFlag",
    "Task",
    "batched",
    "check_same_config",
    "checkpoint_state",
    "classification_metrics",
    "evaluate",
    "fit",
    "init_distributed",
    "load_checkpoint",
    "lr_lambda",
    "lr_scheduler",
    "measure_latency",
    "predict",
    "run",
    "save_checkpoint",
    "seed_everything",
    "shard",
    "wrap_model",
]
