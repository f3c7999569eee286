"""The tuning protocol every compared method goes through.

1. **Search**, per method: the *same* number of trials (``n_trials``) of seeded TPE over
   the method's own search space, every trial trained with one tuning seed and scored on
   the validation split only (:func:`compactnn.tune.search.run_search`).
2. **Re-train** the best configuration of each method from each evaluation seed and
   record its numbers (validation and test) once. The evaluation seeds are shared by all
   methods, so results are paired by seed; the tuning seed is not one of them, so no
   reported number comes from a run the search selected on.
3. **Record** the spaces, budgets, chosen values and per-seed results:
   ``tuning.json`` and ``tuning.md`` in the run folder.

Everything is resumable: the searches live in ``<out>/tune.sqlite3`` (one Optuna study
per method) and each finished re-training in ``<out>/final/<method>__s<seed>.json``;
running :func:`tune` again with the same arguments skips what is done. What is read back
is checked first: a study resumed with other settings or changed outside compactnn is
refused (:func:`compactnn.tune.search.run_search`), a ``tune.sqlite3`` that is not a
study file of this package is never written to (:mod:`compactnn.tune.storage`), and a
final run is used only when its file is valid JSON for that method and seed and has the
SHA-256 its study recorded when it was written (an edited file is refused naming it; a
file the study never wrote, or one for other parameters, is re-run). One :func:`tune`
at a time holds ``<out>/.lock``.

The protocol knows nothing of training. It calls ``run(method, params, seed)``, which
must return a mapping with a float ``"val"`` (the validation score) and whatever else
the caller wants kept for the final runs (e.g. ``"test"``, per-task metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compactnn._checks import check_choice, check_int
from compactnn.tune.search import RunFn, SearchResult, run_search, storage_url
from compactnn.tune.space import Param, check_config, check_space, describe, space_to_dict
from compactnn.tune.storage import FolderLock, TuneStorageError, claim_sqlite

__all__ = ["Method", "TuneReport", "markdown_table", "tune"]


@dataclass(frozen=True)
class Method:
    """A compared method: its search space, the settings it keeps fixed, and the
    configurations its search evaluates first (e.g. the method's published defaults;
    they count toward the budget)."""

    space: Mapping[str, Param]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    start: tuple[Mapping[str, Any], ...] = ()


@dataclass
class TuneReport:
    """What :func:`tune` found and measured."""

    direction: str
    n_trials: int
    seeds: list[int]
    tune_seed: int
    sampler_seed: int
    n_startup_trials: int
    methods: dict[str, dict[str, Any]]  # space, fixed, best params/value, trials, ...
    final: dict[str, list[dict[str, Any]]]  # method -> one result per seed (seed order)

    def values(self, method: str, key: str) -> list[float]:
        """``key`` of ``method``'s final runs, in seed order (for paired statistics)."""
        return [float(r[key]) for r in self.final[method]]

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": {"direction": self.direction, "n_trials": self.n_trials,
                             "seeds": self.seeds, "tune_seed": self.tune_seed,
                             "sampler_seed": self.sampler_seed,
                             "n_startup_trials": self.n_startup_trials,
                             "sampler": "optuna TPE (seeded per trial slot)"},
                "methods": self.methods, "final": self.final}

    def markdown(self, fmt: str = "{:.4g}") -> str:
        """Two tables: the search (space and chosen value of every hyper-parameter) and
        the budget of each method (trials, failures, best validation score, seconds)."""
        rows = []
        starts = any(info.get("start") for info in self.methods.values())
        for m, info in self.methods.items():
            first = info.get("start") or []
            for name, desc in info["space_description"].items():
                rows.append([m, name, desc, _fmt(info["best_params"][name], fmt)]
                            + (["; ".join(_fmt(c[name], fmt) for c in first) or "-"]
                               if starts else []))
            for name, value in info["fixed"].items():
                rows.append([m, name, "fixed", _fmt(value, fmt)] + (["-"] if starts else []))
        budget = [[m, info["n_trials"], info["n_failed"], fmt.format(info["best_val"]),
                   f"{info['search_seconds']:.0f}", len(self.final.get(m, []))]
                  for m, info in self.methods.items()]
        startup = min(self.n_startup_trials, self.n_trials)
        first = (" Each method's start configuration (column \"start\") is one of its trials, "
                 "within the budget." if starts else "")
        return ("Search: TPE (Optuna), " + f"{self.n_trials} trials per method (the first "
                f"{startup} drawn at random), tuning seed {self.tune_seed}, chosen on the "
                f"validation split ({self.direction}); the best configuration re-trained "
                f"from seeds {self.seeds} and evaluated once on test.{first}\n\n"
                + markdown_table(["method", "hyper-parameter", "search space", "chosen"]
                                 + (["start"] if starts else []), rows) + "\n\n"
                + markdown_table(["method", "trials", "failed", "best val", "search s",
                                  "final seeds"], budget) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _fmt(v: Any, fmt: str) -> str:
    return fmt.format(v) if isinstance(v, float) else str(v)


FINAL_ATTR = "compactnn_final_sha256"  # study user attribute: {seed: SHA-256 of its file}


def _atomic_json(path: Path, obj: Any) -> None:
    _atomic_text(path, json.dumps(obj, indent=2, default=_jsonable))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _load_final(path: Path, name: str, seed: int, params: dict[str, Any],
                digest: str | None, say: Callable[[str], None]) -> dict[str, Any] | None:
    """The finished final run in ``path``, or None when it must be (re-)run; a file that
    is unreadable, for another method or seed, or edited after it was written is
    refused naming it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    fix = f"delete it to re-run seed {seed} of {name}"
    if not stat.S_ISREG(st.st_mode):
        raise TuneStorageError(f"the final run {path} is not a regular file; {fix}")
    text = path.read_text(errors="replace")
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise TuneStorageError(f"the final run {path} is not valid JSON ({e}); "
                               f"{fix}") from None
    if (not isinstance(rec, dict) or rec.get("method") != name or rec.get("seed") != seed
            or not isinstance(rec.get("params"), dict) or "val" not in rec):
        raise TuneStorageError(f"{path} does not hold the final run of {name} seed {seed} "
                               f"(method, seed, params and val); {fix}")
    if rec["params"] != json.loads(json.dumps(params, default=_jsonable)):
        return None  # the search chose other parameters since: re-train
    if digest is None:
        say(f"{path} was not written by this study's search; re-running it")
        return None
    if _sha256(text) != digest:
        raise TuneStorageError(f"{path} was changed after it was written (its SHA-256 "
                               f"differs from the one its study recorded); {fix}")
    return rec


def _jsonable(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _check_methods(methods: Any) -> dict[str, Method]:
    if not isinstance(methods, Mapping) or not methods:
        raise TypeError("methods must be a non-empty mapping of method names to Method, "
                        f"got {methods!r}"[:200])
    out = {}
    for name, m in methods.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"method names must be non-empty str usable as file names, "
                             f"got {name!r}")
        if not isinstance(m, Method):
            raise TypeError(f"methods[{name!r}] must be a Method, got {type(m).__name__}")
        check_space(f"methods[{name!r}].space", m.space)
        if not isinstance(m.fixed, Mapping):
            raise TypeError(f"methods[{name!r}].fixed must be a mapping")
        if isinstance(m.start, Mapping) or not isinstance(m.start, Sequence):
            raise TypeError(f"methods[{name!r}].start must be a tuple of configurations")
        for i, c in enumerate(m.start):
            check_config(f"methods[{name!r}].start[{i}]", m.space, c)
        out[name] = m
    return out


def tune(methods: Mapping[str, Method], run: RunFn, out_dir: str | Path, *,
         n_trials: int, seeds: Sequence[int], direction: str = "minimize",
         sampler_seed: int = 0, tune_seed: int | None = None, n_startup_trials: int = 10,
         log: Callable[[str], None] | None = None) -> TuneReport:
    """Run the protocol (see the module docstring) and write ``tuning.json`` /
    ``tuning.md`` to ``out_dir``. ``tune_seed`` defaults to ``10_000 + sampler_seed``;
    it must not be one of ``seeds``."""
    methods = _check_methods(methods)
    check_int("n_trials", n_trials, 1)
    for name, m in methods.items():
        if len(m.start) > n_trials:
            raise ValueError(f"methods[{name!r}] has {len(m.start)} start configurations, "
                             f"more than n_trials={n_trials}")
    check_int("sampler_seed", sampler_seed)
    check_choice("direction", direction, ("minimize", "maximize"))
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence) or not seeds:
        raise TypeError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
    seeds = [check_int("seeds[]", s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    tune_seed = 10_000 + sampler_seed if tune_seed is None else check_int("tune_seed",
                                                                          tune_seed)
    if tune_seed in seeds:
        raise ValueError(f"tune_seed={tune_seed} is one of the evaluation seeds {seeds}: "
                         "the reported runs must not be ones the search selected on")
    if not callable(run):
        raise TypeError(f"run must be callable, got {type(run).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with FolderLock(out):
        claim_sqlite(out / "tune.sqlite3")
        (out / "final").mkdir(exist_ok=True)
        return _protocol(methods, run, out, n_trials, seeds, direction, sampler_seed,
                         tune_seed, n_startup_trials, log or (lambda _msg: None))


def _protocol(methods: dict[str, Method], run: RunFn, out: Path, n_trials: int,
              seeds: list[int], direction: str, sampler_seed: int, tune_seed: int,
              n_startup_trials: int, say: Callable[[str], None]) -> TuneReport:
    import optuna

    storage = storage_url(out / "tune.sqlite3")
    searched: dict[str, SearchResult] = {}
    for name, m in methods.items():
        t0 = time.perf_counter()
        searched[name] = run_search(
            name, m.space, run, storage, n_trials=n_trials, tune_seed=tune_seed,
            direction=direction, sampler_seed=sampler_seed,
            n_startup_trials=n_startup_trials, fixed=m.fixed, start=m.start,
            on_trial=lambda meth, slot, r: say(f"{meth} trial {slot + 1}/{n_trials}: "
                                               f"val={r['val']:.5g} {r['params']}"))
        say(f"{name}: search done in {time.perf_counter() - t0:.0f} s, best val "
            f"{searched[name].best_value:.5g} with {searched[name].best_params}")

    final: dict[str, list[dict[str, Any]]] = {}
    for name, m in methods.items():
        params = {**m.fixed, **searched[name].best_params}
        study = optuna.load_study(study_name=name, storage=storage)
        digests = dict(study.user_attrs.get(FINAL_ATTR) or {})
        final[name] = []
        for s in seeds:
            path = out / "final" / f"{name}__s{s}.json"
            rec = _load_final(path, name, s, params, digests.get(str(s)), say)
            if rec is None:
                t0 = time.perf_counter()
                res = dict(run(name, dict(params), s))
                rec = {"method": name, "seed": s, "params": params,
                       "seconds": time.perf_counter() - t0, **res}
                text = json.dumps(rec, indent=2, default=_jsonable)
                # recorded before the file appears: a file the study vouches for is whole
                digests[str(s)] = _sha256(text)
                study.set_user_attr(FINAL_ATTR, digests)
                _atomic_text(path, text)
                rec = json.loads(text)
                say(f"{name} seed {s}: val={float(res['val']):.5g}"
                    + (f" test={float(res['test']):.5g}" if isinstance(
                        res.get("test"), int | float) else ""))
            final[name].append(rec)

    info = {name: {"space": space_to_dict(m.space), "space_description": describe(m.space),
                   "fixed": dict(m.fixed), "start": [dict(c) for c in m.start],
                   "best_params": searched[name].best_params,
                   "best_val": searched[name].best_value,
                   "n_trials": searched[name].n_counted, "n_failed": searched[name].n_failed,
                   "search_seconds": searched[name].seconds, "trials": searched[name].trials}
            for name, m in methods.items()}
    report = TuneReport(direction, n_trials, seeds, tune_seed, sampler_seed,
                        n_startup_trials, info, final)
    _atomic_json(out / "tuning.json", report.to_dict())
    (out / "tuning.md").write_text(report.markdown())
    return report

