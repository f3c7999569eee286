"""``python -m compactnn.tune FOLDER [FOLDER ...]``: the cost of finished tuning runs
(:func:`compactnn.tune.summary.wall_time_table`)."""

from __future__ import annotations

import argparse
import sys

from compactnn.tune.summary import load_tuning, wall_time_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compactnn.tune", description=__doc__)
    p.add_argument("folders", nargs="+", help="tuning folders (holding tuning.json)")
    a = p.parse_args(argv)
    for folder in a.folders:
        try:
            table = wall_time_table(load_tuning(folder))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{folder}\n\n{table}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
