"""Run every benchmark in this folder (``bench_*.py``), in one process, one after
the other, printing their tables.

    python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = ap.parse_args(argv)
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"\n===== {path.name} =====", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(["--quick"] if args.quick else [])
        sys.stdout.flush()


if __name__ == "__main__":
    main()
