"""Iterative hard thresholding, the sparse-training baseline; see
:mod:`compactnn.sparse` for the conventions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from compactnn._checks import check_choice, check_int
from compactnn.sparse.masks import (
    SCOPES,
    Patterns,
    SparsityMasks,
    magnitude_masks,
    prunable_weights,
    weights_by_name,
)

__all__ = ["IterativeHardThresholding"]


class IterativeHardThresholding:
    """Sparse training by iterative hard thresholding ([IHT], *A Recovery
    Guarantee for Sparse Neural Networks*).

    The recipe: each optimizer step is an ordinary dense gradient step on every
    weight (zeros included); ``after_step`` then applies ``H_s``: keep the
    ``keep`` (= s) weights of largest magnitude over all pruned layers, zero
    the rest. During the first ``warmup_steps`` steps nothing is thresholded
    (dense warm-up); from step ``warmup_steps + 1`` on, every step ends with
    exactly ``keep`` prunable weights alive. Call ``threshold_(model)`` before
    training to start from ``H_s`` of the initialization.

    Args:
        model: the model (wrappers allowed, see the module docstring).
        keep: s, the prunable weights kept (:func:`target_keep_for_param_ratio`).
        include, exclude: which layers are thresholded (``factorize``'s patterns).
        warmup_steps: dense steps before thresholding begins, >= 0.
        scope: ``"global"`` (top-s over all layers together) or ``"layer"`` (each
            layer keeps the same fraction). From a fresh initialization global
            ranking can empty a layer whose init scale is small (e.g. a wide first
            layer), so ``"layer"`` is the safer choice for training from scratch.
    """

    def __init__(self, model: nn.Module, keep: int, include: Patterns = None,
                 exclude: Patterns = None, warmup_steps: int = 0,
                 scope: str = "global") -> None:
        self.scope = check_choice("scope", scope, SCOPES)
        weights = prunable_weights(model, include, exclude)
        if not weights:
            raise ValueError("no prunable weight selected")
        self.names = list(weights)
        self.shapes = {n: w.shape for n, w in weights.items()}
        self.total = sum(w.numel() for w in weights.values())
        self.keep = check_int("keep", keep, 1, self.total)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)
        self.steps = 0
        self.masks: SparsityMasks | None = None  # the support after the last threshold

    @property
    def density(self) -> float:
        return self.keep / self.total

    @property
    def active(self) -> bool:
        """Whether the next ``after_step`` thresholds."""
        return self.steps >= self.warmup_steps

    def threshold_(self, model: nn.Module) -> SparsityMasks:
        """Apply ``H_s`` to ``model`` now, in place; returns the new support."""
        weights = weights_by_name(model, self.shapes, "thresholder")
        self.masks = SparsityMasks(magnitude_masks(weights, self.keep, self.scope))
        self.masks.apply_(model)
        return self.masks

    def after_step(self, model: nn.Module) -> bool:
        """Count one optimizer step and, past the warm-up, hard-threshold;
        returns whether it thresholded."""
        self.steps += 1
        if self.steps <= self.warmup_steps:
            return False
        self.threshold_(model)
        return True

    __call__ = after_step

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "keep": self.keep,
                "masks": None if self.masks is None else self.masks.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["keep"]) != self.keep:
            raise ValueError(f"saved keep={state['keep']} differs from this thresholder's "
                             f"keep={self.keep}")
        self.steps = int(state["steps"])
        self.masks = None if state.get("masks") is None else SparsityMasks(state["masks"])
