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


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
