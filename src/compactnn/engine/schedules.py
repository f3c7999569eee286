"""Learning-rate schedules as multipliers of the base rate per optimizer step
(for ``torch.optim.lr_scheduler.LambdaLR``).

The schedule runs in *phases*: each phase starts with a linear warm-up from
``1 / warmup_steps`` to 1, then decays by a half cosine to 0 at the phase's end
(or stays at 1 for ``"constant"``). A single phase is the usual warm-up + cosine;
iterative pruning restarts the schedule at each round by starting a new phase.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch

from compactnn._checks import check_choice, check_int

__all__ = ["lr_lambda", "lr_scheduler"]


def lr_lambda(schedule: Literal["cosine", "constant"], total_steps: int,
              warmup_steps: int = 0, phase_starts: Sequence[int] = (0,)
              ) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each step (see the module doc).
    ``phase_starts``: the first step of each phase (sorted, starting with 0)."""
    check_choice("schedule", schedule, ("cosine", "constant"))
    check_int("total_steps", total_steps, minimum=1)
    check_int("warmup_steps", warmup_steps, minimum=0)
    starts = [check_int("phase_starts", s, minimum=0) for s in phase_starts]
    if not starts or starts[0] != 0 or starts != sorted(starts):
        raise ValueError(f"phase_starts must be sorted and start at 0, got {list(phase_starts)}")
    ends = starts[1:] + [total_steps]

    def f(step: int) -> float:
        start, end = next((a, b) for a, b in zip(starts[::-1], ends[::-1], strict=True)
                          if step >= a)
        local = step - start
        if local < warmup_steps:
            return (local + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        span = max(end - start - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(local - warmup_steps, span) / span))

    return f


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: Literal["cosine", "constant"],
                 total_steps: int, warmup_steps: int = 0,
                 phase_starts: Sequence[int] = (0,)) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` scheduler following :func:`lr_lambda` (stepped once per step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(schedule, total_steps, warmup_steps, phase_starts))
