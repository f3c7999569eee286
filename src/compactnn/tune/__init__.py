"""One tuning protocol for every compared method (Optuna TPE, seeded, resumable).

:func:`tune` gives each method the same number of trials over its own search space
(:mod:`compactnn.tune.space`), chooses on the validation split only, re-trains the best
configuration from several seeds and records spaces, budgets and chosen values. It
calls a generic ``run(method, params, seed) -> {"val": float, ...}``, so any experiment
plugs in without the tuner knowing about training.
"""

from compactnn.tune.protocol import Method, TuneReport, markdown_table, tune
from compactnn.tune.search import SearchResult, run_search, slot_seed, storage_url
from compactnn.tune.space import (
    Categorical,
    IntRange,
    LogUniform,
    Param,
    Uniform,
    check_space,
    describe,
    space_from_dict,
    space_to_dict,
    suggest,
)
from compactnn.tune.storage import TuneFolderBusy, TuneStorageError

__all__ = ["Categorical", "IntRange", "LogUniform", "Method", "Param", "SearchResult",
           "TuneFolderBusy", "TuneReport", "TuneStorageError", "Uniform", "check_space",
           "describe", "markdown_table",
           "run_search", "slot_seed", "space_from_dict", "space_to_dict", "storage_url",
           "suggest", "tune"]
