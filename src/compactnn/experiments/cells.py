"""Resumable experiment cells: one finished run, one JSON file.

A long study is a sequence of *cells* (one configuration at one seed). Each finished
cell is written atomically to ``root/<part>/<name>.json`` (a temporary file in the same
folder, then ``os.replace``), so an interrupted study leaves only whole files behind, and
a restarted driver skips every cell whose file is already there. Files are read back
with their structure checked (nothing read from a file is trusted before it is checked).

Several workers may share one root: a cell is run only by the process holding its claim
(an exclusive ``flock`` on ``root/.claims/<part>/<name>.lock``, released by the kernel
however the process ends, so a killed worker leaves no stale claim). With
:meth:`CellStore.try_run` a worker passes over cells another one is running and goes on
with the next; :meth:`CellStore.run` waits for the other worker and returns its record.
Where ``fcntl`` is missing (Windows) there are no claims, and one worker per root is the
user's rule.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compactnn._locks import hold_exclusive

__all__ = ["CellStore", "study_main"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$")


def _check_name(kind: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 200:
        raise ValueError(f"{kind} must be 1-200 characters of letters, digits and _.=+- "
                         f"(not starting with a symbol), got {value!r}")
    return value


def _jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings (JSON has no NaN) and tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return _jsonable(value.item())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def _restore(value: Any) -> Any:
    if value in ("nan", "inf", "-inf"):
        return float(value)
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


class CellStore:
    """Finished cells under ``root`` (see the module doc)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, part: str, name: str) -> Path:
        return self.root / _check_name("part", part) / f"{_check_name('name', name)}.json"

    def load(self, part: str, name: str) -> dict[str, Any] | None:
        """The finished cell's record, or None when it has not run. A file that is not a
        record of this cell raises ValueError naming the file."""
        path = self.path(part, name)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable cell record ({e})") from e
        if not isinstance(record, dict) or not isinstance(record.get("result"), dict) \
                or record.get("part") != part or record.get("name") != name:
            raise ValueError(f"{path}: not a record of cell {part}/{name} (needs part, name "
                             "and a result object)")
        return _restore(record)

    def write(self, part: str, name: str, params: Mapping[str, Any],
              result: Mapping[str, Any]) -> dict[str, Any]:
        """Write the cell atomically; returns the record as stored."""
        path = self.path(part, name)
        record = {"part": part, "name": name, "params": _jsonable(dict(params)),
                  "result": _jsonable(dict(result))}
        text = json.dumps(record, indent=1, sort_keys=True, allow_nan=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return _restore(json.loads(text))

    @contextmanager
    def claim(self, part: str, name: str, wait: bool = True) -> Iterator[bool]:
        """Hold the cell's claim for the block. Yields True when this process holds it;
        with ``wait=False`` yields False at once when another process does (then
        nothing is held), else waits for it."""
        folder = self.root / ".claims" / _check_name("part", part)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_check_name('name', name)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:  # closing the file releases the claim
            yield hold_exclusive(fd, block=wait)
        finally:
            os.close(fd)

    def run(self, part: str, name: str, params: Mapping[str, Any],
            fn: Callable[[Mapping[str, Any]], Mapping[str, Any]],
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """The cell's record: read back when finished, else ``fn(params)`` run and written
        under the cell's claim. When another worker is running the cell, this waits for
        it and returns its record."""
        record = self._run(part, name, params, fn, log, wait=True)
        assert record is not None  # a waiting claim is always granted
        return record

    def try_run(self, part: str, name: str, params: Mapping[str, Any],
                fn: Callable[[Mapping[str, Any]], Mapping[str, Any]],
                log: Callable[[str], None] | None = None) -> dict[str, Any] | None:
        """As :meth:`run`, but None at once when another worker is running the cell."""
        return self._run(part, name, params, fn, log, wait=False)

    def _run(self, part: str, name: str, params: Mapping[str, Any],
             fn: Callable[[Mapping[str, Any]], Mapping[str, Any]],
             log: Callable[[str], None] | None, wait: bool) -> dict[str, Any] | None:
        done = self.load(part, name)
        if done is not None:
            return done
        with self.claim(part, name, wait) as mine:
            if not mine:
                if log:
                    log(f"skipping {part}/{name}: another worker is running it")
                return None
            done = self.load(part, name)  # finished while this worker waited for the claim
            if done is not None:
                return done
            if log:
                log(f"running {part}/{name}")
            return self.write(part, name, params, fn(params))

    def finished(self, part: str) -> dict[str, dict[str, Any]]:
        """Every finished cell of ``part`` by name."""
        folder = self.root / _check_name("part", part)
        if not folder.is_dir():
            return {}
        out = {}
        for path in sorted(folder.glob("*.json")):
            record = self.load(part, path.stem)
            if record is not None:
                out[path.stem] = record
        return out


def study_main(module: str, settings: Mapping[str, Any], run_study: Callable[..., Any],
               argv: list[str]) -> None:
    """The command line of a resumable study: ``python -m MODULE OUT [SCALE]`` with
    ``SCALE`` a key of ``settings``; one thread, timestamped progress, the report printed."""
    import argparse
    import time

    import torch

    ap = argparse.ArgumentParser(prog=f"python -m {module}",
                                 description="Run or resume the study, one cell at a time; "
                                             "finished cells are skipped.")
    ap.add_argument("out", type=Path, help="the results folder (cells and report)")
    ap.add_argument("scale", nargs="?", choices=list(settings), default=None,
                    help="the setting (default: the full one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = run_study(args.out, quick=False, scale=args.scale,
                       log=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    print(result.markdown)
