"""Data sets, one loader a module. No loader downloads anything: real data is found
through :mod:`compactnn.data.registry` (an environment variable, the system package, the
cache), and :func:`compactnn.data.fetch.fetch` downloads it only when asked."""

from compactnn.data.census import load_census_income
from compactnn.data.common import TensorSplit
from compactnn.data.digits import load_digits_split
from compactnn.data.errors import CacheError, DataIntegrityError, DataNotFoundError, FetchError
from compactnn.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    fashion_mnist_stats,
    load_fashion_mnist,
    read_idx,
    write_idx,
)
from compactnn.data.movielens import load_movielens
from compactnn.data.movielens_1m import read_movielens_1m_table
from compactnn.data.multi_fashion_mnist import load_multi_fashion_mnist
from compactnn.data.multitask import MultiTaskData, MultiTaskPart, TaskSpec
from compactnn.data.registry import DATASETS, locate
from compactnn.data.synthetic import make_clustered_synthetic, make_mmoe_synthetic

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "CacheError", "DataIntegrityError",
           "DataNotFoundError", "FetchError", "MultiTaskData", "MultiTaskPart", "TaskSpec",
           "TensorSplit", "fashion_mnist_stats", "load_census_income", "load_digits_split",
           "load_fashion_mnist", "load_movielens", "load_multi_fashion_mnist", "locate",
           "make_clustered_synthetic", "make_mmoe_synthetic", "read_idx", "read_movielens_1m_table",
           "write_idx"]
