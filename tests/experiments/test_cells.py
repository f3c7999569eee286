"""Resumable cells: atomic JSON records, skipped once finished, checked when read."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from compactnn.experiments.cells import CellStore


def test_round_trip_keeps_values_and_non_finite_floats(tmp_path):
    store = CellStore(tmp_path)
    rec = store.write("p1", "a=1+b=x", {"a": 1, "b": "x"},
                      {"val": math.nan, "test": 0.5, "hist": (1.0, math.inf),
                       "arr": np.array([1, 2]), "t": torch.tensor(3.5), "n": np.float32(2)})
    back = store.load("p1", "a=1+b=x")
    assert {k: v for k, v in back["result"].items() if k != "val"} == \
        {k: v for k, v in rec["result"].items() if k != "val"}
    assert math.isnan(back["result"]["val"]) and back["result"]["hist"] == [1.0, math.inf]
    assert back["result"]["arr"] == [1, 2] and back["result"]["t"] == 3.5
    assert back["params"] == {"a": 1, "b": "x"}
    assert [p.name for p in (tmp_path / "p1").iterdir()] == ["a=1+b=x.json"]  # no temp left


def test_run_skips_a_finished_cell(tmp_path):
    store = CellStore(tmp_path)
    calls = []

    def fn(params):
        calls.append(params)
        return {"val": 1.0}

    store.run("p", "c1", {"x": 1}, fn)
    store.run("p", "c1", {"x": 1}, fn)
    assert len(calls) == 1
    assert set(store.finished("p")) == {"c1"}
    assert store.finished("missing") == {}


def test_a_failing_cell_writes_nothing(tmp_path):
    store = CellStore(tmp_path)

    def boom(params):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        store.run("p", "c1", {}, boom)
    assert store.load("p", "c1") is None
    assert not list((tmp_path).rglob("*.tmp"))


@pytest.mark.parametrize("text, match", [
    ("{not json", "readable"),
    ("[1, 2]", "not a record"),
    (json.dumps({"part": "p", "name": "other", "result": {}}), "not a record"),
    (json.dumps({"part": "p", "name": "c", "result": 3}), "not a record"),
])
def test_hostile_files_are_refused_by_name(tmp_path, text, match):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "c.json").write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        CellStore(tmp_path).load("p", "c")
    assert "c.json" in str(e.value)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 201, 3])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        CellStore(tmp_path).path("p", name)


def test_study_main_parses_its_command_line_before_running_anything(tmp_path, capsys):
    from compactnn.experiments.cells import study_main

    calls = []

    def run_study(out, quick, scale, log):
        calls.append((out, quick, scale))
        return type("R", (), {"markdown": "report"})()

    settings = {"quick": 1, "full": 2}
    # help, an option-looking folder and an unknown scale never start a study
    for argv, code in ((["--help"], 0), (["-h"], 0), (["-x"], 2), ([], 2),
                       ([str(tmp_path), "bogus"], 2), ([str(tmp_path), "quick", "x"], 2)):
        with pytest.raises(SystemExit) as e:
            study_main("m", settings, run_study, argv)
        assert e.value.code == code, argv
    assert calls == []
    study_main("m", settings, run_study, [str(tmp_path), "quick"])
    study_main("m", settings, run_study, [str(tmp_path)])
    assert calls == [(tmp_path, False, "quick"), (tmp_path, False, None)]
    assert capsys.readouterr().out.endswith("report\n")


needs_flock = pytest.mark.skipif(importlib.util.find_spec("fcntl") is None,
                                 reason="claims need POSIX locks")


@needs_flock
def test_a_claimed_cell_is_passed_over_or_waited_for(tmp_path):
    import threading
    import time

    store, other = CellStore(tmp_path), CellStore(tmp_path)

    def never(_p):
        raise AssertionError("the cell ran twice")

    # another worker holds the claim: try_run passes over it without running it
    with store.claim("p", "c") as mine:
        assert mine
        assert other.try_run("p", "c", {}, never) is None
        assert not other.path("p", "c").exists()
    # run() waits for the worker that holds the claim and returns that worker's record
    held, release = threading.Event(), threading.Event()

    def worker():
        with store.claim("p", "d"):
            held.set()
            release.wait(5)
            time.sleep(0.05)
            store.write("p", "d", {"k": 1}, {"val": 2.0})

    t = threading.Thread(target=worker)
    t.start()
    held.wait(5)
    release.set()
    rec = other.run("p", "d", {"k": 1}, never)
    t.join()
    assert rec["result"] == {"val": 2.0}
    # once free, the cell runs
    assert other.try_run("p", "c", {"k": 3}, lambda p: {"val": p["k"]})["result"] == {"val": 3}


@needs_flock
def test_a_killed_worker_leaves_no_stale_claim(tmp_path):
    import subprocess
    import sys

    code = ("import sys, time; from compactnn.experiments.cells import CellStore\n"
            "with CellStore(sys.argv[1]).claim('p', 'c'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert CellStore(tmp_path).try_run("p", "c", {}, lambda p: {"val": 1}) is None
    finally:
        proc.kill()
        proc.wait()
    rec = CellStore(tmp_path).try_run("p", "c", {}, lambda p: {"val": 1})
    assert rec is not None and rec["result"] == {"val": 1}
