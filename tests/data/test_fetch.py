"""The real download code against a local HTTP server on 127.0.0.1 (no internet):
fetch and load, resume after a cut connection, checksum refusal, offline errors, the
cache folder's failure modes, archives (members only)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import socket
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.data import cache_files, registry
from compactnn.data import fetch as fetch_mod
from compactnn.data.errors import CacheError, DataIntegrityError, FetchError
from compactnn.data.fashion_mnist import load_fashion_mnist, write_idx
from compactnn.data.fetch import fetch
from compactnn.data.registry import DataFile, Download, cache_dir, locate

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def idx_files(tmp: Path, n_train: int = 40, n_test: int = 20) -> dict[str, bytes]:
    """The four Fashion-MNIST .gz files, tiny, in the real idx format."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              (np.arange(n_train) % 10).astype(np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              (np.arange(n_test) % 10).astype(np.uint8)]
    tmp.mkdir(parents=True, exist_ok=True)
    out = {}
    for stem, a in zip(STEMS, arrays, strict=True):
        write_idx(tmp / f"{stem}.gz", a)
        out[f"{stem}.gz"] = (tmp / f"{stem}.gz").read_bytes()
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tiny(tmp_path, file_server, monkeypatch):
    """Fashion-MNIST in the registry replaced by tiny files served locally; no system copy
    and no environment variable, so only the cache can hold it."""
    files = idx_files(tmp_path / "src")
    for name, data in files.items():
        file_server.files[f"fm/{name}"] = data
    ds = dataclasses.replace(
        registry.DATASETS["fashion_mnist"], system=(),
        files=tuple(DataFile(n, len(d), sha(d)) for n, d in files.items()),
        downloads=tuple(Download(n, (f"{file_server.url}/fm/{n}",), len(d), sha(d))
                        for n, d in files.items()))
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist", ds)
    monkeypatch.delenv("COMPACTNN_FASHION_MNIST", raising=False)
    return ds, files


def quiet(_line: str) -> None:
    pass


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".part", ".tmp")))


def test_fetch_places_verified_files_and_the_loader_finds_them(tiny, file_server):
    ds, files = tiny
    with pytest.raises(FileNotFoundError, match="compactnn data fetch fashion_mnist"):
        load_fashion_mnist()  # nothing is downloaded unless asked
    assert file_server.requests == []
    folder = fetch("fashion_mnist", progress=False, echo=quiet)
    assert folder == cache_dir(ds)
    for name, data in files.items():
        assert (folder / name).read_bytes() == data
    assert leftovers(folder) == []
    assert locate("fashion_mnist").origin == "cache"
    s = load_fashion_mnist(val_size=10)
    assert len(s.x_train) == 30 and len(s.x_test) == 20
    n = len(file_server.requests)
    fetch("fashion_mnist", progress=False, echo=quiet)  # all present and verified
    assert len(file_server.requests) == n


def test_a_cut_connection_is_resumed_with_a_range_request(tiny, file_server):
    ds, files = tiny
    name = "train-images-idx3-ubyte.gz"
    k = len(files[name]) // 3
    file_server.cut[f"fm/{name}"] = [k, 10]  # cut twice, then complete
    fetch("fashion_mnist", progress=False, echo=quiet)
    got = [r for p, r in file_server.requests if p == f"fm/{name}"]
    assert got == [None, f"bytes={k}-", f"bytes={k + 10}-"]
    assert (cache_dir(ds) / name).read_bytes() == files[name]


def test_a_partial_file_from_an_earlier_run_is_resumed(tiny, file_server):
    ds, files = tiny
    name = "t10k-images-idx3-ubyte.gz"
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    k = 1000
    (folder / f".{name}.part").write_bytes(files[name][:k])
    lines = []
    fetch("fashion_mnist", progress=False, echo=lines.append)
    assert (f"fm/{name}", f"bytes={k}-") in file_server.requests
    assert (folder / name).read_bytes() == files[name]
    assert any("resuming" in line for line in lines) and leftovers(folder) == []


def test_a_server_ignoring_range_restarts_the_file(tiny, file_server):
    ds, files = tiny
    name = "t10k-images-idx3-ubyte.gz"
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    (folder / f".{name}.part").write_bytes(b"\0" * 500)  # wrong bytes: must not survive
    file_server.ignore_range = True
    fetch("fashion_mnist", progress=False, echo=quiet)
    assert (folder / name).read_bytes() == files[name]


def test_a_download_cut_too_often_keeps_its_part_for_the_next_run(tiny, file_server):
    ds, files = tiny
    name = "train-images-idx3-ubyte.gz"
    file_server.cut[f"fm/{name}"] = [100] * fetch_mod.ATTEMPTS
    with pytest.raises(FetchError, match="kept and resumed") as e:
        fetch("fashion_mnist", progress=False, echo=quiet)
    assert "\n" not in str(e.value)
    part = cache_dir(ds) / f".{name}.part"
    assert part.stat().st_size == 100 * fetch_mod.ATTEMPTS
    assert not (cache_dir(ds) / name).exists()
    fetch("fashion_mnist", progress=False, echo=quiet)  # the next run finishes it
    assert (cache_dir(ds) / name).read_bytes() == files[name] and not part.exists()


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(tiny, file_server):
    ds, files = tiny
    name = "train-labels-idx1-ubyte.gz"
    bad = bytearray(files[name])
    bad[-1] ^= 0xFF  # same size, other bytes
    file_server.files[f"fm/{name}"] = bytes(bad)
    with pytest.raises(DataIntegrityError, match="does not match its pinned SHA-256"):
        fetch("fashion_mnist", progress=False, echo=quiet)
    folder = cache_dir(ds)
    assert not (folder / name).exists() and leftovers(folder) == []
    with pytest.raises(FileNotFoundError):
        locate("fashion_mnist")


def test_the_url_override_keeps_the_real_pins(tmp_path, file_server, monkeypatch):
    """COMPACTNN_DATA_URL_FASHION_MNIST points at the local server; files that are not the
    real Fashion-MNIST are refused before anything is placed."""
    files = idx_files(tmp_path / "src")
    for name, data in files.items():
        file_server.files[f"mirror/{name}"] = data
    real = registry.DATASETS["fashion_mnist"]  # the real pins; no system copy, no env var
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist", dataclasses.replace(real, system=()))
    monkeypatch.delenv("COMPACTNN_FASHION_MNIST", raising=False)
    monkeypatch.setenv("COMPACTNN_DATA_URL_FASHION_MNIST", f"{file_server.url}/mirror/")
    with pytest.raises(DataIntegrityError, match="pinned"):
        fetch("fashion_mnist", progress=False, echo=quiet)
    assert file_server.requests[0][0] == "mirror/train-images-idx3-ubyte.gz"
    folder = cache_dir(registry.DATASETS["fashion_mnist"])
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == []
    assert leftovers(folder) == []
    monkeypatch.delenv("COMPACTNN_DATA_URL_FASHION_MNIST")
    monkeypatch.setenv("COMPACTNN_DATA_MIRROR", "http://example.invalid/m")
    dl = registry.DATASETS["census"].downloads[0]
    assert fetch_mod.download_urls(registry.DATASETS["census"], dl) == (
        f"http://example.invalid/m/census/{dl.filename}",)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_is_one_clear_error(tiny, monkeypatch):
    ds, _ = tiny
    monkeypatch.setenv("COMPACTNN_DATA_URL_FASHION_MNIST", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(FetchError) as e:
        fetch("fashion_mnist", progress=False, echo=quiet)
    msg = str(e.value)
    assert "\n" not in msg and "127.0.0.1" in msg and "internet connection" in msg
    assert "COMPACTNN_DATA_URL_FASHION_MNIST" in msg
    assert [p.name for p in cache_dir(ds).iterdir() if not p.name.startswith(".")] == []


def test_a_missing_file_on_the_first_url_falls_back_to_the_next(tiny, file_server,
                                                                 monkeypatch):
    ds, files = tiny
    dl = [dataclasses.replace(d, urls=(f"{file_server.url}/nowhere/{d.filename}", *d.urls))
          for d in ds.downloads]
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist",
                        dataclasses.replace(ds, downloads=tuple(dl)))
    fetch("fashion_mnist", progress=False, echo=quiet)
    assert all((cache_dir(ds) / n).read_bytes() == d for n, d in files.items())


def test_a_corrupt_cached_file_is_caught_on_use_and_replaced_by_fetch(tiny, file_server):
    ds, files = tiny
    fetch("fashion_mnist", progress=False, echo=quiet)
    name = "t10k-labels-idx1-ubyte.gz"
    path = cache_dir(ds) / name
    data = bytearray(path.read_bytes())
    data[20] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataIntegrityError, match="compactnn data fetch fashion_mnist"):
        load_fashion_mnist()
    n = len(file_server.requests)
    lines = []
    fetch("fashion_mnist", progress=False, echo=lines.append)
    assert [p for p, _ in file_server.requests[n:]] == [f"fm/{name}"]  # only that file
    assert path.read_bytes() == files[name]
    assert any("does not match its checksum" in line for line in lines)


def test_cache_folder_that_is_a_file(tiny, tmp_path, monkeypatch):
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a folder")
    monkeypatch.setenv("COMPACTNN_CACHE", str(blocker))
    with pytest.raises(CacheError, match="is a file, not a folder"):
        fetch("fashion_mnist", progress=False, echo=quiet)
    assert blocker.read_text() == "not a folder"


def test_read_only_cache_folder(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    monkeypatch.setenv("COMPACTNN_CACHE", str(folder))

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(folder))

    # the write probe, as a non-root user would see it
    monkeypatch.setattr(cache_files.tempfile, "mkstemp", denied)
    with pytest.raises(CacheError, match="cannot write to the cache folder .*COMPACTNN_CACHE"):
        fetch("fashion_mnist", progress=False, echo=quiet)


def test_read_only_cache_folder_for_real(tiny, tmp_path, monkeypatch):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    monkeypatch.setenv("COMPACTNN_CACHE", str(folder))
    try:
        with pytest.raises(CacheError, match="cannot write"):
            fetch("fashion_mnist", progress=False, echo=quiet)
    finally:
        folder.chmod(0o700)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'mnist'; known: fashion_mnist"):
        fetch("mnist", progress=False, echo=quiet)


def archive_bytes(kind: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    if kind == "tar":
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("kind,suffix", [("tar", "tar.gz"), ("zip", "whl")])
def test_archives_yield_only_their_pinned_members(kind, suffix, file_server, monkeypatch):
    wanted = b"a,b\n1,2\n" * 50
    arc = archive_bytes(kind, {"pkg-1/data/x.csv": wanted, "pkg-1/setup.py": b"print(1)",
                               "../evil.txt": b"x"})
    file_server.files[f"a.{suffix}"] = arc
    ds = dataclasses.replace(
        registry.DATASETS["census"], system=(),
        files=(DataFile("x.csv", len(wanted), sha(wanted)),),
        downloads=(Download(f"a.{suffix}", (f"{file_server.url}/a.{suffix}",), len(arc),
                            sha(arc), (("pkg-1/data/x.csv", "x.csv"),)),))
    monkeypatch.setitem(registry.DATASETS, "census", ds)
    monkeypatch.delenv("COMPACTNN_CENSUS", raising=False)
    folder = fetch("census", progress=False, echo=quiet)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["x.csv"]
    assert (folder / "x.csv").read_bytes() == wanted and leftovers(folder) == []
    assert not (folder.parent / "evil.txt").exists()
    # a member that differs from its pin is refused, and nothing is placed
    (folder / "x.csv").unlink()
    bad = archive_bytes(kind, {"pkg-1/data/x.csv": wanted[:-1] + b"3"})
    file_server.files[f"a.{suffix}"] = bad
    dl = dataclasses.replace(ds.downloads[0], size=len(bad), sha256=sha(bad))
    monkeypatch.setitem(registry.DATASETS, "census", dataclasses.replace(ds, downloads=(dl,)))
    with pytest.raises(DataIntegrityError, match="x.csv extracted from"):
        fetch("census", progress=False, echo=quiet)
    assert not (folder / "x.csv").exists() and leftovers(folder) == []


def test_progress_bar_shows_the_file(tiny, capsys):
    fetch("fashion_mnist", progress=True, echo=quiet)
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err


def test_a_second_fetch_of_the_same_data_set_is_refused_while_one_runs(tiny):
    fcntl = pytest.importorskip("fcntl")
    ds, _ = tiny
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(FetchError, match="another `compactnn data fetch fashion_mnist`"):
            fetch("fashion_mnist", progress=False, echo=quiet)


def test_an_installed_data_set_is_left_alone(tiny, tmp_path, file_server, monkeypatch):
    ds, files = tiny
    env = tmp_path / "env"
    env.mkdir()
    for name, data in files.items():
        (env / name).write_bytes(data)
    monkeypatch.setenv("COMPACTNN_FASHION_MNIST", str(env))
    lines = []
    assert fetch("fashion_mnist", progress=False, echo=lines.append) == env
    assert file_server.requests == [] and "already installed" in lines[0]


def test_fetching_while_the_env_var_points_elsewhere_says_so(tiny, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("COMPACTNN_FASHION_MNIST", str(empty))
    lines = []
    fetch("fashion_mnist", progress=False, echo=lines.append)
    assert "COMPACTNN_FASHION_MNIST is set" in lines[-1] and "unset it" in lines[-1]


def test_a_complete_but_wrong_leftover_part_is_downloaded_again(tiny, file_server):
    ds, files = tiny
    name = "train-labels-idx1-ubyte.gz"
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    (folder / f".{name}.part").write_bytes(b"\0" * len(files[name]))
    fetch("fashion_mnist", progress=False, echo=quiet)
    assert (folder / name).read_bytes() == files[name]
    assert (f"fm/{name}", None) in file_server.requests  # from the start, not resumed


def test_not_enough_space_is_refused_before_downloading(tiny, file_server, monkeypatch):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_files.shutil, "disk_usage", lambda p: usage(10, 10, 100))
    with pytest.raises(CacheError, match="not enough space"):
        fetch("fashion_mnist", progress=False, echo=quiet)
    assert file_server.requests == []


PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(0, len(PAYLOAD)), max_size=fetch_mod.ATTEMPTS + 1))
def test_any_pattern_of_cut_connections_ends_exact_or_resumable(module_file_server, cuts):
    """Against a reference model of the retries: the file ends byte-exact when fewer than
    ATTEMPTS responses are cut short; otherwise a FetchError keeps a part that is a prefix
    of the file, and the next fetch finishes it."""
    import os
    import tempfile

    server = module_file_server
    server.files["p/x.bin"] = PAYLOAD
    server.cut["p/x.bin"] = list(cuts)
    ds = dataclasses.replace(
        registry.DATASETS["census"], system=(),
        files=(DataFile("x.bin", len(PAYLOAD), sha(PAYLOAD)),),
        downloads=(Download("x.bin", (f"{server.url}/p/x.bin",), len(PAYLOAD),
                            sha(PAYLOAD)),))
    have, finished = 0, False  # the model
    for i in range(fetch_mod.ATTEMPTS):
        have = min(have + cuts[i], len(PAYLOAD)) if i < len(cuts) else len(PAYLOAD)
        if have == len(PAYLOAD):
            finished = True
            break
    old = os.environ.get("COMPACTNN_CACHE")
    os.environ["COMPACTNN_CACHE"] = tempfile.mkdtemp()
    try:
        folder = cache_dir(ds)
        if finished:
            fetch(ds, progress=False, echo=quiet)
            assert (folder / "x.bin").read_bytes() == PAYLOAD
        else:
            with pytest.raises(FetchError):
                fetch(ds, progress=False, echo=quiet)
            part_path = folder / ".x.bin.part"
            assert part_path.exists() == (have > 0)  # an empty part is not kept
            part = part_path.read_bytes() if have else b""
            assert len(part) == have and PAYLOAD.startswith(part)
            assert not (folder / "x.bin").exists()
            server.cut["p/x.bin"] = []
            fetch(ds, progress=False, echo=quiet)
            assert (folder / "x.bin").read_bytes() == PAYLOAD
        assert leftovers(folder) == []
    finally:
        if old is None:
            os.environ.pop("COMPACTNN_CACHE", None)
        else:
            os.environ["COMPACTNN_CACHE"] = old
