"""Learning-rate schedules as multipliers of the base rate per optimizer step
(for ``torch.optim.lr_scheduler.LambdaLR``).

The schedule runs in *phases*: each phase starts with a linear warm-up from
``1 / warmup_steps`` to 1, then decays by a half cosine to 0 at the phase's end
(``"cosine"``), stays at 1 (``"constant"``), or is multiplied by 0.1 once half
and again once three quarters of the phase's post-warm-up steps are done
(``"step"``, the step decay of the [FNL] recipe). A single phase is the usual
warm-up + decay; iterative pruning restarts the schedule at each round by
starting a new phase.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch

from compactnn._checks import check_choice, check_int

__all__ = ["SCHEDULES", "STEP_GAMMA", "STEP_MILESTONES", "lr_lambda", "lr_scheduler"]

SCHEDULES = ("cosine", "constant", "step")
STEP_MILESTONES = (0.5, 0.75)  # fractions of a phase's post-warm-up steps
STEP_GAMMA = 0.1


def lr_lambda(schedule: Literal["cosine", "constant", "step"], total_steps: int,
              warmup_steps: int = 0, phase_starts: Sequence[int] = (0,)
              ) -> Callable[[int], float]:
    """The multiplier of the base learning rate at each step (see the module doc).
    ``phase_starts``: the first step of each phase (sorted, starting with 0)."""
    check_choice("schedule", schedule, SCHEDULES)
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
        if schedule == "step":
            passed = sum(local - warmup_steps >= span * m for m in STEP_MILESTONES)
            return STEP_GAMMA ** passed
        return 0.5 * (1 + math.cos(math.pi * min(local - warmup_steps, span) / span))

    return f


def lr_scheduler(optimizer: torch.optim.Optimizer,
                 schedule: Literal["cosine", "constant", "step"], total_steps: int,
                 warmup_steps: int = 0, phase_starts: Sequence[int] = (0,),
                 group_scale: Mapping[int, tuple[float, int]] | None = None
                 ) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` scheduler following :func:`lr_lambda` (stepped once per step).

    ``group_scale``: ``{group index: (factor, steps)}`` multiplies that parameter group's
    rate by ``factor`` for its first ``steps`` optimizer steps (on top of the schedule),
    e.g. a slower start for a mixture's gates."""
    base = lr_lambda(schedule, total_steps, warmup_steps, phase_starts)
    scale = dict(group_scale or {})
    n = len(optimizer.param_groups)
    for g, (factor, steps) in scale.items():
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < n:
            raise ValueError(f"group_scale names group {g!r}; the optimizer has {n} groups")
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"group_scale[{g}] factor must be finite and > 0, got {factor!r}")
        check_int(f"group_scale[{g}] steps", steps, minimum=0)

    def scaled(factor: float, steps: int) -> Callable[[int], float]:
        return lambda step: base(step) * (factor if step < steps else 1.0)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [scaled(*scale[g]) if g in scale else base for g in range(n)])
