"""Experiments that reproduce the papers' claims, registered by name for
``compactnn reproduce``.

An experiment is a function ``run(out_dir: Path, quick: bool, seed: int) ->
ExperimentResult``: it writes its figures and tables under ``out_dir`` and
returns a markdown section for the run's report. ``quick`` selects the small
sizes that keep the README's main job short; the full mode is the papers' scale.
Experiments registered with ``parallel=True`` made of many independent trainings
also take ``jobs``, the number of worker processes (``compactnn reproduce --jobs``).
``data`` names the registered data sets (:mod:`compactnn.data.registry`) an experiment
reads, so that :func:`~compactnn.experiments.driver.reproduce` can skip it with one line
when one is missing instead of failing inside it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Experiment", "ExperimentResult", "get", "register", "registry", "reproduce"]


@dataclass
class ExperimentResult:
    """What an experiment returns: a markdown section and the files it wrote."""

    name: str
    markdown: str
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    run: Callable[..., ExperimentResult]
    in_quick: bool = True  # part of the default `compactnn reproduce`
    parallel: bool = False  # run() takes jobs=N worker processes
    data: tuple[str, ...] = ()  # registered data sets it reads (compactnn.data.registry)


_REGISTRY: dict[str, Experiment] = {}

# Modules that register experiments when imported, in report order.
_MODULES = [
    "compactnn.experiments.digits_lowrank",
    "compactnn.experiments.mtl_synthetic",
    "compactnn.experiments.mtl_planted",
    "compactnn.experiments.mtl_real",
    "compactnn.experiments.lowrank_grid",
    "compactnn.experiments.function_gap",
    "compactnn.experiments.compress_pretrained",
    "compactnn.experiments.lm_compress",
    "compactnn.experiments.layer_pruning",
    "compactnn.experiments.moe_lm",
    "compactnn.experiments.enc_dec_fusion",
    "compactnn.experiments.lm_layer_pruning",
    "compactnn.experiments.relchanet",
    "compactnn.experiments.depth_aware",
    "compactnn.experiments.shortcut",
    "compactnn.experiments.two_layer_dynamics",
    "compactnn.experiments.minatar_sparse",
]


def register(name: str, description: str, in_quick: bool = True, parallel: bool = False,
             data: tuple[str, ...] = ()):
    """Decorator: register ``run(out_dir, quick, seed)`` under ``name`` (with a
    ``jobs`` keyword too when ``parallel``); ``data``: the data sets it reads."""

    def deco(fn: Callable[..., ExperimentResult]):
        _REGISTRY[name] = Experiment(name, description, fn, in_quick, parallel, tuple(data))
        return fn

    return deco


def registry() -> dict[str, Experiment]:
    """All registered experiments, importing their modules on first use."""
    for mod in _MODULES:
        importlib.import_module(mod)
    return dict(_REGISTRY)


def get(name: str) -> Experiment:
    exps = registry()
    if name not in exps:
        raise ValueError(f"unknown experiment {name!r}; available: {', '.join(exps)}")
    return exps[name]


def reproduce(*args, **kwargs):
    """Run experiments, skipping those whose data is missing and recording failures; see
    :func:`compactnn.experiments.driver.reproduce`."""
    from compactnn.experiments.driver import reproduce as run

    return run(*args, **kwargs)
