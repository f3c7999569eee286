"""Exact checks of the tuning cost summary and its command line: every refusal names the
field and value, and the table's numbers are the closed-form sums of the record."""

from __future__ import annotations

import json

import pytest

from compactnn.tune.__main__ import main
from compactnn.tune.summary import load_tuning, wall_time_table

NUM = "must be a finite number >= 0"
FIRST = "(run the protocol first)"


def _record(methods, final):
    return {"methods": methods, "final": final}


def _write(folder, d):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tuning.json").write_text(d if isinstance(d, str) else json.dumps(d))
    return folder


GOOD = _record({"a": {"search_seconds": 90, "n_trials": 2},
                "b": {"search_seconds": 0.0, "n_trials": 0}},
               {"a": [{"seconds": 30.0}, {"seconds": 60}]})


def test_load_reads_a_folder_or_the_file_itself(tmp_path):
    f = _write(tmp_path / "t", GOOD)
    assert load_tuning(f) == GOOD
    assert load_tuning(f / "tuning.json") == GOOD
    assert load_tuning(str(f)) == GOOD


@pytest.mark.parametrize("bad, where", [
    (True, "search_seconds"), ("1", "search_seconds"), (None, "search_seconds"),
    (float("inf"), "search_seconds"), (float("nan"), "search_seconds"), (-0.5, "search_seconds"),
])
def test_search_seconds_refused_with_field_and_value(tmp_path, bad, where):
    f = _write(tmp_path, json.dumps(_record({"m": {"search_seconds": bad, "n_trials": 1}}, {})))
    with pytest.raises(ValueError) as e:
        load_tuning(f)
    assert str(e.value) == f"{f / 'tuning.json'}: methods['m'].{where} {NUM}, got {bad!r}"


def test_n_trials_and_final_seconds_are_checked(tmp_path):
    f = _write(tmp_path, _record({"m": {"search_seconds": 0, "n_trials": -1}}, {}))
    with pytest.raises(ValueError) as e:
        load_tuning(f)
    assert str(e.value) == f"{f / 'tuning.json'}: methods['m'].n_trials {NUM}, got -1"
    _write(tmp_path, _record({"m": {"search_seconds": 0}}, {}))
    with pytest.raises(ValueError, match=r"n_trials must be a finite number >= 0, got None$"):
        load_tuning(f)
    _write(tmp_path, _record({}, {"m": [{"seconds": 1}, {"seconds": -2}]}))
    with pytest.raises(ValueError) as e:
        load_tuning(f)
    assert str(e.value) == f"{f / 'tuning.json'}: final['m'][].seconds {NUM}, got -2"
    # zero is allowed everywhere (a bound of >= 0, not > 0)
    _write(tmp_path, _record({"m": {"search_seconds": 0, "n_trials": 0}}, {"m": [{"seconds": 0}]}))
    assert load_tuning(f)["final"]["m"] == [{"seconds": 0}]


@pytest.mark.parametrize("d, msg", [
    (_record([], {}), "is not a tuning record (no 'methods' / 'final' tables)"),
    (_record({}, []), "is not a tuning record (no 'methods' / 'final' tables)"),
    ({"methods": {}}, "is not a tuning record (no 'methods' / 'final' tables)"),
    ({"final": {}}, "is not a tuning record (no 'methods' / 'final' tables)"),
    ([], "is not a tuning record (no 'methods' / 'final' tables)"),
    (_record({"m": [1]}, {}), ": methods['m'] must be a table"),
    (_record({}, {"m": {"seconds": 1}}), ": final['m'] must be a list of runs"),
    (_record({}, {"m": [{"seconds": 1}, 3]}), ": final['m'] must be a list of runs"),
])
def test_malformed_tables_refused_exactly(tmp_path, d, msg):
    f = _write(tmp_path, d)
    with pytest.raises(ValueError) as e:
        load_tuning(f)
    assert str(e.value) == f"{f / 'tuning.json'}{'' if msg.startswith(':') else ' '}{msg}"


def test_unreadable_and_missing_records_named(tmp_path):
    with pytest.raises(ValueError) as e:
        load_tuning(tmp_path)
    assert str(e.value) == f"no tuning record at {tmp_path / 'tuning.json'} {FIRST}"
    (tmp_path / "tuning.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError) as e:
        load_tuning(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'tuning.json'} is not a readable tuning record: ")
    (tmp_path / "tuning.json").write_text("{")
    with pytest.raises(ValueError, match=r"is not a readable tuning record: Expecting"):
        load_tuning(tmp_path)
    (tmp_path / "d" / "tuning.json").mkdir(parents=True)  # a folder where the file should be
    with pytest.raises(ValueError) as e:
        load_tuning(tmp_path / "d")
    inner = tmp_path / "d" / "tuning.json"
    assert str(e.value).startswith(f"{inner} is not a readable tuning record: ")


def test_table_is_the_closed_form_of_the_record():
    d = _record({"a": {"search_seconds": 90, "n_trials": 2},
                 "b": {"search_seconds": 0.0, "n_trials": 0},
                 "c": {"search_seconds": 33, "n_trials": 1}},
                {"a": [{"seconds": 30.0}, {"seconds": 60}], "zz": [{"seconds": 1000}]})
    assert wall_time_table(d).splitlines() == [
        "| method | trials | search min | seeds | re-training min | s per run |",
        "| --- | --- | --- | --- | --- | --- |",
        "| a | 2 | 1.5 | 2 | 1.5 | 45 |",   # (90 + 90) s / 4 runs
        "| b | 0 | 0.0 | 0 | 0.0 | - |",    # no run at all: no mean
        "| c | 1 | 0.6 | 0 | 0.0 | 33 |",   # no finals recorded for c
        "| all | 3 | 2.0 | 2 | 1.5 | 43 |",  # (123 + 90) / 5 = 42.6; "zz" is no method
    ]
    assert wall_time_table(_record({}, {})).splitlines()[-1] == "| all | 0 | 0.0 | 0 | 0.0 | - |"
    # minutes are seconds / 60 (6000 s is 100.0 min), and the totals start from zero
    big = _record({"m": {"search_seconds": 6000, "n_trials": 0}}, {"m": [{"seconds": 6000}]})
    assert wall_time_table(big).splitlines()[2:] == ["| m | 0 | 100.0 | 1 | 100.0 | 12000 |",
                                                     "| all | 0 | 100.0 | 1 | 100.0 | 12000 |"]
    zero = _record({"m": {"search_seconds": 0, "n_trials": 0}}, {"m": [{"seconds": 0}]})
    assert wall_time_table(zero).splitlines()[-1] == "| all | 0 | 0.0 | 1 | 0.0 | 0 |"


def test_cli_prints_every_folder_in_order_and_stops_at_the_first_bad(tmp_path, capsys):
    one = _write(tmp_path / "one", _record({"a": {"search_seconds": 60, "n_trials": 1}}, {}))
    two = _write(tmp_path / "two", _record({"b": {"search_seconds": 120, "n_trials": 2}}, {}))
    assert main([str(one), str(two)]) == 0
    out, err = capsys.readouterr()
    assert out == (f"{one}\n\n{wall_time_table(load_tuning(one))}\n\n"
                   f"{two}\n\n{wall_time_table(load_tuning(two))}\n\n")
    assert err == ""
    assert main([str(one), str(tmp_path / "none"), str(two)]) == 2
    out, err = capsys.readouterr()
    assert out == f"{one}\n\n{wall_time_table(load_tuning(one))}\n\n"
    assert err == f"error: no tuning record at {tmp_path / 'none'} {FIRST}\n"


def test_cli_needs_a_folder(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m compactnn.tune [-h] folders [folders ...]")
    assert "the following arguments are required: folders" in err


def test_cli_help_describes_the_command_and_its_argument(capsys):
    import compactnn.tune.__main__ as cli

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert " ".join(cli.__doc__.split()) in out
    assert "folders tuning folders (holding tuning.json)" in out
