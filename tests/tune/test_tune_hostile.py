"""The tuner against what it finds on disk: a ``tune.sqlite3`` that is not its own, a
study resumed with other settings or edited by hand, final runs that are corrupt or
edited, and a second ``tune()`` into the same folder."""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from compactnn.tune import Categorical, IntRange, LogUniform, Method, Uniform, tune
from compactnn.tune.storage import MARKER_TABLE, TuneFolderBusy, TuneStorageError

SPACE = {"lr": LogUniform(1e-3, 1e-1), "act": Categorical(("relu", "tanh"))}
FIXED = {"width": 8}


class Runs:
    def __init__(self):
        self.calls: list[tuple[str, dict, int]] = []

    def __call__(self, method, params, seed):
        self.calls.append((method, dict(params), seed))
        return {"val": params["lr"] + (params["act"] == "tanh"), "test": 1.0 + seed}


def go(out: Path, runs: Runs, space=None, fixed=None, **kw):
    kw = {"n_trials": 3, "seeds": [0, 1], "n_startup_trials": 1, **kw}
    method = Method(space=SPACE if space is None else space,
                    fixed=FIXED if fixed is None else fixed)
    return tune({"m": method}, runs, out, **kw)


@pytest.fixture(scope="module")
def searched_once(tmp_path_factory) -> Path:
    """One finished tuning folder (searched with SPACE and FIXED), copied by each test
    that resumes it: the search runs once per module, not once per test."""
    out = tmp_path_factory.mktemp("searched")
    go(out, Runs())
    return out


@pytest.fixture
def done(searched_once, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(searched_once, out, ignore=shutil.ignore_patterns(".lock"))
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a tune.sqlite3 that is not ours ------------------------------------------------------
def test_someone_elses_sqlite_database_is_refused_and_left_unchanged(tmp_path):
    db = tmp_path / "tune.sqlite3"
    con = sqlite3.connect(db)
    with con:
        con.execute("CREATE TABLE invoices (id INTEGER, amount REAL)")
        con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.close()
    before = digest(db)
    runs = Runs()
    with pytest.raises(TuneStorageError) as e:
        go(tmp_path, runs)
    assert str(db) in str(e.value) and "invoices" in str(e.value)
    assert digest(db) == before and runs.calls == []


def test_an_optuna_file_without_the_marker_is_refused(tmp_path):
    import optuna

    db = tmp_path / "tune.sqlite3"
    optuna.create_study(study_name="theirs", storage=f"sqlite:///{db}")
    before = digest(db)
    with pytest.raises(TuneStorageError, match=f"no {MARKER_TABLE} table"):
        go(tmp_path, Runs())
    assert digest(db) == before


@pytest.mark.parametrize("content", [b"a text file\n", b"\x00" * 100, b"SQLite format 3\x00x"])
def test_a_file_that_is_not_a_database_is_named(tmp_path, content):
    db = tmp_path / "tune.sqlite3"
    db.write_bytes(content)
    with pytest.raises(TuneStorageError) as e:
        go(tmp_path, Runs())
    assert str(e.value).startswith(str(db)) and db.read_bytes() == content


@pytest.mark.parametrize("empty", ["no bytes", "no tables"])
def test_a_study_file_of_ours_resumes_and_an_empty_file_is_claimed(tmp_path, empty):
    db = tmp_path / "tune.sqlite3"
    if empty == "no bytes":
        db.write_bytes(b"")
    else:  # e.g. created by a concurrent tuner a moment ago
        sqlite3.connect(db).execute("VACUUM").connection.close()
    first = go(tmp_path, Runs())
    again = Runs()
    second = go(tmp_path, again)
    assert again.calls == [] and second.final == first.final


# -- a study resumed with other settings --------------------------------------------------
CHANGES = {
    "narrowed space": ({"space": {**SPACE, "lr": LogUniform(1e-2, 1e-1)}}, "space: changed ['lr']"),
    "added parameter": ({"space": {**SPACE, "drop": Uniform(0.0, 0.5)}}, "space: added ['drop']"),
    "removed parameter": ({"space": {"lr": SPACE["lr"]}}, "space: removed ['act']"),
    "other kind": ({"space": {**SPACE, "act": Categorical(("relu", "gelu"))}},
                   "space: changed ['act']"),
    "fixed value": ({"fixed": {"width": 16}}, "fixed: changed ['width']"),
    "fixed added": ({"fixed": {**FIXED, "depth": 2}}, "fixed: added ['depth']"),
    "tune seed": ({"tune_seed": 777}, "tune_seed: 10000 then, 777 now"),
    "sampler seed": ({"sampler_seed": 5}, "sampler_seed: 0 then, 5 now"),
    "start-up trials": ({"n_startup_trials": 2}, "n_startup_trials: 1 then, 2 now"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_resuming_with_other_settings_is_refused_before_any_run(done, change):
    tmp_path = done
    kwargs, says = CHANGES[change]
    if change == "sampler seed":
        kwargs = {**kwargs, "tune_seed": 10_000}  # only the sampler seed differs
    runs = Runs()
    with pytest.raises(ValueError) as e:
        go(tmp_path, runs, **kwargs)
    msg = str(e.value)
    assert "searched with other settings" in msg and says in msg
    assert str(tmp_path / "tune.sqlite3") in msg
    assert runs.calls == []  # refused at the start, not after the search


def test_more_trials_and_other_evaluation_seeds_still_resume(done):
    tmp_path = done
    runs = Runs()
    report = go(tmp_path, runs, n_trials=4, seeds=[0, 1, 2])
    searched = [c for c in runs.calls if c[2] == 10_000]
    assert len(searched) == 1 and report.methods["m"]["n_trials"] == 4


# -- a study edited by hand ---------------------------------------------------------------
def edit(db: Path, sql: str) -> None:
    con = sqlite3.connect(db)
    with con:
        assert con.execute(sql).rowcount > 0
    con.close()


@pytest.mark.parametrize("sql,says", [
    ("UPDATE trial_params SET param_value = 1e9 WHERE param_name = 'lr'",
     "= 1000000000.0 is outside its space"),
    ("DELETE FROM trial_params WHERE param_name = 'act'", "missing ['act']"),
    ("UPDATE trial_user_attributes SET value_json = '0' WHERE key = 'slot'", "repeats slot 0"),
    ("UPDATE trial_user_attributes SET value_json = '\"x\"' WHERE key = 'slot'",
     "no valid slot"),
])
def test_a_tampered_trial_is_refused_naming_it(done, sql, says):
    tmp_path = done
    edit(tmp_path / "tune.sqlite3", sql)
    runs = Runs()
    with pytest.raises(ValueError) as e:
        go(tmp_path, runs)
    msg = str(e.value)
    assert says in msg and "trial" in msg and "changed outside compactnn" in msg
    assert runs.calls == []


# -- the final runs -----------------------------------------------------------------------
def final(tmp_path: Path, seed: int = 1) -> Path:
    return tmp_path / "final" / f"m__s{seed}.json"


@pytest.mark.parametrize("text,says", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "does not hold the final run of m seed 1"),
    (None, "does not hold the final run of m seed 1"),  # the other seed's file
])
def test_a_corrupt_final_is_refused_naming_its_file(done, text, says):
    tmp_path = done
    f = final(tmp_path)
    f.write_text(final(tmp_path, 0).read_text() if text is None else text)
    with pytest.raises(TuneStorageError) as e:
        go(tmp_path, Runs())
    assert str(e.value).startswith(str(f)) or f"{f} " in str(e.value)
    assert says in str(e.value)


def test_an_edited_final_is_refused_not_reported(done):
    tmp_path = done
    f = final(tmp_path)
    rec = json.loads(f.read_text())
    rec["test"] = 0.0  # a better number typed in
    f.write_text(json.dumps(rec, indent=2))
    with pytest.raises(TuneStorageError, match="was changed after it was written"):
        go(tmp_path, Runs())


def test_a_final_its_study_never_wrote_is_run_again(done):
    tmp_path = done
    (tmp_path / "tune.sqlite3").unlink()  # a fresh search, old final files left over
    runs = Runs()
    report = go(tmp_path, runs)
    assert [c[2] for c in runs.calls if c[2] != 10_000] == [0, 1]  # both re-trained
    assert [r["seed"] for r in report.final["m"]] == [0, 1]
    again = Runs()
    go(tmp_path, again)
    assert again.calls == []  # now the study vouches for them


# -- one tune() per folder ----------------------------------------------------------------
def test_a_second_tune_into_a_held_folder_fails_at_once(tmp_path):
    with open(tmp_path / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        runs = Runs()
        with pytest.raises(TuneFolderBusy, match=str(tmp_path)):
            go(tmp_path, runs)
        assert runs.calls == [] and not (tmp_path / "tune.sqlite3").exists()
    go(tmp_path, Runs())  # released: the folder is usable again


def test_int_and_categorical_values_round_trip_through_the_checks(tmp_path):
    space = {"n": IntRange(1, 4), "flag": Categorical((True, False)), "c": Categorical((1, 2))}
    calls = []

    def run(method, params, seed):
        calls.append(seed)
        return {"val": float(params["n"]) + params["c"], "test": 0.0}

    go(tmp_path, run, space=space)
    n = len(calls)
    go(tmp_path, run, space=space)  # resumes: every stored trial passes the checks
    assert len(calls) == n
