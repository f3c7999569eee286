"""How the ``compactnn`` command reports user errors (one line, exit 2) and internal
errors (traceback, a request for a report, exit 1); ``--debug`` and COMPACTNN_DEBUG."""

from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
import sys

import pytest

import compactnn.cli as cli
from compactnn.cli import main
from compactnn.cli_errors import format_user_error, is_user_error, pop_debug_flag
from compactnn.data.errors import CacheError, DataIntegrityError, DataNotFoundError, FetchError
from compactnn.data.registry import DATASETS


@pytest.fixture
def cache_is_a_file(tmp_path, monkeypatch):
    """`data fetch fashion_mnist` must use the cache (no system copy, no env var), and the
    cache folder is a file: a user error."""
    blocker = tmp_path / "cache"
    blocker.write_text("x")
    monkeypatch.setenv("COMPACTNN_CACHE", str(blocker))
    monkeypatch.delenv("COMPACTNN_DEBUG", raising=False)
    monkeypatch.delenv("COMPACTNN_FASHION_MNIST", raising=False)
    monkeypatch.setitem(DATASETS, "fashion_mnist",
                        dataclasses.replace(DATASETS["fashion_mnist"], system=()))
    return blocker


def test_a_user_error_is_one_line_without_traceback(cache_is_a_file, capsys):
    assert main(["data", "fetch", "fashion_mnist", "--no-progress"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: cache folder") and len(err.splitlines()) == 1
    assert "COMPACTNN_CACHE" in err and "Traceback" not in captured.out + captured.err
    assert cache_is_a_file.read_text() == "x"


@pytest.mark.parametrize("how", ["flag-first", "flag-last", "env"])
def test_debug_shows_the_traceback_of_a_user_error(cache_is_a_file, capsys, monkeypatch, how):
    argv = ["data", "fetch", "fashion_mnist"]
    if how == "flag-first":
        argv = ["--debug", *argv]
    elif how == "flag-last":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("COMPACTNN_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "CacheError" in err
    assert err.strip().splitlines()[-1].startswith("error: cache folder")


def test_an_internal_error_shows_the_traceback_and_asks_for_a_report(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_cmd_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert "internal error" in err and "report" in err


def test_interrupt_is_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_list", interrupted)
    assert main(["list"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_pop_debug_flag(monkeypatch):
    monkeypatch.delenv("COMPACTNN_DEBUG", raising=False)
    assert pop_debug_flag(["train", "a=1"]) == (["train", "a=1"], False)
    assert pop_debug_flag(["train", "--debug", "a=1"]) == (["train", "a=1"], True)
    monkeypatch.setenv("COMPACTNN_DEBUG", "0")
    assert pop_debug_flag(["list"]) == (["list"], False)
    monkeypatch.setenv("COMPACTNN_DEBUG", "yes")
    assert pop_debug_flag(["list"]) == (["list"], True)


class ConfigError(ValueError):  # stands for the config module's error, matched by name
    pass


@pytest.mark.parametrize("exc", [
    DataNotFoundError("x"), DataIntegrityError("x"), FetchError("x"), CacheError("x"),
    FileNotFoundError(2, "No such file or directory", "/a"),
    PermissionError(13, "Permission denied", "/a"), IsADirectoryError(21, "Is a dir", "/a"),
    OSError(errno.ENOSPC, "No space left on device"), ConfigError("optim.lr: bad"),
])
def test_user_errors(exc):
    assert is_user_error(exc)


@pytest.mark.parametrize("exc", [ValueError("shape"), RuntimeError("x"), KeyError("k"),
                                 OSError(errno.EIO, "I/O error"), ZeroDivisionError()])
def test_internal_errors(exc):
    assert not is_user_error(exc)


def test_messages_say_what_to_do():
    assert format_user_error(PermissionError(13, "Permission denied", "/r/x")) == (
        "Permission denied: /r/x; check its permissions or choose another location")
    assert format_user_error(FileNotFoundError(2, "No such file or directory", "/c.toml")) == (
        "No such file or directory: /c.toml; check the path")
    assert format_user_error(OSError(errno.ENOSPC, "No space left on device")) == (
        "No space left on device; free some disk space or choose another location")
    assert format_user_error(ConfigError("optim.lr: must be > 0\ndetails")) == (
        "optim.lr: must be > 0")


@pytest.mark.parametrize("argv", [["mtl", "--print-config"], ["data", "list"]])
def test_a_closed_pipe_is_not_an_error(argv):
    # `compactnn mtl --print-config | head`: the reader is gone before the output is
    # written; like other Unix tools, exit 0 and say nothing
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "compactnn.cli", *argv], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")
