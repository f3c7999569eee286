"""Process-level control of a training run: seeding, the stop flag raised by
SIGINT/SIGTERM, and a clock that survives interruptions."""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import numpy as np
import torch

__all__ = ["RunClock", "StopFlag", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (seeds code that uses the legacy global RNG)
    torch.manual_seed(seed)


class RunClock:
    """Training time across interruptions: ``clock()`` is the seconds spent
    before the last resume (``state["seconds"]`` of the checkpoint) plus those
    since this clock started."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.before = float((state or {}).get("seconds", 0.0))
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return round(self.before + time.perf_counter() - self.start, 3)


class StopFlag:
    """Context manager: SIGINT/SIGTERM set ``raised`` (instead of killing the
    process) so a training loop can save a checkpoint at its next step.
    ``signum`` is the signal received. With ``enabled=False`` signals keep
    their usual effect (a loop with nothing to save)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.raised = False
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if not self.enabled:
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.raised = True
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
