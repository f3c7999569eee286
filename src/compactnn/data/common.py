"""Small shared data containers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["TensorSplit"]


@dataclass
class TensorSplit:
    """A data set held in memory as train / validation / test tensors."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    def loader(self, part: str, batch_size: int, shuffle: bool = False,
               seed: int = 0) -> DataLoader:
        """A DataLoader over ``part`` ("train", "val" or "test"); shuffling uses its
        own seeded generator so runs are reproducible."""
        if part not in ("train", "val", "test"):
            raise ValueError(f"part must be 'train', 'val' or 'test', got {part!r}")
        x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                          generator=gen if shuffle else None)
