"""Module bookkeeping shared by surgery, io, sparsity and training.

A module can be registered under several names (weight tying, shared blocks);
replacing it must replace it under every one of them, or the model silently
ends up holding both the old and the new module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["module_names", "replace_module", "restore_modes", "save_modes", "training_mode",
           "unwrap"]


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


@contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run a block with every module of ``model`` in train (or eval) mode, then give
    each module its own flag back, as ``model.train(was)`` would not (a frozen
    BatchNorm or an eval-mode block inside a training model keeps its mode). A module
    put in the model meanwhile (a swapped-in layer) takes its parent's restored flag."""
    flags = save_modes(model)
    model.train(training)
    try:
        yield model
    finally:
        restore_modes(model, flags)


def save_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """The train/eval flag of every module of ``model`` (for :func:`restore_modes`)."""
    return {m: m.training for m in model.modules()}


def restore_modes(module: nn.Module, flags: dict[nn.Module, bool]) -> None:
    """Give every module of ``module`` its flag from ``flags`` back; a module not in
    ``flags`` (put in meanwhile) takes its parent's."""
    if module in flags:
        module.training = flags[module]
    for child in module.children():
        if child not in flags:
            child.training = module.training
        restore_modes(child, flags)
