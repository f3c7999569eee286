"""The DSelect-k study's report: curves, pairing by seed, and a report of a tiny study."""

import numpy as np
import pytest

from compactnn.experiments import mtl_dselect as M
from compactnn.experiments.mtl_dselect_report import (
    _best_epochs,
    late_gain,
    mean_curve,
    paired_values,
    report,
)


def test_mean_curve_holds_the_last_value_of_a_stopped_run():
    np.testing.assert_allclose(mean_curve([[0.0, 0.5, 1.0], [0.2]]), [0.1, 0.35, 0.6])
    assert len(mean_curve([[], []])) == 0


def test_paired_values_keep_only_seeds_every_arm_has():
    recs = [{"params": {"arm": a, "seed": s}, "result": {"test": 10 * s + i}}
            for i, a in enumerate(("x", "y")) for s in (0, 1, 2)]
    recs = [r for r in recs if not (r["params"]["arm"] == "y" and r["params"]["seed"] == 1)]
    vals = paired_values(recs, lambda p: p["arm"], "test")
    assert vals == {"x": [0, 20], "y": [1, 21]}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(M, "PLANTED", {
        **M.PLANTED, "tasks": 8, "clusters": 2, "n_train": 128, "n_val": 32, "n_test": 32,
        "lrs": (1e-2,), "epochs": 2, "patience": 2, "seeds": (0, 1), "remedy_seeds": (0,),
        "spare": 2, "remedy_epochs": 1, "batch_size": 64, "remedy_lr": 1e-2})
    monkeypatch.setattr(M, "DSK_GAMMAS", (1.0,))
    monkeypatch.setattr(M, "DSK_ENTROPIES", (0.1,))
    monkeypatch.setattr(M, "TOPK_IMPORTANCE", (0.1,))


def test_report_of_a_tiny_study(tiny, tmp_path):
    root = tmp_path / "cells"
    md = report(root)
    assert "pending: no evaluation cell finished yet" in md
    study = M.Study(root, log=lambda _m: None)
    for part in ("planted_select", "planted_eval", "planted_remedies"):
        study.run_part(part)
    assert "early (gamma 1)\n\npending: no cell finished yet." in report(root)
    study.run_part("planted_remedies_g1")
    md = report(root, tmp_path / "sat.png")
    g1 = md[md.index("early (gamma 1)"):]
    # gamma 1 beside DSelect-k at its own gamma and the baselines, in both settings
    assert "| frozen experts, 0 spare | DSelect-k gamma 1 warmup_box | 1 |" in g1
    assert "| learned experts, 0 spare | DSelect-k gamma 1 none | 1 |" in g1
    assert "| learned experts, 0 spare | Top-k | 1 |" in g1
    assert "| frozen experts, 0 spare | DSelect-k gamma 1 none |" in g1
    assert "saturated @300" in md
    assert (tmp_path / "sat.png").stat().st_size > 0
    assert "| planted_eval | 10 of 10 |" in md
    assert "| planted_remedies | 31 of 31 |" in md
    assert "**test MSE** (2 seeds)" in md
    assert "DSelect-k gamma_ramp" in md and "frozen experts, 2 spare" in md
    assert "mean test accuracy: pending" in md
    (tmp_path / "docs").mkdir()
    md = report(root, tmp_path / "docs" / "figures" / "sat.png", doc_dir=tmp_path / "docs")
    assert "![saturation](figures/sat.png)" in md  # the link resolves from the document


def test_update_block_replaces_only_between_the_markers(tmp_path):
    from compactnn.experiments.mtl_dselect_report import BEGIN, END, update_block

    doc = tmp_path / "r.md"
    doc.write_text(f"head\n{BEGIN}\nold\n{END}\ntail\n")
    update_block(doc, "new table\n")
    assert doc.read_text() == f"head\n{BEGIN}\nnew table\n{END}\ntail\n"
    for bad in ("no markers\n", f"{END}\n{BEGIN}\n", f"{BEGIN}\n{BEGIN}\n{END}\n"):
        doc.write_text(bad)
        with pytest.raises(ValueError, match="needs one"):
            update_block(doc, "x")
        assert doc.read_text() == bad


def test_saturation_figure_from_selection_cells_alone(tiny, tmp_path):
    from compactnn.experiments.mtl_dselect_report import saturation_figure

    study = M.Study(tmp_path / "cells", log=lambda _m: None)
    assert saturation_figure(study, tmp_path / "none.png") is None
    study.run_part("planted_select")
    assert saturation_figure(study, tmp_path / "sat.png").stat().st_size > 0


@pytest.mark.slow
def test_tuned_part_is_reported_once_finished(tiny, tmp_path, monkeypatch):
    """45 tiny trials (2 epochs of 8 tasks each) and 6 re-trained seeds."""
    monkeypatch.setattr(M, "DSK_GAMMAS", (0.1, 1.0))
    monkeypatch.setattr(M, "DSK_ENTROPIES", (0.1, 1.0))
    monkeypatch.setattr(M, "TOPK_IMPORTANCE", (0.1, 1.0))
    root = tmp_path / "cells"
    assert "tuned comparison (15 random trials per gate)\n\npending" in report(root)
    M.Study(root, log=lambda _m: None).run_part("planted_tuned")
    md = report(root)
    assert "| dselect_k | 15 |" in md and "**exact support**" in md


def test_late_gain_is_what_stopping_ten_percent_earlier_would_lose():
    # 20 epochs: the first 18 reach 1.0 at best, the last two 0.9 -> 10% lower
    h = [2.0] * 10 + [1.0] * 8 + [0.95, 0.9]
    assert late_gain(h) == pytest.approx(0.1 / 0.9)
    assert late_gain([3.0] * 5 + [1.0] * 15) == 0.0  # the best came early
    assert late_gain([1.0] * 9) is None and late_gain([1.0] * 9 + [float("nan")]) is None
    # 11 epochs: the first ceil(9.9) = 10 count as "before"
    assert late_gain([1.0] * 10 + [0.5]) == pytest.approx(1.0)
    recs = [{"result": {"best_epoch": 19, "best_in_last_10pct": True, "val_history": h}},
            {"result": {"best_epoch": 5, "best_in_last_10pct": False,
                        "val_history": [3.0] * 5 + [1.0] * 15}}]
    line = _best_epochs(recs)
    assert line.startswith("median 12, max 19 (1 in the last 10%; the last 10% of epochs")
    assert "median 5.56%, at most 11.11%)" in line
    assert _best_epochs(recs[1:]) == "median 5, max 5"


def test_two_workers_share_a_study_without_running_a_cell_twice(tiny, tmp_path):
    """A cell claimed by another worker is passed over (it is that worker's); the rest of
    the part runs, and a second pass after the claim is gone completes it."""
    root = tmp_path / "cells"
    study = M.Study(root, log=lambda _m: None)
    first = next(iter(study.cells("planted_select")))
    name = M.cell_name(first)
    with study.store.claim("planted_select", name):
        study.run_part("planted_select")
    done = study.store.finished("planted_select")
    assert name not in done and len(done) >= 1
    study.run_part("planted_select")
    assert name in study.store.finished("planted_select")


def test_real_section_compares_only_the_current_choices(tmp_path):
    """The Multi-Fashion section from fake finished cells: the choices, the paired
    comparison over the seeds, best epochs; an evaluation cell of another configuration
    (an earlier provisional choice) and a failed run stay out of the comparison."""
    from compactnn.experiments.mtl_dselect_report import _real

    study = M.Study(tmp_path, log=lambda _m: None)

    def finish(part, c, **res):
        study.store.write(part, M.cell_name(c), c, {"best_epoch": 12, "epochs_run": 15,
                                                    "best_in_last_10pct": True, **res})

    rank = {1e-4: 0.9, 3e-4: 0.7, 1e-3: 0.5}
    for c in list(study.real_select("fashion")):
        finish("fashion_select", c, val=rank[c["lr"]], test=0.0)
    for c in list(study.real_select("fashion"))[9:]:  # stage B: gamma 5 and Top-k 1 win
        finish("fashion_select", c, val=0.4 if c.get("gamma") == 5.0
               or c.get("importance_reg") == 1.0 else 0.6, test=0.0)
    assert "pending" in _real(study, "fashion", "test", False, "acc")
    acc = {"dselect_k": 0.70, "topk": 0.72, "softmax": 0.74}
    evals = list(study.real_eval("fashion"))
    for c in evals:
        finish("fashion_eval", c, val=0.3, test=acc[c["gate"]] + 0.001 * c["seed"],
               best_epoch=20, epochs_run=30, best_in_last_10pct=False)
    stale = {**evals[0], "gamma": 0.01}  # an evaluation cell of a configuration not chosen
    finish("fashion_eval", stale, val=0.1, test=0.99)
    failed = next(c for c in evals if c["gate"] == "topk" and c["seed"] == 4)
    finish("fashion_eval", failed, val=float("nan"), test=float("nan"))
    md = _real(study, "fashion", "test", False, "acc")
    assert "DSelect-k: lr 0.001, gamma 5, entropy_reg 0.1" in md
    assert "Top-k: lr 0.001, importance_reg 1" in md and "softmax: lr 0.001" in md
    assert "Selection runs' best epochs: median 12, max 12 (15 in the last 10%" in md
    assert "Failed evaluation runs (left out of the comparison): topk seed 4" in md
    row = next(line for line in md.splitlines() if line.startswith("| DSelect-k"))
    assert "| 4 | 0.7015 +- 0.0013 |" in row  # seeds 0-3 (Top-k's seed 4 failed), no 0.99
    row = next(line for line in md.splitlines() if line.startswith("| Top-k"))
    assert "| -0.0200 |" in row  # DSelect-k 0.02 below Top-k in every seed
    assert "Best epochs: DSelect-k median 20, max 20" in md
