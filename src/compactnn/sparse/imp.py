"""Iterative magnitude pruning (lottery-ticket rewinding or fine-tuning) and its
density schedules; see :mod:`compactnn.sparse` for the conventions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from compactnn._checks import check_bool, check_choice, check_int
from compactnn._modules import unwrap
from compactnn.sparse.masks import SCOPES, Patterns, SparsityMasks, score_masks, weights_by_name

__all__ = ["SCHEDULES", "IterativeMagnitudePruning", "pruning_schedule"]

SCHEDULES = ("geometric", "cubic")


def pruning_schedule(total: int, keep: int, rounds: int,
                     schedule: str = "geometric") -> list[int]:
    """Weights kept after each of ``rounds`` pruning rounds, from ``total``
    down to exactly ``keep`` (non-increasing).

    ``"geometric"``: density ``d**(i/R)`` after round ``i`` of ``R`` for a target
    density ``d = keep/total`` (each round keeps the same fraction of the
    previous one). ``"cubic"``: Zhu & Gupta (2017)'s ``d + (1 - d)(1 - i/R)**3``,
    which prunes fast first and slowly near the target.
    """
    check_int("total", total, 1)
    check_int("keep", keep, 1, total)
    check_int("rounds", rounds, 1)
    check_choice("schedule", schedule, SCHEDULES)
    d = keep / total
    out, prev = [], total
    for i in range(1, rounds + 1):
        t = i / rounds
        dens = d**t if schedule == "geometric" else d + (1 - d) * (1 - t) ** 3
        k = keep if i == rounds else min(prev, max(keep, round(total * dens)))
        out.append(k)
        prev = k
    return out



def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


class IterativeMagnitudePruning:
    """Iterative global magnitude pruning, with rewinding or fine-tuning.

    The recipe (``R = rounds``; ``train`` is the user's loop, calling
    ``imp.after_step(model)`` after each ``optimizer.step()``)::

        imp = IterativeMagnitudePruning(model, keep, rounds=R)  # saves the init
        # optionally, after k steps of the first training: imp.save_rewind_state(model)
        train(model)                       # dense
        while not imp.done:
            imp.prune(model)               # to imp.schedule[round]; rewinds if enabled
            train(model)                   # fresh optimizer; pruned weights stay zero

    Each ``prune`` keeps, among the weights still alive, the
    ``schedule[round]`` of largest magnitude over all pruned layers (a weight
    once pruned never returns). With ``rewind=True`` the whole model state
    (parameters and buffers) is then reset to the rewind state and the masks
    applied: the surviving weights restart from their saved values, as in
    Frankle & Carbin 2019 (state saved at initialization, the default) or
    Frankle et al. 2020 (``save_rewind_state`` after ``k`` training steps).
    With ``rewind=False`` the trained values are kept and training continues:
    fine-tuning, or Zhu & Gupta (2017)'s gradual pruning when rounds are
    spaced a few hundred steps apart with ``schedule="cubic"``.

    Args:
        model: the dense model (wrappers allowed, see the module docstring).
        keep: prunable weights left after the last round
            (see :func:`target_keep_for_param_ratio`).
        rounds: number of pruning rounds, >= 1.
        include, exclude: which layers are pruned (``factorize``'s patterns).
        rewind: rewind to the saved state after each pruning round.
        schedule: ``"geometric"`` or ``"cubic"`` (:func:`pruning_schedule`).
        scope: ``"global"`` ranking over all pruned layers, or ``"layer"``: every
            layer keeps the same fraction.
    """

    def __init__(self, model: nn.Module, keep: int, rounds: int, include: Patterns = None,
                 exclude: Patterns = None, rewind: bool = True,
                 schedule: str = "geometric", scope: str = "global") -> None:
        self.scope = check_choice("scope", scope, SCOPES)
        self.masks = SparsityMasks.dense(model, include, exclude)
        if not len(self.masks):
            raise ValueError("no prunable weight selected")
        self.total = self.masks.numel()
        self.keep = keep
        self.schedule = pruning_schedule(self.total, keep, rounds, schedule)
        self.rounds = rounds
        self.rewind = check_bool("rewind", rewind)
        self.round = 0
        self._rewind_state = _snapshot(model) if self.rewind else None

    @property
    def done(self) -> bool:
        return self.round >= self.rounds

    @property
    def current_keep(self) -> int:
        """Prunable weights alive now."""
        return self.total if self.round == 0 else self.schedule[self.round - 1]

    def save_rewind_state(self, model: nn.Module) -> None:
        """Remember the current parameters and buffers as the rewind point
        (e.g. after ``k`` steps of the first training, for late rewinding)."""
        if not self.rewind:
            raise RuntimeError("save_rewind_state needs rewind=True")
        self._rewind_state = _snapshot(model)

    def prune(self, model: nn.Module) -> int:
        """Run the next pruning round on ``model`` in place (then rewind, when
        enabled); returns the number of prunable weights kept."""
        if self.done:
            raise RuntimeError(f"all {self.rounds} pruning rounds are done")
        weights = weights_by_name(model, {n: m.shape for n, m in self.masks.masks.items()},
                                   "pruner")
        target = self.schedule[self.round]
        # pruned weights score -1, below every alive |w| >= 0: they never return
        scores = {n: w.detach().abs().masked_fill(~self.masks[n].to(w.device), -1.0)
                  for n, w in weights.items()}
        self.masks = SparsityMasks(score_masks(scores, target, self.scope))
        self.round += 1
        if self.rewind:
            assert self._rewind_state is not None
            unwrap(model).load_state_dict(self._rewind_state)
        self.masks.apply_(model)
        return target

    def after_step(self, model: nn.Module) -> None:
        """Re-zero the pruned weights; call after every ``optimizer.step()``."""
        self.masks.apply_(model)

    __call__ = after_step

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "schedule": list(self.schedule),
                "masks": self.masks.state_dict(),
                "rewind_state": None if self._rewind_state is None else
                {k: v.cpu().clone() for k, v in self._rewind_state.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["schedule"]) != self.schedule:
            raise ValueError(f"saved schedule {state['schedule']} differs from this pruner's "
                             f"{self.schedule}")
        self.round = int(state["round"])
        self.masks = SparsityMasks(state["masks"])
        if state.get("rewind_state") is not None:
            self._rewind_state = dict(state["rewind_state"])
