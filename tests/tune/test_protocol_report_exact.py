"""The protocol's records, checked character for character: the report's markdown and
dict, the files it writes, the progress messages, the defaults, and the refusals of bad
methods and of final-run files that do not hold what they must."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compactnn.tune import LogUniform, Method, run_search, storage_url, tune
from compactnn.tune.protocol import TuneReport, _jsonable, markdown_table
from compactnn.tune.storage import TuneStorageError


def _report(**kw):
    methods = {
        "a": {"space_description": {"lr": "log-uniform [0.001, 0.1]"},
              "best_params": {"lr": 0.0123456}, "fixed": {"wd": 0.5},
              "start": [{"lr": 0.01}, {"lr": 0.02}], "n_trials": 4, "n_failed": 1,
              "best_val": 0.25, "search_seconds": 12.6},
        "b": {"space_description": {"k": "int [1, 4]"}, "best_params": {"k": 3},
              "fixed": {}, "start": [], "n_trials": 4, "n_failed": 0, "best_val": 1 / 3,
              "search_seconds": 2.4},
    }
    args = dict(direction="minimize", n_trials=4, seeds=[0, 1], tune_seed=10000,
                sampler_seed=0, n_startup_trials=10, methods=methods,
                final={"a": [{"val": 1.0}, {"val": 2.0}]})
    args.update(kw)
    return TuneReport(**args)


def test_markdown_with_start_configurations_exactly():
    assert _report().markdown() == (
        "Search: TPE (Optuna), 4 trials per method (the first 4 drawn at random), tuning seed "
        "10000, chosen on the validation split (minimize); the best configuration re-trained "
        "from seeds [0, 1] and evaluated once on test. Each method's start configuration "
        "(column \"start\") is one of its trials, within the budget.\n\n"
        "| method | hyper-parameter | search space | chosen | start |\n"
        "| --- | --- | --- | --- | --- |\n"
        "| a | lr | log-uniform [0.001, 0.1] | 0.01235 | 0.01; 0.02 |\n"
        "| a | wd | fixed | 0.5 | - |\n"
        "| b | k | int [1, 4] | 3 | - |\n\n"
        "| method | trials | failed | best val | search s | final seeds |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| a | 4 | 1 | 0.25 | 13 | 2 |\n"
        "| b | 4 | 0 | 0.3333 | 2 | 0 |\n")


def test_markdown_without_start_configurations_exactly():
    rep = _report(n_startup_trials=2, direction="maximize")
    del rep.methods["a"]
    assert rep.markdown("{:.2f}") == (
        "Search: TPE (Optuna), 4 trials per method (the first 2 drawn at random), tuning seed "
        "10000, chosen on the validation split (maximize); the best configuration re-trained "
        "from seeds [0, 1] and evaluated once on test.\n\n"
        "| method | hyper-parameter | search space | chosen |\n"
        "| --- | --- | --- | --- |\n"
        "| b | k | int [1, 4] | 3 |\n\n"
        "| method | trials | failed | best val | search s | final seeds |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| b | 4 | 0 | 0.33 | 2 | 0 |\n")


def test_to_dict_and_values_exactly():
    rep = _report()
    assert rep.to_dict() == {
        "protocol": {"direction": "minimize", "n_trials": 4, "seeds": [0, 1],
                     "tune_seed": 10000, "sampler_seed": 0, "n_startup_trials": 10,
                     "sampler": "optuna TPE (seeded per trial slot)"},
        "methods": rep.methods, "final": rep.final}
    assert rep.values("a", "val") == [1.0, 2.0]


def test_markdown_table_exactly():
    assert markdown_table(["x", "y"], [[1, 2.5], ["a", None]]) == (
        "| x | y |\n| --- | --- |\n| 1 | 2.5 |\n| a | None |")
    assert markdown_table(["only"], []) == "| only |\n| --- |"


def test_jsonable_prefers_tolist_then_item_then_str():
    class Item:
        def item(self):
            return 7

    assert _jsonable(np.arange(3)) == [0, 1, 2]
    assert _jsonable(Item()) == 7
    assert _jsonable({1, 2}.__class__) == "<class 'set'>"


def _run(method, params, seed):
    return {"val": params["lr"], "test": np.float64(0.5) + seed, "n": np.int64(3)}


SPACE = {"lr": LogUniform(1e-3, 1e-1)}


def test_defaults_files_and_messages(tmp_path):
    said: list[str] = []
    rep = tune({"a": Method(SPACE, fixed={"w": 2})}, _run, tmp_path / "new" / "t",
               n_trials=2, seeds=[0, 1], log=said.append)
    out = tmp_path / "new" / "t"
    assert (rep.sampler_seed, rep.tune_seed, rep.n_startup_trials) == (0, 10_000, 10)
    assert (out / "tuning.md").read_text() == rep.markdown()
    assert json.loads((out / "tuning.json").read_text()) == json.loads(
        json.dumps(rep.to_dict(), default=_jsonable))
    lr = rep.methods["a"]["best_params"]["lr"]
    assert [r["seed"] for r in rep.final["a"]] == [0, 1]
    for s, r in enumerate(rep.final["a"]):
        assert r["method"] == "a" and r["params"] == {"w": 2, "lr": lr}
        assert (r["test"], r["n"]) == (0.5 + s, 3)
        assert json.loads((out / "final" / f"a__s{s}.json").read_text()) == r
    assert said[-2:] == [f"a seed 0: val={lr:.5g} test=0.5", f"a seed 1: val={lr:.5g} test=1.5"]
    assert said[0].startswith("a trial 1/2: val=")
    # the same call again runs nothing and says nothing about seeds
    said.clear()
    again = tune({"a": Method(SPACE, fixed={"w": 2})}, _run, out, n_trials=2, seeds=[0, 1],
                 log=said.append)
    assert again.final == rep.final
    assert not any(" seed " in m for m in said)


def test_a_message_without_test_and_an_explicit_tune_seed(tmp_path):
    said: list[str] = []
    rep = tune({"a": Method(SPACE)}, lambda m, p, s: {"val": p["lr"], "test": "n/a"},
               tmp_path, n_trials=1, seeds=[3], sampler_seed=5, tune_seed=4, log=said.append)
    assert (rep.sampler_seed, rep.tune_seed) == (5, 4)
    assert said[-1] == f"a seed 3: val={rep.methods['a']['best_params']['lr']:.5g}"
    rep2 = tune({"b": Method(SPACE)}, lambda m, p, s: {"val": p["lr"]}, tmp_path / "x",
                n_trials=1, seeds=[0], sampler_seed=5)
    assert rep2.tune_seed == 10_005


def test_a_final_file_without_val_is_refused_naming_it(tmp_path):
    tune({"a": Method(SPACE)}, lambda m, p, s: {"val": p["lr"]}, tmp_path, n_trials=1,
         seeds=[0])
    f = tmp_path / "final" / "a__s0.json"
    rec = json.loads(f.read_text())
    del rec["val"]
    f.write_text(json.dumps(rec))
    with pytest.raises(TuneStorageError) as e:
        tune({"a": Method(SPACE)}, lambda m, p, s: {"val": p["lr"]}, tmp_path, n_trials=1,
             seeds=[0])
    assert str(e.value) == (f"{f} does not hold the final run of a seed 0 (method, seed, "
                            "params and val); delete it to re-run seed 0 of a")


def test_bad_methods_refused_exactly(tmp_path):
    with pytest.raises(TypeError) as e:
        tune({"a": Method(SPACE, fixed=[("w", 1)])}, _run, tmp_path, n_trials=1, seeds=[0])
    assert str(e.value) == "methods['a'].fixed must be a mapping"
    with pytest.raises(ValueError) as e:
        tune({"a": Method(SPACE)}, _run, tmp_path, n_trials=1, seeds=[0], direction="max")
    assert "direction" in str(e.value) and "'max'" in str(e.value)
    assert not (tmp_path / "tune.sqlite3").exists()


def test_a_final_file_the_study_never_wrote_is_rerun_with_a_message(tmp_path):
    run = lambda m, p, s: {"val": p["lr"], "test": float(s)}  # noqa: E731
    tune({"a": Method(SPACE)}, run, tmp_path, n_trials=1, seeds=[0])
    rec = json.loads((tmp_path / "final" / "a__s0.json").read_text())
    planted = tmp_path / "final" / "a__s1.json"
    planted.write_text(json.dumps({**rec, "seed": 1, "test": 99.0}))
    said: list[str] = []
    rep = tune({"a": Method(SPACE)}, run, tmp_path, n_trials=1, seeds=[0, 1], log=said.append)
    assert f"{planted} was not written by this study's search; re-running it" in said
    assert [r["test"] for r in rep.final["a"]] == [0.0, 1.0]


def test_the_sampler_seed_reaches_the_search(tmp_path):
    def trials(sampler_seed, where):
        rep = tune({"a": Method(SPACE)}, lambda m, p, s: {"val": p["lr"]}, tmp_path / where,
                   n_trials=3, seeds=[0], tune_seed=4, sampler_seed=sampler_seed,
                   n_startup_trials=3)
        return [t["params"] for t in rep.methods["a"]["trials"]]

    direct = run_search("a", SPACE, lambda m, p, s: {"val": p["lr"]},
                        storage_url(tmp_path / "direct.sqlite3"), n_trials=3, tune_seed=4,
                        sampler_seed=5, n_startup_trials=3)
    assert trials(5, "five") == [t["params"] for t in direct.trials]
    assert trials(0, "zero") != trials(5, "five-again")
