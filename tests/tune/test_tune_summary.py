"""The cost summary of a finished tuning run: numbers from tuning.json, checked input."""

from __future__ import annotations

import json

import pytest

from compactnn.tune import LogUniform, Method, tune
from compactnn.tune.__main__ import main
from compactnn.tune.summary import load_tuning, wall_time_table


def test_table_sums_the_recorded_seconds(tmp_path):
    rep = tune({"a": Method({"lr": LogUniform(1e-3, 1e-1)}),
                "b": Method({"lr": LogUniform(1e-3, 1e-1)})},
               lambda m, p, s: {"val": p["lr"]}, tmp_path, n_trials=3, seeds=[0, 1])
    d = load_tuning(tmp_path)
    # overwrite the measured seconds with known ones: 3 trials of 20 s, 2 seeds of 30 s
    for info in d["methods"].values():
        info["search_seconds"] = 60.0
    for runs in d["final"].values():
        for r in runs:
            r["seconds"] = 30.0
    lines = wall_time_table(d).splitlines()
    assert lines[2] == "| a | 3 | 1.0 | 2 | 1.0 | 24 |"  # (60 + 60) s / 5 runs
    assert lines[-1] == "| all | 6 | 2.0 | 4 | 2.0 | 24 |"
    assert set(rep.methods) == {"a", "b"}


def test_cli_prints_each_folder_and_refuses_bad_records(tmp_path, capsys):
    tune({"a": Method({"lr": LogUniform(1e-3, 1e-1)})}, lambda m, p, s: {"val": p["lr"]},
         tmp_path / "ok", n_trials=2, seeds=[0])
    assert main([str(tmp_path / "ok")]) == 0
    assert "| all | 2 |" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    for text, match in [("{", "not a readable"), ("[]", "not a tuning record"),
                        (json.dumps({"methods": {"a": {"search_seconds": -1, "n_trials": 2}},
                                     "final": {}}), "finite number >= 0"),
                        (json.dumps({"methods": {}, "final": {"a": [{"seconds": "x"}]}}),
                         "finite number >= 0")]:
        (bad / "tuning.json").write_text(text)
        with pytest.raises(ValueError, match=match):
            load_tuning(bad)
        assert main([str(bad)]) == 2
        assert match.split()[0] in capsys.readouterr().err
    with pytest.raises(ValueError, match="no tuning record"):
        load_tuning(tmp_path / "missing")
