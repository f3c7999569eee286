"""Adam with parameter-relative learning rates, shared by the first-order solvers
of function-matching initialization.

Factors and biases of a layer live on very different scales; a learning rate
relative to each tensor's own scale makes one ``lr`` sensible for all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["relative_adam", "rms"]


def rms(t: Tensor) -> float:
    """Root mean square of ``t`` (in float64)."""
    return float(t.detach().double().square().mean().sqrt())


def relative_adam(params: list[Tensor], scales: list[float], lr: float, steps: int
                  ) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """Adam with learning rate ``lr * scale`` for each tensor (a scale of 0 counts
    as ``1e-12``), cosine-decayed to 0 over ``steps`` steps."""
    groups = [{"params": [p], "lr": lr * max(sc, 1e-12)}
              for p, sc in zip(params, scales, strict=True)]
    opt = torch.optim.Adam(groups)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
