"""Evaluation: one no-grad, eval-mode pass over batches (:func:`predict`) that
every task builds its metrics on, the classification metrics, and latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["batched", "classification_metrics", "evaluate", "measure_latency", "predict"]

Outputs = Tensor | list[Tensor]


def batched(*tensors: Tensor, batch_size: int) -> Iterator[tuple[Tensor, ...]]:
    """Consecutive slices of ``batch_size`` rows of equally long tensors (``None``
    entries stay ``None``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(next(t for t in tensors if t is not None))
    for i in range(0, n, batch_size):
        yield tuple(t[i:i + batch_size] if t is not None else None for t in tensors)


def _cat(chunks: list[Outputs]) -> Outputs:
    if not chunks:
        return torch.zeros(0)
    if isinstance(chunks[0], Tensor):
        return torch.cat(chunks)  # type: ignore[arg-type]
    return [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))]


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Sequence[Any]],
            forward: Callable[..., Outputs] | None = None,
            device: torch.device | str | None = None) -> Outputs:
    """The model's outputs over all ``batches``, concatenated on the CPU (a tensor,
    or one tensor per output when the forward returns a list).

    Each batch is a tuple of inputs moved to ``device``; ``forward(model, *inputs)``
    (default ``model(*inputs)``) gives its outputs. Runs in eval mode without
    gradients and restores the model's previous mode."""
    was_training = model.training
    model.eval()
    chunks: list[Outputs] = []
    try:
        for batch in batches:
            inputs = [b.to(device) if isinstance(b, Tensor) and device is not None else b
                      for b in batch]
            out = forward(model, *inputs) if forward is not None else model(*inputs)
            chunks.append(out.cpu() if isinstance(out, Tensor) else [o.cpu() for o in out])
    finally:
        model.train(was_training)
    return _cat(chunks)


def classification_metrics(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``logits`` against class ``targets``."""
    if len(targets) == 0:
        raise ValueError("cannot evaluate on an empty split")
    logits, targets = logits.float(), targets.to(logits.device)
    return {"loss": float(F.cross_entropy(logits, targets)),
            "accuracy": float((logits.argmax(-1) == targets).double().mean())}


def evaluate(model: nn.Module, data: Iterable[Sequence[Tensor]],
             device: torch.device | str | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy of a classifier over ``(x, y)`` batches
    (a DataLoader, or :func:`batched` slices of tensors)."""
    targets: list[Tensor] = []

    def inputs() -> Iterator[tuple[Tensor]]:
        for x, y in data:
            targets.append(y)
            yield (x,)

    logits = predict(model, inputs(), device=device)
    return classification_metrics(logits, torch.cat(targets) if targets else torch.zeros(0))


@torch.no_grad()
def measure_latency(model: nn.Module, example: Tensor, repeats: int = 30,
                    warmup: int = 5) -> float:
    """Median wall-clock seconds of one forward pass of ``example`` (eval mode)."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return statistics.median(times)
