"""One method's hyper-parameter search: seeded TPE over a declarative space, stored in
SQLite so that an interrupted search resumes where it stopped.

The search is a loop over *trial slots* ``0 .. n_trials - 1``. Slot ``i`` asks Optuna's
TPE sampler, seeded with a stable hash of ``(sampler_seed, method, i)``, for a
configuration; TPE conditions on every finished trial in the study, which lives in the
SQLite file. Seeding per slot rather than once per process makes a resumed search draw
exactly what an uninterrupted one would have drawn: the sampler's state is a function of
the slot and the stored history, never of how many times the process was restarted.

What counts toward the budget: a trial that returned a finite validation score
(``COMPLETE``) and a trial whose score was NaN/inf or whose run raised (``FAIL``,
recorded with its error: a diverged configuration is an outcome of the search, and it
uses its slot). A trial left ``RUNNING`` by a killed process is marked failed *without*
counting, and its slot is drawn again on resume.

A study records the settings it is searched with (the space, the fixed values, the
tuning seed, the sampler seed and its number of random start-up trials): resuming it
with other settings is refused, since its trials would not be draws of this search.
Every stored trial is checked against the space before anything runs, so a study
changed outside compactnn is refused too, naming the trial. An SQLite file is claimed
first (:func:`compactnn.tune.storage.claim_sqlite`): a database that is not a tuning
study of this package is never written to.

Only the validation score drives the search. The run's other numbers are stored with
the trial as user attributes, except keys starting with ``test`` (dropped, so nothing
downstream can select on test numbers).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compactnn._checks import check_choice, check_int
from compactnn.tune.space import Param, check_config, check_space, space_to_dict, suggest
from compactnn.tune.storage import claim_sqlite, sqlite_path

__all__ = ["SearchResult", "run_search", "slot_seed", "storage_url"]

RunFn = Callable[[str, dict[str, Any], int], Mapping[str, Any]]
SETTINGS_ATTR = "compactnn_settings"  # the study's user attribute recording its settings


def storage_url(path: str | Path) -> str:
    """The SQLAlchemy URL of the SQLite file ``path``."""
    return f"sqlite:///{Path(path).resolve()}"


def slot_seed(sampler_seed: int, method: str, slot: int) -> int:
    """A stable 31-bit seed for trial slot ``slot`` of ``method`` (independent of Python's
    per-process string hashing)."""
    return zlib.crc32(f"{sampler_seed}:{method}:{slot}".encode()) & 0x7FFFFFFF


@dataclass
class SearchResult:
    """The outcome of one method's search."""

    method: str
    best_params: dict[str, Any]
    best_value: float
    n_counted: int  # trials that used a slot (complete + failed)
    n_failed: int
    trials: list[dict[str, Any]] = field(default_factory=list)  # slot, params, value, state
    seconds: float = 0.0  # summed wall time of the counted trials


def _quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _counted(t: Any) -> bool:
    from optuna.trial import TrialState

    return t.state == TrialState.COMPLETE or (
        t.state == TrialState.FAIL and bool(t.user_attrs.get("counted")))


def _load(method: str, storage: Any, direction: str, seed: int | None,
          n_startup_trials: int):
    """``(storage, study)``: the study ``method`` with a sampler seeded by ``seed``;
    ``storage`` is a URL or the Optuna storage returned before (reused, so that each slot
    does not reconnect and re-check the schema)."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    for attempt in range(5):
        try:
            if isinstance(storage, str):
                storage = optuna.storages.get_storage(storage)
            return storage, optuna.create_study(
                study_name=method, storage=storage, sampler=sampler, direction=direction,
                load_if_exists=True)
        except Exception as e:  # several processes creating one new SQLite file race
            if attempt == 4 or "IntegrityError" not in type(e).__name__ + str(e):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


def run_search(method: str, space: Mapping[str, Param], run: RunFn, storage: str, *,
               n_trials: int, tune_seed: int, direction: str = "minimize",
               sampler_seed: int = 0, n_startup_trials: int = 10,
               fixed: Mapping[str, Any] | None = None,
               start: Sequence[Mapping[str, Any]] = (),
               on_trial: Callable[[str, int, dict[str, Any]], None] | None = None
               ) -> SearchResult:
    """Search ``space`` for ``method`` until ``n_trials`` slots are used (resuming the
    study named ``method`` in ``storage``). Each trial calls ``run(method, params,
    tune_seed)`` with ``params`` = the drawn values merged over ``fixed``; its ``"val"``
    entry is the score (minimized or maximized per ``direction``).

    ``start``: configurations (values for every searched parameter) evaluated before
    anything is drawn, in order, each within the budget; one already in the study is
    not run again, so a resumed study evaluates only the missing ones."""
    from optuna.trial import TrialState

    if not isinstance(method, str) or not method:
        raise TypeError(f"method must be a non-empty str, got {method!r}")
    space = check_space(f"space of {method!r}", space)
    check_int("n_trials", n_trials, 1)
    check_int("tune_seed", tune_seed)
    check_int("sampler_seed", sampler_seed)
    check_int("n_startup_trials", n_startup_trials, 0)
    check_choice("direction", direction, ("minimize", "maximize"))
    if not callable(run):
        raise TypeError(f"run must be callable, got {type(run).__name__}")
    fixed = dict(fixed or {})
    clash = sorted(set(fixed) & set(space))
    if clash:
        raise ValueError(f"{method}: {clash} are both fixed and searched")
    if isinstance(start, Mapping) or not isinstance(start, Sequence):
        raise TypeError(f"{method}: start must be a sequence of configurations, got "
                        f"{type(start).__name__}")
    starts = [check_config(f"{method}: start[{i}]", space, c) for i, c in enumerate(start)]
    if len(starts) > n_trials:
        raise ValueError(f"{method}: {len(starts)} start configurations do not fit in "
                         f"n_trials={n_trials}")
    file = sqlite_path(storage)
    if file is not None:
        claim_sqlite(file)
    where = str(file) if file is not None else storage
    _quiet()
    db, study = _load(method, storage, direction, None, n_startup_trials)
    if study.direction.name.lower() != direction:
        raise ValueError(f"study {method!r} in {where} was created with direction "
                         f"{study.direction.name.lower()}, not {direction}")
    _check_settings(study, method, where, {
        "space": space_to_dict(space), "fixed": fixed, "tune_seed": tune_seed,
        "sampler_seed": sampler_seed, "n_startup_trials": n_startup_trials})
    _check_trials(study, method, where, space)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                      TrialState.WAITING)):
        # left behind by a killed process: close it without using a slot
        study.tell(t.number, state=TrialState.FAIL)
    while True:
        tried = [t.params for t in study.get_trials(deepcopy=False) if _counted(t)]
        done = len(tried)
        if done >= n_trials:
            break
        db, study = _load(method, db, direction, slot_seed(sampler_seed, method, done),
                      n_startup_trials)
        pending = [c for c in starts if c not in tried]
        if pending:
            study.enqueue_trial(pending[0])
        trial = study.ask()
        params = suggest(trial, space)
        trial.set_user_attr("slot", done)
        start = time.perf_counter()
        error = None
        try:
            out = dict(run(method, {**fixed, **params}, tune_seed))
            value = float(out["val"])
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a configuration that crashes used its slot
            out, value, error = {}, math.nan, f"{type(e).__name__}: {e}"
        trial.set_user_attr("seconds", time.perf_counter() - start)
        for k, v in out.items():
            if k != "val" and not k.startswith("test") and isinstance(v, int | float | str):
                trial.set_user_attr(f"run_{k}", v)
        if math.isfinite(value):
            study.tell(trial, value)
        else:
            trial.set_user_attr("counted", True)
            trial.set_user_attr("error", error or f"non-finite validation score {value}")
            study.tell(trial, state=TrialState.FAIL)
        if on_trial is not None:
            on_trial(method, done, {"params": params, "val": value, "error": error})
    return _result(method, study, n_trials)


def _check_settings(study: Any, method: str, where: str, settings: dict[str, Any]) -> None:
    """Record ``settings`` in a new study; refuse a study recorded with others."""
    settings = json.loads(json.dumps(settings, sort_keys=True, default=repr))
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise ValueError(
                f"study {method!r} in {where} has trials but no record of the settings "
                "they were searched with (made by an older compactnn or another "
                "program), so resuming it cannot be checked: delete it, or choose another "
                "out_dir, to search afresh")
        study.set_user_attr(SETTINGS_ATTR, settings)
        return
    if stored == settings:
        return
    if not isinstance(stored, dict):
        stored = {}
    diffs = []
    for key, now in settings.items():
        was = stored.get(key)
        if was == now:
            continue
        if isinstance(now, dict) and isinstance(was, dict):
            added = sorted(set(now) - set(was))
            removed = sorted(set(was) - set(now))
            changed = sorted(k for k in set(now) & set(was) if now[k] != was[k])
            parts = [f"{label} {names}" for label, names in
                     (("added", added), ("removed", removed), ("changed", changed)) if names]
            diffs.append(f"{key}: {', '.join(parts)}")
        else:
            diffs.append(f"{key}: {was!r} then, {now!r} now")
    raise ValueError(f"study {method!r} in {where} was searched with other settings "
                     f"({'; '.join(diffs)}), so its trials are not draws of this search: "
                     "restore the settings to resume it, or choose another out_dir "
                     "(or delete the study file) to search afresh")


def _check_trials(study: Any, method: str, where: str, space: Mapping[str, Param]) -> None:
    """Every trial that uses a slot sets exactly the space's parameters, inside it, has a
    distinct slot and (when complete) a finite score; otherwise the study was changed
    outside compactnn and is refused."""
    from optuna.trial import TrialState

    slots: set[int] = set()
    for t in study.get_trials(deepcopy=False):
        if not _counted(t):
            continue
        what = f"study {method!r} in {where}, trial {t.number}"
        try:
            check_config(what, space, t.params)
            slot = t.user_attrs.get("slot")
            if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
                raise ValueError(f"{what} has no valid slot ({slot!r})")
            if slot in slots:
                raise ValueError(f"{what} repeats slot {slot}")
            slots.add(slot)
            if t.state == TrialState.COMPLETE and not (
                    isinstance(t.value, float) and math.isfinite(t.value)):
                raise ValueError(f"{what} is complete with a non-finite score {t.value!r}")
        except ValueError as e:
            raise ValueError(f"{e}: the study was changed outside compactnn; delete it, "
                             "or choose another out_dir, to search afresh") from None


def _result(method: str, study: Any, n_trials: int) -> SearchResult:
    from optuna.trial import TrialState

    counted = sorted((t for t in study.get_trials(deepcopy=False) if _counted(t)),
                     key=lambda t: t.user_attrs.get("slot", t.number))[:n_trials]
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    if not complete:
        errors = {t.user_attrs.get("error") for t in counted}
        raise RuntimeError(f"{method}: every one of the {len(counted)} trials failed "
                           f"({'; '.join(sorted(map(str, errors)))[:300]})")
    sign = 1.0 if study.direction.name.lower() == "minimize" else -1.0
    # ties go to the earlier slot, so the choice does not depend on storage order
    best = min(complete, key=lambda t: (sign * t.value, t.user_attrs.get("slot", 0)))
    trials = [{"slot": t.user_attrs.get("slot"), "params": dict(t.params),
               "val": t.value if t.state == TrialState.COMPLETE else None,
               "state": t.state.name, "error": t.user_attrs.get("error"),
               "seconds": t.user_attrs.get("seconds")} for t in counted]
    return SearchResult(method, dict(best.params), float(best.value), len(counted),
                        len(counted) - len(complete), trials,
                        float(sum(t.user_attrs.get("seconds", 0.0) for t in counted)))
