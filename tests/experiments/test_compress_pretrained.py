"""The post-training compression experiment end to end on a tiny set-up."""

import csv

import pytest

from compactnn.data import load_digits_split
from compactnn.experiments import get
from compactnn.experiments.compress_pretrained import FRACTIONS, METHODS, run_compression

TINY = {"epochs": 2, "max_train": 512, "calib": 64, "exclude": ["head"],
        "keep_first_last": False, "seeds": 2}


def test_every_method_and_budget_is_measured(tmp_path):
    result = run_compression(tmp_path, "mlp", True, seed=0, scale=TINY, data_name="digits")
    with open(tmp_path / "compress_pretrained_mlp.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["seed"]), float(r["param_fraction"]), r["method"]) for r in rows] == [
        (s, frac, m) for s in (0, 1) for frac in FRACTIONS for m in METHODS]
    n_test = len(load_digits_split(seed=0).y_test)
    for r in rows:
        assert int(r["params"]) <= float(r["param_fraction"]) * int(r["dense_params"]) * 1.02
        # accuracies over the whole digits test split: whole numbers of its images
        hits = float(r["acc_before_ft"]) * n_test
        assert hits == pytest.approx(round(hits), abs=1e-6)
        assert float(r["latency_vs_dense"]) > 0
    # the same budget gives every method the same parameter count
    for frac in FRACTIONS:
        assert len({r["params"] for r in rows if float(r["param_fraction"]) == frac}) == 1
    # the seeds train different dense networks, so their accuracies differ
    assert ({r["acc_before_ft"] for r in rows if r["seed"] == "0"}
            != {r["acc_before_ft"] for r in rows if r["seed"] == "1"})
    assert (tmp_path / "compress_pretrained_mlp.png").exists()
    assert "| 25% | nonlinear |" in result.markdown and "| 100% | dense |" in result.markdown
    # one paired nonlinear-vs-spectral row per budget and stage, Holm-corrected
    assert result.markdown.count("| before FT |") == len(FRACTIONS)
    assert result.markdown.count("| after FT |") == len(FRACTIONS)
    assert "p (Holm)" in result.markdown


def test_resnet_variant_is_full_mode_only():
    assert get("compress_pretrained").in_quick
    assert not get("compress_pretrained_resnet").in_quick
