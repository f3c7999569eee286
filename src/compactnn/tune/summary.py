"""What a finished tuning protocol cost: trials, re-trained seeds and wall time per
method, read from the ``tuning.json`` that :func:`compactnn.tune.tune` writes.

``python -m compactnn.tune RUN/tune [RUN2/tune ...]`` prints one table per folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compactnn.tune.protocol import markdown_table

__all__ = ["load_tuning", "wall_time_table"]


def _number(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {v!r}")
    return float(v)


def load_tuning(path: str | Path) -> dict[str, Any]:
    """``tuning.json`` (or a folder holding it), checked for what the summary reads."""
    p = Path(path)
    if p.is_dir():
        p = p / "tuning.json"
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"no tuning record at {p} (run the protocol first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} is not a readable tuning record: {e}") from None
    if not isinstance(d, dict) or not isinstance(d.get("methods"), dict) \
            or not isinstance(d.get("final"), dict):
        raise ValueError(f"{p} is not a tuning record (no 'methods' / 'final' tables)")
    for name, info in d["methods"].items():
        if not isinstance(info, dict):
            raise ValueError(f"{p}: methods[{name!r}] must be a table")
        _number(f"{p}: methods[{name!r}].search_seconds", info.get("search_seconds"))
        _number(f"{p}: methods[{name!r}].n_trials", info.get("n_trials"))
    for name, runs in d["final"].items():
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise ValueError(f"{p}: final[{name!r}] must be a list of runs")
        for r in runs:
            _number(f"{p}: final[{name!r}][].seconds", r.get("seconds"))
    return d


def wall_time_table(tuning: Mapping[str, Any]) -> str:
    """Per method: trials, search minutes, re-trained seeds, re-training minutes and the
    mean seconds of one run; a last row sums them."""
    rows, tot = [], [0, 0.0, 0, 0.0]
    for name, info in tuning["methods"].items():
        finals = tuning["final"].get(name, [])
        search, final = float(info["search_seconds"]), sum(float(r["seconds"]) for r in finals)
        n = int(info["n_trials"]) + len(finals)
        rows.append([name, int(info["n_trials"]), f"{search / 60:.1f}", len(finals),
                     f"{final / 60:.1f}", f"{(search + final) / n:.0f}" if n else "-"])
        tot = [tot[0] + int(info["n_trials"]), tot[1] + search, tot[2] + len(finals),
               tot[3] + final]
    n = tot[0] + tot[2]
    rows.append(["all", tot[0], f"{tot[1] / 60:.1f}", tot[2], f"{tot[3] / 60:.1f}",
                 f"{(tot[1] + tot[3]) / n:.0f}" if n else "-"])
    return markdown_table(["method", "trials", "search min", "seeds", "re-training min",
                           "s per run"], rows)
