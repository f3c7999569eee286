"""The tuner's files: the SQLite study file is claimed before Optuna touches it, and a
tuning folder is held by one :func:`compactnn.tune.tune` at a time.

- :func:`claim_sqlite`: a file at the study path must be absent, empty, or an SQLite
  database this package created (it holds the marker table ``compactnn_tune``). Anything
  else (a text file, someone's own database, an Optuna file without the marker) is
  refused naming the file, so Optuna never adds its tables to a database that is not
  ours.
- :class:`FolderLock`: an exclusive ``fcntl.flock`` on ``<folder>/.lock``, as run folders
  are locked (:mod:`compactnn.engine.run_folder`): two searches writing one study would
  interleave their trials and overwrite each other's final runs. The operating system
  drops the lock when the process ends, however it ends.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from compactnn._locks import hold_exclusive

__all__ = ["MARKER_TABLE", "FolderLock", "TuneFolderBusy", "TuneStorageError",
           "claim_sqlite", "sqlite_path"]

MARKER_TABLE = "compactnn_tune"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_FIX = "move it away or choose another out_dir"


class TuneStorageError(ValueError):
    """The study file cannot be used: not ours, not a database, or inconsistent."""


class TuneFolderBusy(RuntimeError):
    """Another process holds the tuning folder's lock."""


def sqlite_path(storage: str) -> Path | None:
    """The file of an ``sqlite:///`` storage URL (None for other storages)."""
    prefix = "sqlite:///"
    if not storage.startswith(prefix) or storage == prefix + ":memory:":
        return None
    return Path(storage[len(prefix):])


def _tables(path: Path) -> set[str]:
    con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
    try:
        return {r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


def claim_sqlite(path: str | Path) -> Path:
    """Make ``path`` a study file of this package, or refuse (see the module docstring).
    A new (absent or empty) file gets the marker table; returns the path."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise TuneStorageError(f"the study file {path} is {what}; {_FIX}")
    if st is not None and st.st_size > 0:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
        if head != _SQLITE_MAGIC:
            raise TuneStorageError(f"{path} is not an SQLite database, so not a tuning "
                                   f"study; {_FIX}")
        try:
            tables = _tables(path)
        except sqlite3.OperationalError:  # e.g. locked by a writer for over a minute
            raise
        except sqlite3.DatabaseError as e:
            raise TuneStorageError(f"{path} is a damaged SQLite database ({e}); "
                                   f"{_FIX}") from None
        if MARKER_TABLE in tables:
            return path
        if not tables:  # a database with nothing in it yet (e.g. being created beside us)
            return _mark(path)
        listed = ", ".join(sorted(tables)) or "none"
        raise TuneStorageError(
            f"{path} is an SQLite database that compactnn's tuner did not create (no "
            f"{MARKER_TABLE} table; tables: {listed}); refusing to add the tuning tables "
            f"to it: {_FIX}")
    return _mark(path)


def _mark(path: Path) -> Path:
    con = sqlite3.connect(path, timeout=60)
    try:
        with con:
            con.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} "
                        "(key TEXT PRIMARY KEY, value TEXT)")
            con.execute(f"INSERT OR REPLACE INTO {MARKER_TABLE} VALUES ('format', '1')")
    finally:
        con.close()
    return path


class FolderLock:
    """Context manager holding an exclusive lock on ``<folder>/.lock``; a second holder
    fails at once with :class:`TuneFolderBusy`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._fh: Any = None

    def __enter__(self) -> FolderLock:
        path = self.folder / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        fh = open(fd, "r+b")  # noqa: SIM115 (held until __exit__)
        if not hold_exclusive(fh.fileno(), block=False):
            fh.close()
            raise TuneFolderBusy(f"another tuning run is using {self.folder} (it holds "
                                 f"{path}); wait for it to finish or choose another "
                                 "out_dir") from None
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the lock
            self._fh = None
