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


def test_bench_moe_banks_runs_tiny(capsys) -> None:
    path = BENCH.parent / "bench_moe_banks.py"
    spec = importlib.util.spec_from_file_location("bench_moe_banks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--tasks", "2", "3", "--experts", "4", "--dim", "8", "--repeats", "1",
                        "--warmup", "0", "--gates", "dselect_k static", "topk per-example"])
    out = capsys.readouterr().out
    assert "Machine:" in out and "load average" in out and "bank/hand (ideal 1.00x)" in out
    assert [(r["gate"], r["T"], r["E"]) for r in rows] == [
        ("dselect_k static", 2, 4), ("dselect_k static", 3, 4),
        ("topk per-example", 2, 4), ("topk per-example", 3, 4)]
    for r in rows:
        assert {"bank dense", "bank sparse", "bank capacity", "loop", "hand", "gate only"} <= set(r)
