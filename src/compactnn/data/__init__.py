"""Data sets, one loader a module. No loader downloads anything: real data
comes from installed packages (see METHODS.md, Sec. 6)."""

from compactnn.data.common import TensorSplit
from compactnn.data.digits import load_digits_split

__all__ = ["TensorSplit", "load_digits_split"]
