"""The protocol's choices, checked value for value: the best trial in either
direction, the final runs trained with the evaluation seeds (never the tuning seed),
and final runs redone when the chosen parameters change."""

from __future__ import annotations

import json

import pytest

from compactnn.tune import LogUniform, Method, run_search, storage_url, tune


class Calls:
    """A run whose scores depend on the parameters and the seed, recording every call."""

    def __init__(self):
        self.calls: list[tuple[str, dict, int]] = []

    def __call__(self, method, params, seed):
        self.calls.append((method, dict(params), seed))
        return {"val": params["lr"] + 1e-3 * seed, "test": 10 * params["lr"] + seed}


@pytest.mark.parametrize("direction, pick", [("minimize", min), ("maximize", max)])
def test_the_best_trial_follows_the_direction(tmp_path, direction, pick):
    res = run_search("m", {"lr": LogUniform(1e-4, 1e-1)}, Calls(),
                     storage_url(tmp_path / "s.sqlite3"), n_trials=6, tune_seed=7,
                     direction=direction, n_startup_trials=6)
    vals = [t["val"] for t in res.trials]
    assert len(set(vals)) == 6
    best = pick(vals)
    assert res.best_value == best
    assert res.best_params == res.trials[vals.index(best)]["params"]


@pytest.mark.parametrize("direction, pick", [("minimize", min), ("maximize", max)])
def test_final_runs_use_the_evaluation_seeds_with_the_chosen_params(tmp_path, direction, pick):
    run = Calls()
    rep = tune({"m": Method({"lr": LogUniform(1e-4, 1e-1)}, fixed={"width": 8})}, run,
               tmp_path, n_trials=4, seeds=[3, 5], direction=direction, tune_seed=99,
               n_startup_trials=4)
    search, final = run.calls[:4], run.calls[4:]
    assert [s for _, _, s in search] == [99] * 4
    chosen = pick(search, key=lambda c: c[1]["lr"])[1]
    assert final == [("m", chosen, 3), ("m", chosen, 5)]
    recs = rep.final["m"]
    assert [(r["seed"], r["params"]) for r in recs] == [(3, chosen), (5, chosen)]
    assert [r["val"] for r in recs] == [chosen["lr"] + 3e-3, chosen["lr"] + 5e-3]
    assert [r["test"] for r in recs] == [10 * chosen["lr"] + 3, 10 * chosen["lr"] + 5]
    assert rep.values("m", "test") == [10 * chosen["lr"] + 3, 10 * chosen["lr"] + 5]
    saved = json.loads((tmp_path / "final" / "m__s5.json").read_text())
    assert saved["seed"] == 5 and saved["test"] == 10 * chosen["lr"] + 5


def test_final_runs_are_redone_when_a_longer_search_changes_the_choice(tmp_path):
    method = {"m": Method({"lr": LogUniform(1e-4, 1e-1)}, start=({"lr": 0.05},))}
    first = tune(method, Calls(), tmp_path, n_trials=1, seeds=[0, 1], n_startup_trials=1)
    assert first.final["m"][0]["params"] == {"lr": 0.05}
    run = Calls()
    second = tune(method, run, tmp_path, n_trials=4, seeds=[0, 1], n_startup_trials=1)
    chosen = second.methods["m"]["best_params"]
    assert chosen != {"lr": 0.05}  # the precondition: the choice changed
    assert run.calls[-2:] == [("m", chosen, 0), ("m", chosen, 1)]
    assert [r["params"] for r in second.final["m"]] == [chosen, chosen]
    assert [r["val"] for r in second.final["m"]] == [chosen["lr"], chosen["lr"] + 1e-3]
    # with nothing changed, nothing is trained again
    again = Calls()
    assert tune(method, again, tmp_path, n_trials=4, seeds=[0, 1],
                n_startup_trials=1).final == second.final
    assert again.calls == []
