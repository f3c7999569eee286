"""Keeping DSelect-k's routing alive: schedules of its entropy weight and smooth-step
width, a warm-up that keeps static selector logits off the smooth-step's boundary, and
the saturation fraction that shows when routing has frozen.

A selector logit ``z`` with ``|z| >= gamma / 2`` sits where the smooth-step is flat
(exactly 0 or 1): its gradient is exactly zero, so a gate whose logits have all
saturated never changes its routing again. The options below (of
:class:`~compactnn.moe.DSelectKGate` and its bank) are functions of the number of
training steps the gate has taken (training-mode forward calls, counted in a buffer, so
they resume with a checkpoint):

* ``entropy_reg_start`` with ``schedule_steps``: the entropy weight moves linearly from
  ``entropy_reg_start`` to ``entropy_reg`` over the first ``schedule_steps`` steps (the
  official regularizer takes its weight from a schedule of the step count);
* ``gamma_start`` with ``schedule_steps``: the smooth-step width moves geometrically from
  ``gamma_start`` to ``gamma`` (a wide start keeps more logits in the cubic region);
* ``warmup_steps`` (static gates): before each of the first ``warmup_steps`` training
  forwards, the selector logits are projected onto ``[-b, b]`` with
  ``b = warmup_margin * gamma_t / 2``, where the smooth-step's slope is at least
  ``1.5 (1 - warmup_margin^2) / gamma_t`` (projected gradient descent on a box strictly
  inside the smooth region).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from compactnn._checks import check_float, check_int

__all__ = ["SCHEDULE_DEFAULTS", "check_schedule_options", "geometric_ramp", "linear_ramp",
           "non_default", "project_logits_", "saturation_fraction", "scheduled_values",
           "uses_steps"]

#: The schedule options and their defaults (the defaults switch everything off).
SCHEDULE_DEFAULTS: dict[str, Any] = {"entropy_reg_start": None, "gamma_start": None,
                                     "schedule_steps": 0, "warmup_steps": 0,
                                     "warmup_margin": 0.5}


def linear_ramp(start: float, end: float, step: int, steps: int) -> float:
    """``start`` at step 0, ``end`` from step ``steps`` on, linear in between."""
    if steps <= 0 or step >= steps:
        return float(end)
    return float(start + (end - start) * step / steps)


def geometric_ramp(start: float, end: float, step: int, steps: int) -> float:
    """``start`` at step 0, ``end`` from step ``steps`` on, linear in the logarithm in
    between (both must be > 0)."""
    if steps <= 0 or step >= steps:
        return float(end)
    return float(math.exp(math.log(start) + (math.log(end) - math.log(start)) * step / steps))


def saturation_fraction(z: Tensor, gamma: float) -> float:
    """The fraction of selector logits ``z`` on the smooth-step's flat part,
    ``|z / gamma| >= 1/2`` (computed as the smooth-step clamps its input, so a logit
    counts as saturated exactly when its gradient through the smooth-step is zero)."""
    if not isinstance(z, Tensor) or z.numel() == 0:
        raise ValueError("z must be a non-empty tensor of selector logits")
    return int(((z.detach() / gamma).abs() >= 0.5).sum()) / z.numel()


def check_schedule_options(options: dict[str, Any], *, static: bool,
                           check_gamma) -> dict[str, Any]:
    """The schedule options validated, with defaults filled in; ValueError for an
    option that would do nothing or cannot apply."""
    unknown = sorted(set(options) - set(SCHEDULE_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown DSelect-k schedule option(s) {unknown}")
    o = {**SCHEDULE_DEFAULTS, **options}
    o["schedule_steps"] = check_int("schedule_steps", o["schedule_steps"], minimum=0)
    o["warmup_steps"] = check_int("warmup_steps", o["warmup_steps"], minimum=0)
    o["warmup_margin"] = check_float("warmup_margin", o["warmup_margin"], 0.0, 1.0,
                                     min_inclusive=False, max_inclusive=False)
    if o["entropy_reg_start"] is not None:
        o["entropy_reg_start"] = check_float("entropy_reg_start", o["entropy_reg_start"], 0.0)
    if o["gamma_start"] is not None:
        o["gamma_start"] = check_gamma(o["gamma_start"])
    ramps = o["entropy_reg_start"] is not None or o["gamma_start"] is not None
    if ramps and o["schedule_steps"] == 0:
        raise ValueError("entropy_reg_start / gamma_start need schedule_steps >= 1 (the "
                         "length of the ramp), got schedule_steps=0")
    if o["schedule_steps"] > 0 and not ramps:
        raise ValueError(f"schedule_steps={o['schedule_steps']} schedules nothing: give "
                         "entropy_reg_start and/or gamma_start")
    if o["warmup_steps"] > 0 and not static:
        raise ValueError(f"warmup_steps={o['warmup_steps']} applies to static gates only "
                         "(a per-example gate's logits are not parameters to project)")
    return o


def non_default(options: dict[str, Any]) -> dict[str, Any]:
    """The options that differ from :data:`SCHEDULE_DEFAULTS` (what a gate's config shows)."""
    return {k: v for k, v in options.items() if v != SCHEDULE_DEFAULTS[k]}


def scheduled_values(options: dict[str, Any], gamma: float, entropy_reg: float,
                     step: int) -> tuple[float, float, bool]:
    """``(gamma_t, entropy_reg_t, warming_up)`` at training step ``step``."""
    n = options["schedule_steps"]
    g = gamma if options["gamma_start"] is None else geometric_ramp(
        options["gamma_start"], gamma, step, n)
    e = entropy_reg if options["entropy_reg_start"] is None else linear_ramp(
        options["entropy_reg_start"], entropy_reg, step, n)
    return g, e, step < options["warmup_steps"]


def uses_steps(options: dict[str, Any]) -> bool:
    return options["schedule_steps"] > 0 or options["warmup_steps"] > 0


@torch.no_grad()
def project_logits_(z: Tensor, gamma: float, margin: float) -> None:
    """Clamp ``z`` in place onto ``[-margin gamma / 2, margin gamma / 2]``."""
    bound = margin * gamma / 2
    z.clamp_(-bound, bound)
