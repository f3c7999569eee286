"""A study edited outside compactnn is refused with the trial and the reason named."""

from __future__ import annotations

import re

import pytest

optuna = pytest.importorskip("optuna")

from compactnn.tune.search import _check_trials  # noqa: E402
from compactnn.tune.space import Uniform  # noqa: E402


def test_a_complete_trial_with_an_infinite_score_is_named() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        params={"x": 0.5}, distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
        value=float("inf"), user_attrs={"slot": 0}))
    want = ("study 'm' in w, trial 0 is complete with a non-finite score inf: the study was "
            "changed outside compactnn; delete it, or choose another out_dir, to search afresh")
    with pytest.raises(ValueError, match="^" + re.escape(want) + "$"):
        _check_trials(study, "m", "w", {"x": Uniform(0.0, 1.0)})


def test_a_race_creating_the_study_is_retried(monkeypatch) -> None:
    from compactnn.tune import search

    class IntegrityError(Exception):
        pass

    real, calls = optuna.create_study, []

    def racy(**kw):
        calls.append(kw["study_name"])
        if len(calls) < 3:  # another process created the tables first, twice
            raise IntegrityError("UNIQUE constraint failed")
        return real(**kw)

    monkeypatch.setattr(optuna, "create_study", racy)
    monkeypatch.setattr(search.time, "sleep", lambda s: None)
    _, study = search._load("m", "sqlite:///:memory:", "minimize", 0, 2)
    assert calls == ["m", "m", "m"] and study.study_name == "m"


def test_other_settings_are_listed_and_the_way_out_named() -> None:
    from compactnn.tune.search import _check_settings

    study = optuna.create_study()
    _check_settings(study, "m", "w", {"seed": 1, "fixed": {"a": 1, "b": 2}})
    want = ("study 'm' in w was searched with other settings (fixed: added ['c'], removed "
            "['b'], changed ['a']; seed: 1 then, 2 now), so its trials are not draws of this "
            "search: restore the settings to resume it, or choose another out_dir (or delete "
            "the study file) to search afresh")
    with pytest.raises(ValueError, match="^" + re.escape(want) + "$"):
        _check_settings(study, "m", "w", {"seed": 2, "fixed": {"a": 3, "c": 4}})
    _check_settings(study, "m", "w", {"fixed": {"b": 2, "a": 1}, "seed": 1})  # same


def test_a_search_needs_at_least_one_trial(tmp_path) -> None:
    from compactnn.tune.search import run_search, storage_url

    def never(method, params, seed):
        raise AssertionError("nothing may run")

    url = storage_url(tmp_path / "s.db")
    with pytest.raises(ValueError, match=r"^n_trials must be >= 1, got n_trials=0$"):
        run_search("m", {"x": Uniform(0.0, 1.0)}, never, url, n_trials=0, tune_seed=0)
    with pytest.raises(TypeError, match=r"^sampler_seed must be an int"):
        run_search("m", {"x": Uniform(0.0, 1.0)}, never, url, n_trials=1, tune_seed=0,
                   sampler_seed=0.5)
    with pytest.raises(ValueError, match=r"^n_startup_trials must be >= 0, got "
                       r"n_startup_trials=-1$"):
        run_search("m", {"x": Uniform(0.0, 1.0)}, never, url, n_trials=1, tune_seed=0,
                   n_startup_trials=-1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("start", [{"x": 0.5}, 3, None])
def test_start_must_be_a_sequence_of_configurations(tmp_path, start) -> None:
    from compactnn.tune.search import run_search, storage_url

    with pytest.raises(TypeError, match=r"^m: start must be a sequence of configurations, got "):
        run_search("m", {"x": Uniform(0.0, 1.0)}, lambda *a: {"val": 0.0},
                   storage_url(tmp_path / "s.db"), n_trials=1, tune_seed=0, start=start)
    assert list(tmp_path.iterdir()) == []
