"""The tuning protocol: resume without repeats, equal budgets, determinism, records."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compactnn.tune import (
    Categorical,
    IntRange,
    LogUniform,
    Method,
    Uniform,
    run_search,
    space_from_dict,
    space_to_dict,
    storage_url,
    tune,
)

SPACE = {"lr": LogUniform(1e-4, 1e-1), "width": IntRange(4, 64, log=True),
         "act": Categorical(("relu", "tanh")), "drop": Uniform(0.0, 0.5)}


def score(params: dict) -> float:
    return (math.log10(params["lr"]) + 2.0) ** 2 + abs(params["drop"] - 0.1) + (
        0.3 if params.get("act") == "tanh" else 0.0)


class Recorder:
    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple[str, dict, int]] = []
        self.stop_after = stop_after

    def __call__(self, method, params, seed):
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt  # the process is interrupted mid-trial
        self.calls.append((method, dict(params), seed))
        v = score(params)
        return {"val": v, "test": v + 1.0, "extra": 3}


def _search(tmp_path: Path, run, n_trials=8, sampler_seed=0, name="m"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return run_search(name, SPACE, run, storage_url(tmp_path / "s.sqlite3"),
                      n_trials=n_trials, tune_seed=99, sampler_seed=sampler_seed,
                      n_startup_trials=3)


def test_interrupted_search_resumes_to_the_budget_without_repeats(tmp_path):
    full = Recorder()
    ref = _search(tmp_path / "a", full)
    first = Recorder(stop_after=5)
    with pytest.raises(KeyboardInterrupt):
        _search(tmp_path / "b", first)
    assert len(first.calls) == 5
    second = Recorder()
    res = _search(tmp_path / "b", second)
    # the resumed process runs only the missing slots, and draws what an uninterrupted
    # search would have drawn (the sampler is seeded per slot)
    assert len(second.calls) == 3
    assert [c[1] for c in first.calls + second.calls] == [c[1] for c in full.calls]
    assert res.n_counted == 8 and res.best_params == ref.best_params
    assert [t["slot"] for t in res.trials] == list(range(8))
    again = Recorder()
    _search(tmp_path / "b", again)
    assert again.calls == []  # a finished search runs nothing


def test_search_killed_by_sigkill_resumes(tmp_path):
    src = Path(__file__).resolve().parents[2] / "src"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(src)!r})
        from compactnn.tune import LogUniform, run_search, storage_url
        calls = []
        def run(method, params, seed):
            calls.append(params)
            if len(calls) == 4 and sys.argv[1] == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            with open(sys.argv[2], "a") as f:
                f.write(repr(params["lr"]) + "\\n")
            return {{"val": params["lr"]}}
        run_search("m", {{"lr": LogUniform(1e-3, 1.0)}}, run,
                   storage_url(sys.argv[3]), n_trials=6, tune_seed=1, n_startup_trials=2)
    """)
    db, log = tmp_path / "s.sqlite3", tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run([sys.executable, "-c", script, "kill", str(log), str(db)], env=env)
    assert r.returncode == -9
    assert len(log.read_text().split()) == 3  # the 4th trial died mid-run
    r = subprocess.run([sys.executable, "-c", script, "run", str(log), str(db)], env=env)
    assert r.returncode == 0
    lrs = log.read_text().split()
    assert len(lrs) == 6 and len(set(lrs)) == 6
    import optuna

    study = optuna.load_study(study_name="m", storage=storage_url(db))
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 6 and states.count("FAIL") == 1  # the killed one


def test_same_seed_same_search_other_seed_other_search(tmp_path):
    a, b, c = Recorder(), Recorder(), Recorder()
    ra = _search(tmp_path / "a", a, sampler_seed=3)
    rb = _search(tmp_path / "b", b, sampler_seed=3)
    _search(tmp_path / "c", c, sampler_seed=4)
    assert [x[1] for x in a.calls] == [x[1] for x in b.calls]
    assert ra.best_params == rb.best_params and ra.best_value == rb.best_value
    assert [x[1] for x in a.calls] != [x[1] for x in c.calls]
    assert all(x[2] == 99 for x in a.calls)  # every trial trains with the tuning seed


def test_tune_gives_every_method_the_same_budget_and_records_it(tmp_path):
    calls: dict[str, int] = {}

    def run(method, params, seed):
        calls[method] = calls.get(method, 0) + 1
        if method == "fragile" and params["lr"] > 0.01:
            raise FloatingPointError("diverged")  # a failed trial still uses its slot
        if method == "nan" and params["lr"] > 0.02:
            return {"val": float("nan")}
        return {"val": params["lr"], "test": 2 * params["lr"]}

    methods = {"plain": Method({"lr": LogUniform(1e-4, 1e-1)}),
               "wide": Method({"lr": LogUniform(1e-4, 1e-1), "gamma": LogUniform(1e-3, 10.0),
                               "k": Categorical((1, 2, 4))}, fixed={"batch": 128}),
               "fragile": Method({"lr": LogUniform(1e-4, 1e-1)}),
               "nan": Method({"lr": LogUniform(1e-4, 1e-1)})}
    rep = tune(methods, run, tmp_path, n_trials=7, seeds=[0, 1, 2], n_startup_trials=3)
    assert {m: i["n_trials"] for m, i in rep.methods.items()} == dict.fromkeys(methods, 7)
    assert calls == dict.fromkeys(methods, 7 + 3)
    assert rep.methods["fragile"]["n_failed"] == sum(
        t["error"] is not None for t in rep.methods["fragile"]["trials"])
    assert all("FloatingPointError" in t["error"] for t in rep.methods["fragile"]["trials"]
               if t["state"] == "FAIL")
    # the final runs use the best params (fixed values included) with every seed
    for m, info in rep.methods.items():
        assert [r["seed"] for r in rep.final[m]] == [0, 1, 2]
        assert rep.final[m][0]["params"] == {**methods[m].fixed, **info["best_params"]}
        assert info["best_val"] == min(t["val"] for t in info["trials"] if t["val"] is not None)
    assert rep.final["wide"][0]["params"]["batch"] == 128
    saved = json.loads((tmp_path / "tuning.json").read_text())
    assert saved["protocol"]["n_trials"] == 7
    assert space_from_dict(saved["methods"]["wide"]["space"]) == methods["wide"].space
    md = (tmp_path / "tuning.md").read_text()
    assert "| wide | gamma | log-uniform [0.001, 10] |" in md
    assert "| wide | batch | fixed | 128 |" in md
    # a second call finds everything done and trains nothing
    calls.clear()
    rep2 = tune(methods, run, tmp_path, n_trials=7, seeds=[0, 1, 2], n_startup_trials=3)
    assert calls == {} and rep2.final == rep.final


def test_tuning_trials_never_store_test_numbers(tmp_path):
    import optuna

    _search(tmp_path, Recorder(), n_trials=3)
    study = optuna.load_study(study_name="m", storage=storage_url(tmp_path / "s.sqlite3"))
    keys = {k for t in study.trials for k in t.user_attrs}
    assert "run_extra" in keys and not any("test" in k for k in keys)


def test_all_failed_trials_raise(tmp_path):
    with pytest.raises(RuntimeError, match="every one of the 3 trials failed"):
        _search(tmp_path, lambda m, p, s: {"val": float("inf")}, n_trials=3)


@pytest.mark.parametrize("kwargs, err", [
    ({"n_trials": 0}, ValueError), ({"seeds": []}, TypeError), ({"seeds": [1, 1]}, ValueError),
    ({"tune_seed": 0}, ValueError), ({"direction": "up"}, ValueError),
    ({"n_trials": 2.0}, TypeError)])
def test_tune_rejects_bad_arguments_before_running(tmp_path, kwargs, err):
    args = {"n_trials": 2, "seeds": [0, 1], **kwargs}
    ran = []
    with pytest.raises(err):
        tune({"m": Method({"lr": LogUniform(1e-3, 1.0)})},
             lambda m, p, s: ran.append(1) or {"val": 1.0}, tmp_path / "o", **args)
    assert ran == []


@pytest.mark.parametrize("make, err", [
    (lambda: LogUniform(0.0, 1.0), ValueError), (lambda: LogUniform(1.0, 0.5), ValueError),
    (lambda: Uniform("a", 1.0), TypeError), (lambda: IntRange(0, 10, log=True), ValueError),
    (lambda: IntRange(1.5, 4), TypeError), (lambda: Categorical(("a",)), ValueError),
    (lambda: Categorical(("a", "a")), ValueError), (lambda: Categorical((1, [2])), TypeError),
    (lambda: Uniform(0.0, float("nan")), ValueError)])
def test_bad_distributions_are_refused(make, err):
    with pytest.raises(err):
        make()


def test_space_round_trip_and_errors():
    d = space_to_dict(SPACE)
    assert space_from_dict(json.loads(json.dumps(d))) == SPACE
    with pytest.raises(ValueError, match="is empty"):
        space_to_dict({})
    with pytest.raises(ValueError, match="type"):
        space_from_dict({"lr": {"type": "beta", "low": 0, "high": 1}})
    with pytest.raises(ValueError, match="lr"):
        space_from_dict({"lr": {"type": "uniform", "lo": 0, "high": 1}})
    with pytest.raises(TypeError, match="LogUniform"):
        run_search("m", {"lr": (1e-3, 1.0)}, lambda *a: {"val": 0.0}, "sqlite://",
                   n_trials=1, tune_seed=0)


START = [{"lr": 1e-3, "width": 16, "act": "relu", "drop": 0.0},
         {"lr": 3e-2, "width": 4, "act": "tanh", "drop": 0.5}]


def test_start_configurations_run_first_within_the_budget(tmp_path):
    rec = Recorder()
    res = run_search("m", SPACE, rec, storage_url(tmp_path / "s.sqlite3"), n_trials=5,
                     tune_seed=99, n_startup_trials=3, start=START)
    assert [c[1] for c in rec.calls[:2]] == START  # in order, exactly these values
    assert len(rec.calls) == 5 and res.n_counted == 5  # they count toward the budget
    assert all(c[1] not in START for c in rec.calls[2:])


def test_a_resumed_search_runs_only_the_missing_start_configurations(tmp_path):
    url = storage_url(tmp_path / "s.sqlite3")
    first = Recorder()
    run_search("m", SPACE, first, url, n_trials=3, tune_seed=99, start=START[:1])
    assert first.calls[0][1] == START[0]
    # the budget grows and a second start configuration is added: START[0] is not re-run
    second = Recorder()
    res = run_search("m", SPACE, second, url, n_trials=5, tune_seed=99, start=START)
    assert second.calls[0][1] == START[1] and len(second.calls) == 2
    assert [c[1] for c in first.calls + second.calls].count(START[0]) == 1
    assert res.n_counted == 5


def test_every_method_gets_its_start_and_the_same_budget(tmp_path):
    calls: dict[str, list] = {}

    def run(method, params, seed):
        calls.setdefault(method, []).append(params)
        return {"val": params["lr"]}

    methods = {"a": Method({"lr": LogUniform(1e-4, 1e-1)}, start=({"lr": 1e-3},)),
               "b": Method({"lr": LogUniform(1e-4, 1e-1), "g": LogUniform(1e-3, 10.0)},
                           start=({"lr": 2e-3, "g": 1.0},))}
    rep = tune(methods, run, tmp_path, n_trials=3, seeds=[0])
    assert calls["a"][0] == {"lr": 1e-3} and calls["b"][0] == {"lr": 2e-3, "g": 1.0}
    assert {m: i["n_trials"] for m, i in rep.methods.items()} == {"a": 3, "b": 3}
    assert rep.methods["b"]["start"] == [{"lr": 2e-3, "g": 1.0}]
    assert "| b | g | log-uniform [0.001, 10] |" in (tmp_path / "tuning.md").read_text()


@pytest.mark.parametrize("start, match", [
    ([{"lr": 1e-3}], "missing"),  # not every searched parameter
    ([{**START[0], "momentum": 0.9}], "unknown"),
    ([{**START[0], "lr": 1.0}], "outside its space"),
    ([{**START[0], "act": "gelu"}], "outside its space"),
    ([{**START[0], "width": 8.0}], "outside its space"),  # a float for an int parameter
    ([START[0]] * 4, "do not fit|more than n_trials"),
])
def test_bad_start_configurations_are_refused_before_running(tmp_path, start, match):
    rec = Recorder()
    with pytest.raises(ValueError, match=match):
        run_search("m", SPACE, rec, storage_url(tmp_path / "s.sqlite3"), n_trials=3,
                   tune_seed=99, start=start)
    assert rec.calls == []
    with pytest.raises(ValueError, match=match):
        tune({"m": Method(SPACE, start=tuple(start))}, rec, tmp_path / "t", n_trials=3,
             seeds=[0])
    assert rec.calls == []
