"""Exact checks of the tuner's files: which storage URLs name a file, what a claimed study
file holds, every refusal's message, and the folder lock's file and exclusivity."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from compactnn.tune.storage import (
    MARKER_TABLE,
    FolderLock,
    TuneFolderBusy,
    TuneStorageError,
    claim_sqlite,
    sqlite_path,
)

FIX = "move it away or choose another out_dir"


def _rows(path):
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows = list(con.execute(f"SELECT key, value FROM {MARKER_TABLE}")) \
            if MARKER_TABLE in tables else None
        return tables, rows
    finally:
        con.close()


@pytest.mark.parametrize("url, path", [
    ("sqlite:///study.db", Path("study.db")), ("sqlite:////abs/s.db", Path("/abs/s.db")),
    ("sqlite:///a/:memory:", Path("a/:memory:")), ("sqlite:///:memory:", None),
    ("sqlite://:memory:", None), ("sqlite://host/x.db", None), ("postgresql:///x", None),
    ("xsqlite:///x.db", None),
])
def test_sqlite_path_names_only_sqlite_files(url, path):
    assert sqlite_path(url) == path


def test_absent_and_empty_files_get_the_marker(tmp_path):
    for p in (tmp_path / "new.db", tmp_path / "empty.db"):
        if p.name == "empty.db":
            p.touch()
        assert claim_sqlite(str(p)) == p
        assert _rows(p) == ({MARKER_TABLE}, [("format", "1")])
        assert claim_sqlite(p) == p  # ours: accepted again, unchanged
        assert _rows(p) == ({MARKER_TABLE}, [("format", "1")])


def test_a_database_without_tables_is_marked(tmp_path):
    p = tmp_path / "blank.db"
    con = sqlite3.connect(p)
    con.execute("PRAGMA user_version = 7")  # writes the header, creates no table
    con.commit()
    con.close()
    assert p.stat().st_size > 0
    assert claim_sqlite(p) == p
    assert _rows(p) == ({MARKER_TABLE}, [("format", "1")])


def test_a_foreign_database_is_refused_untouched(tmp_path):
    p = tmp_path / "theirs.db"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE zeta (x)")
    con.execute("CREATE TABLE alpha (y)")
    con.commit()
    con.close()
    before = p.read_bytes()
    with pytest.raises(TuneStorageError) as e:
        claim_sqlite(p)
    assert str(e.value) == (
        f"{p} is an SQLite database that compactnn's tuner did not create (no "
        f"{MARKER_TABLE} table; tables: alpha, zeta); refusing to add the tuning tables to it:"
        f" {FIX}")
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["theirs.db"]  # no journal left behind


def test_non_databases_are_refused_with_their_reason(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("SQLite format 2 and more")
    with pytest.raises(TuneStorageError) as e:
        claim_sqlite(text)
    assert str(e.value) == f"{text} is not an SQLite database, so not a tuning study; {FIX}"
    assert text.read_text() == "SQLite format 2 and more"
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(TuneStorageError) as e:
        claim_sqlite(damaged)
    assert str(e.value).startswith(f"{damaged} is a damaged SQLite database (")
    assert str(e.value).endswith(f"); {FIX}")
    folder = tmp_path / "dir.db"
    folder.mkdir()
    with pytest.raises(TuneStorageError) as e:
        claim_sqlite(folder)
    assert str(e.value) == f"the study file {folder} is not a regular file; {FIX}"
    link = tmp_path / "link.db"
    link.symlink_to(tmp_path / "absent.db")
    with pytest.raises(TuneStorageError) as e:
        claim_sqlite(link)
    assert str(e.value) == f"the study file {link} is a symbolic link; {FIX}"
    assert not (tmp_path / "absent.db").exists()


def test_folder_lock_is_exclusive_and_released(tmp_path):
    old = os.umask(0)
    try:
        lock = FolderLock(str(tmp_path))
        assert lock.folder == tmp_path
        with lock as held:
            assert held is lock
            assert stat.S_IMODE(os.stat(tmp_path / ".lock").st_mode) == 0o644
            with pytest.raises(TuneFolderBusy) as e:
                FolderLock(tmp_path).__enter__()
            assert str(e.value) == (
                f"another tuning run is using {tmp_path} (it holds {tmp_path / '.lock'}); "
                "wait for it to finish or choose another out_dir")
        assert lock._fh is None
        lock.__exit__(None, None, None)  # a second exit is harmless
        with FolderLock(tmp_path):  # free again
            pass
    finally:
        os.umask(old)


def test_folder_lock_does_not_follow_a_link(tmp_path):
    target = tmp_path / "elsewhere"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(target)
    with pytest.raises(OSError):
        FolderLock(tmp_path / "run").__enter__()
    assert not target.exists()
