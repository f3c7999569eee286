"""Module bookkeeping shared by surgery, io, sparsity and training.

A module can be registered under several names (weight tying, shared blocks);
replacing it must replace it under every one of them, or the model silently
ends up holding both the old and the new module.
"""

from __future__ import annotations

from torch import nn

__all__ = ["module_names", "replace_module", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / ``torch.compile``
    wrappers (any nesting)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


def module_names(model: nn.Module, target: nn.Module) -> list[str]:
    """Every dotted name under which ``target`` is registered in ``model``
    (``""`` for the root itself)."""
    return [name for name, mod in model.named_modules(remove_duplicate=False) if mod is target]


def replace_module(model: nn.Module, target: nn.Module, new: nn.Module) -> list[str]:
    """Put ``new`` wherever ``target`` is registered in ``model``; returns the names
    replaced. The root itself cannot be replaced (there is no parent to hold it)."""
    names = [n for n in module_names(model, target) if n]
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return names
