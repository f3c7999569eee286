"""Metric logging to CSV (always) and TensorBoard (when installed)."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

__all__ = ["MetricLogger"]


class MetricLogger:
    """Append one row of metrics per call to ``metrics.csv`` in ``out_dir`` (and to
    TensorBoard when ``torch.utils.tensorboard`` works). Rows written before a
    resume are kept; columns are fixed by the first row.

    On resume the header found in the file is checked against the first row logged:
    a header that neither holds every column of the row nor is a part of them (it was
    replaced or edited) is rewritten with the row's columns, the kept rows remapped
    by column name, with a warning; the rows are never written under a foreign
    header (they would come out empty)."""

    def __init__(self, out_dir: str | Path, enabled: bool = True,
                 tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.enabled = enabled
        self._fields: list[str] | None = None
        self._check_header = False  # the header came from the file: check it once
        self._tb = None
        if not enabled:
            return
        if self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self._fields = header or None
            self._check_header = self._fields is not None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except Exception:  # tensorboard is optional
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (those of an interrupted run that a
        resume will redo), and a last row that a kill cut short: a row without its
        line end, with too few fields or an unreadable step."""
        if not (self.enabled and self.path.exists()):
            return
        text = self.path.read_text()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):
            lines = lines[:-1]  # torn: the write of this row never finished
        if not lines:  # not even a whole header: start the file afresh
            self.path.unlink()
            self._fields = None
            return
        rows = list(csv.reader(lines))
        self._fields = rows[0]
        self._check_header = True
        keep = []
        for row in rows[1:]:
            rec = dict(zip(self._fields, row, strict=False))
            try:
                ok = len(row) == len(self._fields) and int(float(rec["step"])) <= step
            except (KeyError, ValueError):
                ok = False
            if ok:
                keep.append(row)
        if len(keep) != len(rows) - 1 or "".join(lines) != text:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self._fields)
                w.writerows(keep)
            tmp.replace(self.path)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._check_header and self._fields is not None and self.path.exists():
            self._fix_header(list(row))
        self._check_header = False
        new = not self.path.exists() or self._fields is None
        if self._fields is None:
            self._fields = list(row)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self._tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("step", "epoch"):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def _fix_header(self, columns: list[str]) -> None:
        header = self._fields or []
        ours = set(header) <= set(columns) or set(columns) <= set(header)
        if ours and len(set(header)) == len(header) and header:
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))[1:]
        kept = [dict(zip(header, r, strict=False)) for r in rows]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows([[rec.get(c, "") for c in columns] for rec in kept])
        tmp.replace(self.path)
        self._fields = columns
        shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
        warnings.warn(f"{self.path}: its header ({shown}) is not this run's columns; "
                      f"rewrote it with the run's {len(columns)} columns ({len(kept)} "
                      "earlier rows kept, remapped by column name)", stacklevel=2)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
