"""Initializers for low-rank layers, each also available by name through
``from_dense(..., init=NAME)`` and ``factorize(..., init=NAME)``."""

from compactnn.init.spectral import balanced_factors, default_, spectral_, truncated_svd

__all__ = ["balanced_factors", "default_", "spectral_", "truncated_svd"]
