"""The run folder: created and checked before any training, held with an
exclusive lock for the whole run, written atomically and as strict JSON.

- ``out`` must be a folder this process can write; a file in its place, a
  read-only folder or one that cannot be created is a :class:`RunFolderError`
  with one clear line, before the data is loaded or a step is taken.
- An exclusive ``fcntl.flock`` on ``out/.lock`` keeps a second run out of the
  same folder (it fails at once with :class:`RunFolderBusy`): two runs writing
  one folder would leave the config of one, the weights of the other and their
  CSV rows interleaved. The operating system drops the lock when the process
  ends, however it ends.
- Temporary files left by a save that was killed halfway are removed on start.
- A run that fails before writing anything (a config or data error) removes the
  folders it created, so a typo leaves no empty run folder behind.
- Files are written to a temporary name and renamed, so a reader never sees
  half a file; JSON is strict (no ``NaN``/``Infinity``: a non-finite number is
  written as ``null``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from compactnn._locks import hold_exclusive

__all__ = ["OUTPUT_FILES", "RunFolder", "RunFolderBusy", "RunFolderError", "json_safe",
           "write_json"]

# What a run writes; "<name>.tmp*" next to them is a save that never finished.
OUTPUT_FILES = ("checkpoint.safetensors", "model.safetensors", "result.json", "config.json",
                "metrics.csv", "gate_weights.csv", "factorize_report.md")


class RunFolderError(OSError):
    """The run folder cannot be used (not a folder, not writable, ...)."""


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock."""


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (tuples become lists)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        raise RunFolderError(f"cannot write {path}: {e.strerror or e}") from None


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict, indented JSON (non-finite numbers as ``null``), atomically."""
    _atomic_write(Path(path), json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


class RunFolder:
    """Context manager over a run folder (see the module doc). Only the main
    process (``is_main``) creates, locks and cleans it; the others just use it."""

    def __init__(self, out: str | Path, is_main: bool = True) -> None:
        if not str(out).strip():
            raise RunFolderError("out must name a folder, got an empty string")
        self.path = Path(out)
        self.is_main = is_main
        self._lock: Any = None
        self._created: list[Path] = []  # folders this run made, deepest last

    def __enter__(self) -> RunFolder:
        if self.is_main:
            try:
                self._prepare()
            except BaseException:  # __exit__ does not run when __enter__ fails
                self.__exit__(RunFolderError, None, None)
                raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()
        if exc_type is not None and self._created:
            self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        (self.path / ".lock").unlink(missing_ok=True)
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only succeeds while empty
            except OSError:
                return

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the lock
            self._lock = None

    def _prepare(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunFolderError(f"out={str(p)!r} is a file, not a folder")
        missing = [q for q in (p, *p.parents) if not q.exists()]
        try:
            p.mkdir(parents=True, exist_ok=True)
            self._created = missing[::-1]
        except OSError as e:
            raise RunFolderError(f"cannot create the run folder {str(p)!r}: "
                                 f"{e.strerror or e}") from None
        try:
            lock = open(p / ".lock", "a")  # noqa: SIM115  (held until release)
        except OSError as e:
            raise RunFolderError(f"cannot write to the run folder {str(p)!r}: "
                                 f"{e.strerror or e}") from None
        if not hold_exclusive(lock.fileno(), block=False):
            lock.close()
            raise RunFolderBusy(f"another run is using {str(p)!r} (it holds {p / '.lock'}); "
                                "wait for it to finish or choose another out") from None
        self._lock = lock
        try:
            probe = p / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise RunFolderError(f"cannot write to the run folder {str(p)!r}: "
                                 f"{e.strerror or e}") from None
        self._clean_stale()

    def _clean_stale(self) -> None:
        for f in self.path.iterdir():
            stem, dot_tmp, _ = f.name.partition(".tmp")
            if dot_tmp and stem in OUTPUT_FILES and f.is_file():
                f.unlink(missing_ok=True)
        for name in OUTPUT_FILES:  # what the run will write (and its temporary name)
            for target in (self.path / name, self.path / f"{name}.tmp"):
                if target.exists() and not target.is_file():
                    raise RunFolderError(f"{target} is in the way (not a file); "
                                         "remove it or choose another out")

    def write_text(self, name: str, text: str) -> None:
        _atomic_write(self.path / name, text)

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)
