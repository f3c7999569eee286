"""Data sets, one loader a module. No loader downloads anything: real data
comes from installed packages (see METHODS.md, Sec. 6)."""

from compactnn.data.common import TensorSplit
from compactnn.data.digits import load_digits_split
from compactnn.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    fashion_mnist_stats,
    load_fashion_mnist,
    read_idx,
    write_idx,
)

__all__ = ["FASHION_MNIST_CLASSES", "TensorSplit", "fashion_mnist_stats", "load_digits_split",
           "load_fashion_mnist", "read_idx", "write_idx"]
