"""Early stopping on a validation metric, with the best weights restored.

After each epoch the monitored column of the epoch's row (e.g. ``val_loss``) is
compared with the best value so far; an improvement (by more than
``min_delta``) records the value, the epoch and a copy of the weights, and
resets the count of bad epochs. Training stops once ``patience`` epochs in a row
brought no improvement, and the best weights are put back, so the final model
is the one the validation split preferred, not the last one. Everything the
rule needs (best value, epoch, bad-epoch count, best weights) is part of the
training checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

from compactnn.config import ConfigError

__all__ = ["EarlyStopConfig", "EarlyStopping"]


@dataclass
class EarlyStopConfig:
    patience: int = 0  # epochs without improvement before stopping; 0: off
    metric: str = "auto"  # a column of metrics.csv (e.g. val_loss); auto: the task's choice
    mode: Literal["auto", "min", "max"] = "auto"  # auto: max for accuracy / AUC, else min
    min_delta: float = 0.0  # smallest change that counts as an improvement
    restore_best: bool = True  # end with the weights of the best epoch

    @property
    def enabled(self) -> bool:
        return self.patience > 0

    def validate(self) -> None:
        if self.patience < 0:
            raise ConfigError(f"early_stop.patience must be >= 0, got {self.patience}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ConfigError(f"early_stop.min_delta must be finite and >= 0, got "
                              f"{self.min_delta}")
        if not self.metric:
            raise ConfigError("early_stop.metric must name a metric (or be 'auto')")


def _mode_for(metric: str) -> str:
    return "max" if any(k in metric for k in ("accuracy", "auc")) else "min"


class EarlyStopping:
    """The rule of the module doc; ``metric`` must be a real column name here."""

    def __init__(self, metric: str, patience: int, mode: str = "auto",
                 min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.metric, self.patience, self.min_delta = metric, patience, min_delta
        self.mode = _mode_for(metric) if mode == "auto" else mode
        if self.mode not in ("min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.best: float | None = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.best_weights: dict[str, Tensor] | None = None

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, row: dict[str, Any], epoch: int, model: nn.Module) -> bool:
        """Record epoch ``epoch``'s row; ``True`` when training should stop."""
        if self.metric not in row:
            shown = ", ".join(k for k in row if k not in ("epoch", "step", "seconds"))
            raise ConfigError(f"early_stop.metric={self.metric!r} is not a metric of this "
                              f"task; choose one of: {shown}")
        value = float(row[self.metric])
        if self._improves(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> bool:
        """Put the best weights back into ``model``; ``False`` when none were kept."""
        if self.best_weights is None:
            return False
        model.load_state_dict(self.best_weights)
        return True

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, f"best_{self.metric}": self.best}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state["best"]
        if best is not None and not isinstance(best, int | float):
            raise ValueError(f"early stopping state: best must be a number, got {best!r}")
        self.best = None if best is None else float(best)
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        weights = state["weights"]
        if weights is not None and not (isinstance(weights, dict) and all(
                isinstance(v, Tensor) for v in weights.values())):
            raise ValueError("early stopping state: weights must be a table of tensors")
        self.best_weights = weights
