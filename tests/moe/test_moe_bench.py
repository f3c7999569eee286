"""Smoke test of benchmarks/bench_moe.py at tiny sizes (no timing thresholds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_moe.py"


def test_bench_moe_runs_tiny(capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_moe", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(
        ["--batch", "64", "--dim", "16", "--hidden", "32"]
        + ["--repeats", "1", "--warmup", "0", "--threads", "1"]
    )
    out = capsys.readouterr().out
    assert "Machine:" in out and "fwd speedup" in out and "gate share fwd" in out
    assert len(result["speed"]) == 3 and len(result["shares"]) == 4
    topk = result["speed"][0]
    assert topk["nnz"] == 2.0 and topk["ideal"] == 8.0
