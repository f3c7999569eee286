"""Metric logging to CSV (always) and TensorBoard (when installed)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

__all__ = ["MetricLogger"]


class MetricLogger:
    """Append one row of metrics per call to ``metrics.csv`` in ``out_dir`` (and to
    TensorBoard when ``torch.utils.tensorboard`` works). Rows written before a
    resume are kept; columns are fixed by the first row."""

    def __init__(self, out_dir: str | Path, enabled: bool = True,
                 tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        self.enabled = enabled
        self._fields: list[str] | None = None
        self._tb = None
        if not enabled:
            return
        if self.path.exists():
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self._fields = header or None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except Exception:  # tensorboard is optional
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (those of an interrupted run that a
        resume will redo)."""
        if not (self.enabled and self.path.exists()):
            return
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(float(r.get("step", 0))) <= step]
        if len(keep) != len(rows) and self._fields:
            with open(self.path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self._fields)
                w.writeheader()
                w.writerows(keep)

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
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

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
