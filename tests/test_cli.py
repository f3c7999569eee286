"""The ``compactnn`` command, the README's test command and the digits data the
quick experiments use."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
import torch

from compactnn.cli import build_parser, main
from compactnn.data import load_digits_split
from compactnn.experiments import registry

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> list[str]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise AssertionError("compactnn has no subcommands")


# --------------------------------------------------------------------------- CLI


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: compactnn")
    for name in ("reproduce", "list"):
        assert name in out


@pytest.mark.parametrize("command", subcommands())
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: compactnn {command}" in capsys.readouterr().out


def test_reproduce_help_lists_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    out = capsys.readouterr().out
    for option in ("--full", "--only", "--out", "--seed"):
        assert option in out


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "required" in capsys.readouterr().err


def test_list_prints_registered_experiments(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    exps = registry()
    assert "digits_lowrank" in exps
    lines = out.strip().splitlines()
    assert len(lines) == len(exps)
    for line, exp in zip(lines, exps.values(), strict=True):
        assert line.startswith(exp.name)
        assert exp.description in line


def test_reproduce_unknown_experiment_returns_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "--only", "nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "nonexistent" in err and "digits_lowrank" in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_readme_test_command_is_what_ci_runs():
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md does not exist yet")
    text = readme.read_text()
    marker = "<!-- test-command -->"
    if marker not in text:
        pytest.skip(f"README.md has no {marker} marker yet")
    after = text.split(marker, 1)[1]
    block = re.search(r"```[a-z]*\n(.*?)```", after, re.S)
    assert block, "no fenced block after the test-command marker"
    lines = [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines()]
    lines = [ln for ln in lines if ln]
    assert lines, "the fenced block after the marker is empty"
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    assert lines[0] == ci[-1]


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_digits_split(seed=0)


def test_digits_shapes_and_range(digits):
    sizes = [len(digits.x_train), len(digits.x_val), len(digits.x_test)]
    assert sum(sizes) == 1797
    assert sizes[2] == math.ceil(0.2 * 1797)
    assert sizes[1] == pytest.approx(0.15 * 1797, abs=2)
    for part in ("train", "val", "test"):
        x, y = getattr(digits, f"x_{part}"), getattr(digits, f"y_{part}")
        assert x.dtype == torch.float32 and y.dtype == torch.long
        assert x.shape == (len(y), 64)
        assert x.min().item() == 0.0 and x.max().item() == 1.0
        assert set(y.unique().tolist()) == set(range(10))
    assert digits.num_classes == 10


def test_digits_stratified(digits):
    full = torch.cat([digits.y_train, digits.y_val, digits.y_test])
    share = torch.bincount(full, minlength=10).double() / len(full)
    for y in (digits.y_train, digits.y_val, digits.y_test):
        part = torch.bincount(y, minlength=10).double()
        # each class within one example of its exact proportional share
        assert ((part - share * len(y)).abs() <= 1.0 + 1e-9).all()


def test_digits_seeded(digits):
    again = load_digits_split(seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test,
                                                                      digits.y_test)
    other = load_digits_split(seed=1)
    assert not torch.equal(other.x_train, digits.x_train)


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.2), (0.5, 0.5), (0.2, 1.0), (-0.1, 0.2)])
def test_digits_bad_fractions(val, test):
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match="fraction"):
        load_digits_split(val_fraction=val, test_fraction=test)


def test_loader_parts(digits):
    batches = list(digits.loader("val", 100))
    assert sum(len(y) for _, y in batches) == len(digits.y_val)
    with pytest.raises(ValueError, match="'dev'"):
        digits.loader("dev", 10)


# --------------------------------------------------------------------------- reproduce driver


@pytest.fixture
def stub_experiments():
    """Re-register experiments with stub run functions (restored afterwards); returns
    (put, calls)."""
    from compactnn.experiments import ExperimentResult, register

    originals = registry()
    calls: list[str] = []

    def put(name, fn=None, data=None):
        exp = originals[name]

        def run(out_dir, quick, seed, **kw):
            calls.append(name)
            if fn is not None:
                return fn(out_dir)
            (out_dir / "table.csv").write_text("a\n1\n")
            return ExperimentResult(name, f"{name} ran on {seed}\n")

        register(name, exp.description, exp.in_quick, exp.parallel,
                 exp.data if data is None else data)(run)

    yield put, calls
    for exp in originals.values():
        register(exp.name, exp.description, exp.in_quick, exp.parallel, exp.data)(exp.run)


def test_reproduce_skips_an_experiment_whose_data_is_missing_and_runs_the_rest(
        stub_experiments, tmp_path, monkeypatch, capsys):
    """`compactnn reproduce --only lowrank_grid function_gap` without Fashion-MNIST:
    function_gap runs (its body stubbed to keep the test short), lowrank_grid is skipped
    with one line, no traceback, the report lists the skip, exit code 3."""
    put, calls = stub_experiments
    put("lowrank_grid")  # must never be called: its data is missing
    put("function_gap")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("COMPACTNN_FASHION_MNIST", str(empty))
    out = tmp_path / "run"
    code = main(["reproduce", "--only", "lowrank_grid", "function_gap", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 3
    assert calls == ["function_gap"]
    skip_lines = [ln for ln in captured.out.splitlines() if ln.startswith("skipped lowrank_grid")]
    assert len(skip_lines) == 1
    assert "fashion_mnist" in skip_lines[0]
    assert "`compactnn data fetch fashion_mnist`" in skip_lines[0]
    assert "Traceback" not in captured.out + captured.err
    report = (out / "report.md").read_text()
    status = report.split("## Skipped or failed", 1)[1]
    assert "**lowrank_grid** (skipped)" in status and "compactnn data fetch fashion_mnist" in status
    assert "| function_gap | ok |" in report and "function_gap ran on 0" in report
    assert (out / "function_gap" / "table.csv").exists() and not (out / "lowrank_grid").exists()


def test_reproduce_records_a_failure_and_continues(stub_experiments, tmp_path, capsys):
    put, calls = stub_experiments

    def boom(out_dir):
        raise RuntimeError("boom in the middle\nsecond line")

    put("digits_lowrank", boom)
    put("function_gap")
    out = tmp_path / "run"
    assert main(["reproduce", "--only", "digits_lowrank", "function_gap",
                 "--out", str(out)]) == 4
    captured = capsys.readouterr()
    assert calls == ["digits_lowrank", "function_gap"]
    failed = [ln for ln in captured.out.splitlines() if ln.startswith("FAILED digits_lowrank")]
    assert len(failed) == 1 and "RuntimeError: boom in the middle" in failed[0]
    assert "Traceback" not in captured.out + captured.err
    tb = (out / "digits_lowrank" / "error.txt").read_text()
    assert "Traceback" in tb and "second line" in tb
    report = (out / "report.md").read_text()
    assert "**digits_lowrank** (failed): RuntimeError: boom in the middle" in report
    assert "| function_gap | ok |" in report


def test_reproduce_debug_prints_the_failure_traceback(stub_experiments, tmp_path, capsys):
    put, _ = stub_experiments
    put("function_gap", lambda out_dir: 1 / 0)
    assert main(["reproduce", "--only", "function_gap", "--out", str(tmp_path / "r"),
                 "--debug"]) == 4
    assert "ZeroDivisionError" in capsys.readouterr().out.split("FAILED")[0]


def test_reproduce_skips_on_missing_data_found_only_at_run_time(stub_experiments, tmp_path,
                                                                capsys):
    from compactnn.data.errors import DataNotFoundError

    put, _ = stub_experiments

    def needs_data(out_dir):
        raise DataNotFoundError("Census-Income not found: get it with `compactnn data fetch "
                                "census`", "census", "compactnn data fetch census")

    put("function_gap", needs_data, data=())
    out = tmp_path / "run"
    assert main(["reproduce", "--only", "function_gap", "--out", str(out)]) == 3
    assert "skipped function_gap: census is missing" in capsys.readouterr().out
    assert "**function_gap** (skipped)" in (out / "report.md").read_text()


def test_reproduce_fetch_downloads_missing_data_first(stub_experiments, tmp_path, monkeypatch,
                                                      capsys):
    import compactnn.data.fetch as fetch_mod
    from compactnn.data.errors import FetchError

    put, calls = stub_experiments
    put("mtl_census", data=("census",))
    put("mtl_multi_fashion", data=("fashion_mnist",))
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("COMPACTNN_FASHION_MNIST", str(empty))
    monkeypatch.setenv("COMPACTNN_CENSUS", str(empty))
    fetched = []

    def fake_fetch(name, progress=True, echo=print):
        fetched.append(name)
        if name == "census":  # "downloads" it: the env var now points at the files
            full = tmp_path / "census"
            full.mkdir()
            for f in ("census_income_1994_1995_train.csv", "census_income_1994_1995_test.csv"):
                (full / f).write_text("x")
            monkeypatch.setenv("COMPACTNN_CENSUS", str(full))
            return full
        raise FetchError("could not download train-images-idx3-ubyte.gz (offline)")

    monkeypatch.setattr(fetch_mod, "fetch", fake_fetch)
    out = tmp_path / "run"
    code = main(["reproduce", "--only", "mtl_census", "mtl_multi_fashion", "--fetch",
                 "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 3 and fetched == ["census", "fashion_mnist"]
    assert calls == ["mtl_census"]
    assert "skipped mtl_multi_fashion: data set fashion_mnist could not be fetched" in text
    assert "--fetch" in (out / "report.md").read_text()


def test_reproduce_interrupted_keeps_a_report(stub_experiments, tmp_path):
    put, _ = stub_experiments
    put("digits_lowrank")

    def interrupt(out_dir):
        raise KeyboardInterrupt

    put("function_gap", interrupt)
    out = tmp_path / "run"
    assert main(["reproduce", "--only", "digits_lowrank", "function_gap",
                 "--out", str(out)]) == 130
    report = (out / "report.md").read_text()
    assert "| digits_lowrank | ok |" in report
    assert "Interrupted while running function_gap" in report


def test_reproduce_out_path_that_is_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["reproduce", "--only", "function_gap", "--out", str(blocker)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(blocker) in err
    assert blocker.read_text() == "x"


def _reproduce_in_a_fresh_process(tmp_path, *names):
    """``python -m compactnn.cli reproduce --only NAMES`` without Fashion-MNIST (an empty
    folder for it, an empty cache): the real registry, data discovery and exit code."""
    import os
    import subprocess
    import sys

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "COMPACTNN_FASHION_MNIST": str(empty),
           "COMPACTNN_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT / "src")}
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "compactnn.cli", "reproduce", "--only", *names,
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    return p, out


def test_reproduce_skips_in_a_fresh_process(tmp_path):
    # the fast half of the end-to-end test below, in the default suite: both experiments
    # need Fashion-MNIST, so nothing trains
    p, out = _reproduce_in_a_fresh_process(tmp_path, "lowrank_grid", "compress_pretrained")
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    for name in ("lowrank_grid", "compress_pretrained"):
        assert sum(ln.startswith(f"skipped {name}") for ln in p.stdout.splitlines()) == 1
        assert f"**{name}** (skipped)" in (out / "report.md").read_text()
        assert not (out / name).exists()


# Runs a real experiment (about a minute on 2 busy cores): kept out of the default suite
# and run by .ci/run after it.
@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("COMPACTNN_RUN_SLOW"),
                    reason="runs the real function_gap (about a minute); COMPACTNN_RUN_SLOW=1")
def test_reproduce_without_fashion_mnist_end_to_end(tmp_path):
    p, out = _reproduce_in_a_fresh_process(tmp_path, "lowrank_grid", "function_gap")
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert sum(ln.startswith("skipped lowrank_grid") for ln in p.stdout.splitlines()) == 1
    report = (out / "report.md").read_text()
    assert "| function_gap | ok |" in report and "**lowrank_grid** (skipped)" in report
    assert (out / "function_gap" / "function_gap.csv").exists()


@pytest.mark.parametrize("flag, want", [([], 1), (["--threads", "2"], 2)])
def test_reproduce_runs_each_experiment_with_the_chosen_threads(stub_experiments, tmp_path,
                                                               flag, want):
    """Each experiment sees ``--threads`` (default 1), even one that failed before it, and
    the caller's setting is back afterwards."""
    import torch

    put, _ = stub_experiments
    seen: list[int] = []

    def first(out_dir):
        seen.append(torch.get_num_threads())
        torch.set_num_threads(3)  # an experiment that changes it must not leak it
        raise RuntimeError("boom")

    def second(out_dir):
        from compactnn.experiments import ExperimentResult

        seen.append(torch.get_num_threads())
        return ExperimentResult("function_gap", "ok")

    put("digits_lowrank", first)
    put("function_gap", second)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        main(["reproduce", "--only", "digits_lowrank", "function_gap",
              "--out", str(tmp_path / "run"), *flag])
        assert seen == [want, want]
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)


def test_reproduce_refuses_zero_threads(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--threads", "0"])
    assert "--threads" in capsys.readouterr().err
