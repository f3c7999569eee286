"""The protocol between the training loop and what it trains.

A task owns the data, the model and the loss; the loop
(:func:`compactnn.engine.run`) owns the order of batches, the optimizer steps,
checkpoints, logging and stopping. ``compactnn train`` and ``compactnn mtl``
are tasks (:mod:`compactnn.tasks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compactnn.config import ConfigError
from compactnn.engine.distributed import DistInfo, epoch_indices, shard

__all__ = ["Task"]


class Task:
    """What the loop trains. Override :meth:`setup`, :meth:`build`,
    :meth:`train_step` and (for validation rows and final metrics)
    :meth:`evaluate`; the other hooks default to doing nothing."""

    find_unused_parameters = False  # DDP: some steps leave parameters without gradients
    num_train = 0  # training examples (set by setup; the default batches permute them)
    monitor = "val_loss"  # the column early stopping watches when its metric is "auto"

    def setup(self, info: DistInfo) -> None:
        """Load the data (and set :attr:`num_train`)."""
        raise NotImplementedError

    def steps_per_epoch(self, batch_size: int, info: DistInfo) -> int:
        """Optimizer steps per epoch: whole global batches of the training set."""
        if batch_size % info.world_size:
            raise ConfigError(f"optim.batch_size={batch_size} must be divisible by the "
                              f"{info.world_size} processes")
        steps = self.num_train // batch_size
        if steps < 1:
            raise ConfigError(f"optim.batch_size={batch_size} exceeds the {self.num_train} "
                              "training examples")
        return steps

    def build(self, info: DistInfo, steps_per_epoch: int
              ) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        """The model (on ``info.device``), its optimizer and a per-step LR scheduler
        (or ``None``)."""
        raise NotImplementedError

    def batches(self, epoch: int, start: int, batch_size: int, seed: int,
                info: DistInfo) -> Iterator[Any]:
        """This process's batches of ``epoch`` from batch number ``start`` on: by
        default index tensors, shards of a ``(seed, epoch)`` permutation."""
        perm = epoch_indices(self.num_train, seed, epoch)
        for b in range(start, len(perm) // batch_size):
            yield shard(perm[b * batch_size:(b + 1) * batch_size], info)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float], int]:
        """Forward one batch through ``model`` (possibly DDP-wrapped): returns the
        objective to minimize, sums of per-example statistics to average over the
        epoch (``{"loss": ...}`` is shown in the progress bar), and the batch size."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch."""

    def after_step(self) -> None:
        """Called after each optimizer step."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Flat metrics of the model on ``split`` (``"val"`` each epoch)."""
        return {}

    def early_stop_from(self) -> int:
        """The first epoch (0-based) whose validation result early stopping may use
        (later than 0 when earlier weights are not valid final weights, e.g. before
        pruning reaches its budget)."""
        return 0

    def epoch_extras(self) -> dict[str, Any]:
        """More columns of the epoch's CSV row."""
        return {}

    def summary(self) -> dict[str, Any]:
        """Entries of the result of every run, finished or not."""
        return {}

    def final_metrics(self) -> dict[str, Any]:
        """Entries of the result of a finished run (test metrics...)."""
        return {}

    def on_new_run(self, out: Path) -> None:
        """Write files of a fresh run (main process only)."""

    def write_outputs(self, out: Path, metrics: dict[str, Any]) -> None:
        """Write more files at the end of a finished run (main process only)."""

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint besides the model, optimizer and scheduler."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
