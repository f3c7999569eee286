"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): small real data
that installs with scikit-learn, for quick experiments and tests."""

from __future__ import annotations

import numpy as np
import torch

from compactnn.data.common import TensorSplit

__all__ = ["load_digits_split"]


def load_digits_split(val_fraction: float = 0.15, test_fraction: float = 0.2,
                      seed: int = 0) -> TensorSplit:
    """Digits as flat 64-d float vectors scaled to [0, 1], split stratified into
    train / validation / test with a fixed seed."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError("the digits data set needs scikit-learn: "
                          "pip install 'compactnn[experiments]'") from e
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be in (0, 1) and sum below 1, got "
                         f"val_fraction={val_fraction}, test_fraction={test_fraction}")
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) / 16.0
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), stratify=y_rest,
        random_state=seed)

    def t(a, dtype):
        return torch.as_tensor(a, dtype=dtype)

    return TensorSplit(t(x_train, torch.float32), t(y_train, torch.long),
                       t(x_val, torch.float32), t(y_val, torch.long),
                       t(x_test, torch.float32), t(y_test, torch.long), num_classes=10)
