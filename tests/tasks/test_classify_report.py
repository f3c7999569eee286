"""``compactnn train`` leaves a run to look at: curves.png (loss and accuracy,
training and validation) and report.md (final metrics, the plot, the factorize
report); a resumed run says where it resumes from."""

import json
import sys

from compactnn.cli import main
from compactnn.tasks.classify_report import read_history, write_run_report

BASE = ["data.name=digits", "model.name=mlp", "model.hidden=64,64,64", "optim.batch_size=64",
        "optim.epochs=2", "progress=false", "lowrank.param_ratio=0.5"]


def test_a_resumed_run_says_where_and_the_report_has_metrics_plot_and_factorization(
        tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *BASE, f"out={out}", "stop_after_steps=30"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main(["train", *BASE, f"out={out}"]) == 0
    err = capsys.readouterr().err
    # digits at batch 64: 18 steps per epoch, so step 30 is in the second epoch
    assert f"resuming from epoch 2 (step 30) of {out}\n" in err

    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    result = json.loads((out / "result.json").read_text())
    assert f"| test_accuracy | {result['test_accuracy']:.4f} |" in report
    assert "](curves.png)" in report
    table = (out / "factorize_report.md").read_text().strip()
    assert table.startswith("|") and table in report
    assert f"Parameters {result['dense_params']} -> {result['params']}." in report
    # the curves come from every epoch of metrics.csv, the interrupted part included
    history = read_history(out / "metrics.csv")
    assert [r["epoch"] for r in history] == [1.0, 2.0]
    assert all({"train_loss", "val_loss", "train_accuracy", "val_accuracy"} <= set(r)
               for r in history)


def test_without_matplotlib_the_report_says_how_to_get_the_plot(tmp_path, monkeypatch):
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss,val_loss\n1,10,0.5,0.6\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    write_run_report(tmp_path, {"test_accuracy": 0.5})
    report = (tmp_path / "report.md").read_text()
    assert not (tmp_path / "curves.png").exists()
    assert "matplotlib is not installed (pip install 'compactnn[experiments]')" in report
    assert "| test_accuracy | 0.5000 |" in report
    assert "trained dense" in report
