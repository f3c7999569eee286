"""The wiring of the minatar_sparse experiment (no game is played here: the DQN pieces
are tested on a tiny environment in tests/rl)."""

import pytest

from compactnn.data.commands import describe_built_in
from compactnn.data.errors import DataNotFoundError
from compactnn.experiments import get, minatar_sparse
from compactnn.experiments.driver import reproduce
from compactnn.rl import DQNRun
from compactnn.rl import minatar as minatar_mod


def test_schedule_scales_with_the_budget():
    cfg = minatar_sparse.Setting(("breakout",), 1, 40_000).dqn()
    assert (cfg.replay_capacity, cfg.replay_start, cfg.target_update, cfg.eps_frames) == (
        40_000, 2_000, 1_000, 4_000)
    big = minatar_sparse.Setting(("breakout",), 1, 5_000_000).dqn()  # MinAtar's own values
    assert (big.replay_capacity, big.replay_start, big.target_update) == (100_000, 5_000, 1_000)


def test_score_falls_back_to_last_episode():
    assert minatar_sparse.score(DQNRun(100, [(50, 3.0), (95, 1.0)], True)) == 1.0
    assert minatar_sparse.score(DQNRun(100, [(50, 3.0)], True)) == 3.0  # none in the last 10%
    assert minatar_sparse.score(DQNRun(100, [], True)) == 0.0


def test_missing_minatar_is_a_one_line_skip(monkeypatch, tmp_path):
    monkeypatch.setattr(minatar_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotFoundError):
        minatar_sparse.run_all(tmp_path, minatar_sparse.QUICK, 0, 1)
    lines = []
    summary = reproduce([get("minatar_sparse")], tmp_path / "run", True, 0, echo=lines.append)
    assert [o.status for o in summary.outcomes] == ["skipped"]
    assert "pip install minatar" in summary.outcomes[0].reason
    assert not (tmp_path / "run" / "minatar_sparse" / "error.txt").exists()


def test_data_list_reports_minatar(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: None if name == "minatar" else real(name))
    line = describe_built_in("minatar", "MinAtar", "cmd", "minatar")[0]
    assert "MISSING" in line and "pip install minatar" in line


def test_random_policy_score_is_seeded():
    pytest.importorskip("minatar")
    a = minatar_sparse.random_policy_score("breakout", 300, 0)
    assert a == minatar_sparse.random_policy_score("breakout", 300, 0) and a >= 0.0


def test_run_records_are_checked_when_read_back(tmp_path):
    import json

    s = minatar_sparse.Setting(("breakout",), 1, 100)
    good = {"game": "breakout", "structure": "conv", "regime": "fixed", "seed": 0,
            "frames": 100, "episodes": [[40, 1.0], [90, 0.0]], "score": 0.0,
            "connections": 10, "hidden_weights": 5, "width": 4, "trainable": 30}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(good))
    assert minatar_sparse.checked_record(path, s, "breakout", "conv", "fixed", 0) == good
    with pytest.raises(ValueError, match="not the record"):
        minatar_sparse.checked_record(path, s, "breakout", "conv", "learned", 0)
    for bad in ({"episodes": [[400, 1.0]]}, {"score": "NaN"}, {"frames": 50},
                {"width": -1}):
        path.write_text(json.dumps(good | bad))
        with pytest.raises(ValueError, match="delete it"):
            minatar_sparse.checked_record(path, s, "breakout", "conv", "fixed", 0)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        minatar_sparse.checked_record(path, s, "breakout", "conv", "fixed", 0)
