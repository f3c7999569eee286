"""Reference models used by the experiments, written once and made low-rank
through ``compactnn.factorize``."""

from compactnn.models.mlp import MLP, MLPConfig

__all__ = ["MLP", "MLPConfig"]
