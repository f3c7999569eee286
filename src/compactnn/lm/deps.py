"""The optional ``lm`` extra: one clear error when a package it needs is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["LMUnavailable", "INSTALL_HINT", "require"]

INSTALL_HINT = "pip install 'compactnn[lm]'"


class LMUnavailable(ImportError):
    """A package of the ``lm`` extra (transformers, gguf, tokenizers, accelerate) is not
    installed. An ``ImportError``, so ``pytest.importorskip``-style code skips on it."""


def require(module: str) -> ModuleType:
    """Import ``module`` or raise :class:`LMUnavailable` with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise LMUnavailable(f"{module} is needed for compactnn.lm and is not installed "
                            f"({e}); install it with `{INSTALL_HINT}`") from e
