"""Character-level text for the small transformer experiments: a vocabulary fixed by the
training text, encoded splits, seeded random windows for training and fixed windows for
evaluation, and bits per character."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CharData", "bits_per_char", "char_data", "random_windows"]

UNKNOWN = "\x00"  # id 0: characters of the evaluation text absent from the training text


@dataclass
class CharData:
    """Encoded splits (``uint8`` would do, ``long`` saves a cast per batch)."""

    chars: str  # id i is chars[i]; chars[0] is the unknown character
    train: Tensor
    val: Tensor
    test: Tensor

    @property
    def vocab(self) -> int:
        return len(self.chars)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


def char_data(train: str, val: str, test: str) -> CharData:
    """Encode three texts with the characters of ``train`` (others map to id 0)."""
    for name, text in (("train", train), ("val", val), ("test", test)):
        if not isinstance(text, str) or len(text) < 2:
            raise ValueError(f"{name} text must be a string of at least 2 characters")
    chars = UNKNOWN + "".join(sorted(set(train) - {UNKNOWN}))
    index = {c: i for i, c in enumerate(chars)}

    def enc(text: str) -> Tensor:
        return torch.tensor([index.get(c, 0) for c in text], dtype=torch.long)

    return CharData(chars, enc(train), enc(val), enc(test))


def random_windows(ids: Tensor, batch: int, context: int,
                   generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch`` windows of ``context + 1`` characters at seeded random offsets, as
    inputs and next-character targets, both ``(batch, context)``."""
    if ids.numel() <= context + 1:
        raise ValueError(f"text of {ids.numel()} characters is too short for context {context}")
    starts = torch.randint(0, ids.numel() - context - 1, (batch,), generator=generator)
    rows = torch.stack([ids[s : s + context + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def bits_per_char(model: Callable[[Tensor], tuple[Tensor, Tensor]], ids: Tensor, context: int,
                  max_chars: int, batch: int = 32,
                  after_batch: Callable[[], None] | None = None) -> float:
    """Mean next-character cross-entropy in bits over consecutive non-overlapping windows
    of ``context + 1`` characters covering the first ``max_chars`` characters (every
    position of a window is predicted from the window's prefix, as in training)."""
    n = min(ids.numel() - 1, max_chars) // context
    if n < 1:
        raise ValueError(f"need more than {context} characters to evaluate")
    total, count = 0.0, 0
    for first in range(0, n, batch):
        idx = torch.arange(first, min(n, first + batch)) * context
        rows = torch.stack([ids[s : s + context + 1] for s in idx.tolist()])
        logits, _ = model(rows[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1),
                               reduction="sum")
        total += float(loss)
        count += rows[:, 1:].numel()
        if after_batch is not None:
            after_batch()
    return total / count / math.log(2)
