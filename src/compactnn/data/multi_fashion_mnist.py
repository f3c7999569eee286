"""Multi-Fashion-MNIST: two Fashion-MNIST items overlaid on one 36x36 canvas, one task
per item (the Multi-MNIST construction used by [DSK] and earlier multi-task work).

Built deterministically from the Debian ``dataset-fashion-mnist`` idx files (read with
:func:`~compactnn.data.fashion_mnist.read_idx` through
:func:`~compactnn.data.fashion_mnist.load_fashion_mnist`, nothing is downloaded):

1. Fashion-MNIST's own split: ``val_size`` of the 60,000 training images are held out
   (stratified by class, drawn with ``seed``); the 10,000 test images are the test part.
   Pairs are formed *within* each part, so no source image is shared across parts.
2. In each part, a permutation ``pi`` of its images is drawn with
   ``numpy.random.default_rng([seed, part])``; canvas ``j`` puts image ``pi[j]`` at the
   top-left (rows and columns ``0..27``) and image ``pi[(j + 1) mod N]`` at the
   bottom-right (rows and columns ``8..35``). Every image appears once in each position,
   and the two items of a canvas are always different images (``N >= 2``). The overlap
   (the central 20x20) takes the pixel-wise maximum of the two items.
3. Pixels are scaled to [0, 1] and standardized with the mean and standard deviation of
   the *training* canvases (one scalar each).

Tasks: ``top_left`` and ``bottom_right``, each a 10-class classification of its item
(labels as in ``FASHION_MNIST_CLASSES``). ``x`` is ``(N, 1, 36, 36)`` float32.
``max_train`` / ``max_val`` / ``max_test`` keep the first canvases of each part (a random
subset, as the pairing is random); they are built only for those canvases.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from compactnn.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from compactnn.data.multitask import MultiTaskData, MultiTaskPart, TaskSpec

__all__ = ["CANVAS_SIZE", "MULTI_FASHION_TASKS", "load_multi_fashion_mnist", "overlay_pairs"]

CANVAS_SIZE = 36
SHIFT = CANVAS_SIZE - 28  # offset of the bottom-right item
MULTI_FASHION_TASKS = ("top_left", "bottom_right")


def overlay_pairs(images: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Canvases ``(len(first), 36, 36)``: ``images[first]`` at the top-left and
    ``images[second]`` at the bottom-right, overlap by pixel-wise maximum. ``images`` is
    ``(N, 28, 28)`` of any dtype."""
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected images of shape (N, 28, 28), got {images.shape}")
    out = np.zeros((len(first), CANVAS_SIZE, CANVAS_SIZE), dtype=images.dtype)
    out[:, :28, :28] = images[first]
    out[:, SHIFT:, SHIFT:] = np.maximum(out[:, SHIFT:, SHIFT:], images[second])
    return out


def _pairs(n: int, seed: int, part: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise ValueError(f"need at least 2 images to pair, got {n}")
    perm = np.random.default_rng([seed, part]).permutation(n)
    m = n if limit is None else min(limit, n)
    return perm[:m], perm[(np.arange(m) + 1) % n]


def load_multi_fashion_mnist(root: str | os.PathLike | None = None, val_size: int = 5000,
                             seed: int = 0, max_train: int | None = None,
                             max_val: int | None = None, max_test: int | None = None,
                             normalize: bool = True) -> MultiTaskData:
    """Multi-Fashion-MNIST as a :class:`MultiTaskData` (see the module docstring).

    Raises ``FileNotFoundError`` (with the install hint) when the Fashion-MNIST files are
    missing, ``ValueError`` for malformed files or arguments.
    """
    for name, v in (("max_train", max_train), ("max_val", max_val), ("max_test", max_test)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be a positive int or None, got {v!r}")
    base = load_fashion_mnist(root=root, val_size=val_size, seed=seed, normalize=False)
    parts = {}
    for i, (name, limit) in enumerate((("train", max_train), ("val", max_val),
                                       ("test", max_test))):
        x = getattr(base, f"x_{name}")[:, 0].numpy()
        y = getattr(base, f"y_{name}")
        if len(x) < 2:
            parts[name] = (np.zeros((0, CANVAS_SIZE, CANVAS_SIZE), np.float32),
                           y[:0], y[:0])
            continue
        a, b = _pairs(len(x), seed, i, limit)
        parts[name] = (overlay_pairs(x, a, b), y[torch.from_numpy(a)], y[torch.from_numpy(b)])
    mean, std = 0.0, 1.0
    if normalize:
        train = parts["train"][0]
        mean, std = float(train.mean(dtype=np.float64)), float(train.std(dtype=np.float64))
        std = std if std > 0 else 1.0

    def make(name: str) -> MultiTaskPart:
        canv, y1, y2 = parts[name]
        x = ((canv - mean) / std).astype(np.float32)[:, None]
        return MultiTaskPart(torch.from_numpy(x), [y1.clone(), y2.clone()])

    tasks = tuple(TaskSpec(t, "multiclass", len(FASHION_MNIST_CLASSES))
                  for t in MULTI_FASHION_TASKS)
    return MultiTaskData(make("train"), make("val"), make("test"), tasks,
                         meta={"pixel_mean": mean, "pixel_std": std,
                               "classes": FASHION_MNIST_CLASSES}).validate()
