"""`data fetch` against a hostile cache and hostile servers: planted symbolic links (to a
file that must survive, or dangling), folders where files belong, malformed mirror URLs,
and a server that drips its bytes too slowly to ever hit the per-read timeout."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fetch import archive_bytes, idx_files, leftovers, quiet, sha

from compactnn.data import fetch as fetch_mod
from compactnn.data import registry, transfer
from compactnn.data.errors import CacheError, FetchError
from compactnn.data.fetch import fetch
from compactnn.data.registry import DataFile, Download, cache_dir

pytestmark = pytest.mark.skipif(not hasattr(fetch_mod.os, "symlink"), reason="no symlinks")

PRECIOUS = b"a file outside the cache that no fetch may touch\n"


def use_fashion_mnist(files: dict[str, bytes], base_url: str, monkeypatch) -> registry.DataSet:
    ds = dataclasses.replace(
        registry.DATASETS["fashion_mnist"], system=(),
        files=tuple(DataFile(n, len(d), sha(d)) for n, d in files.items()),
        downloads=tuple(Download(n, (f"{base_url}/fm/{n}",), len(d), sha(d))
                        for n, d in files.items()))
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist", ds)
    monkeypatch.delenv("COMPACTNN_FASHION_MNIST", raising=False)
    return ds


@pytest.fixture
def tiny(tmp_path, file_server, monkeypatch):
    files = idx_files(tmp_path / "src")
    for name, data in files.items():
        file_server.files[f"fm/{name}"] = data
    return use_fashion_mnist(files, file_server.url, monkeypatch), files


@pytest.fixture
def victim(tmp_path) -> Path:
    v = tmp_path / "outside" / "precious.txt"
    v.parent.mkdir()
    v.write_bytes(PRECIOUS)
    return v


FIRST = "train-images-idx3-ubyte.gz"


@pytest.mark.parametrize("entry", [f".{FIRST}.part", FIRST, ".lock"])
@pytest.mark.parametrize("dangling", [False, True])
def test_a_link_in_the_cache_is_refused_and_its_target_untouched(tiny, victim, entry,
                                                                   dangling, file_server):
    ds, _ = tiny
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    if dangling:
        victim.unlink()
    (folder / entry).symlink_to(victim)
    with pytest.raises(CacheError) as e:
        fetch("fashion_mnist", progress=False, echo=quiet)
    msg = str(e.value)
    assert str(folder / entry) in msg and "symbolic link" in msg and "\n" not in msg
    if dangling:  # nothing was created at the link's target
        assert not victim.exists()
    else:
        assert victim.read_bytes() == PRECIOUS
    assert (folder / entry).is_symlink()  # the user's link is left for the user
    assert [r for r in file_server.requests] == []  # refused before any download


def test_a_part_link_planted_for_the_resume_is_never_appended_to(tiny, victim):
    # a resume opens the part for writing at its end: through a link this appended the
    # download to the linked file
    ds, _ = tiny
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    (folder / f".{FIRST}.part").symlink_to(victim)
    with pytest.raises(CacheError, match="symbolic link"):
        fetch_mod._download(ds, ds.downloads[0], folder / f".{FIRST}.part", False, quiet)
    assert victim.read_bytes() == PRECIOUS


def test_a_folder_where_the_part_file_belongs_is_named(tiny):
    ds, _ = tiny
    part = cache_dir(ds) / f".{FIRST}.part"
    part.mkdir(parents=True)
    with pytest.raises(CacheError) as e:  # not "check the internet connection"
        fetch("fashion_mnist", progress=False, echo=quiet)
    assert f"{part} is a folder" in str(e.value) and "internet" not in str(e.value)


def test_a_cache_folder_that_is_a_link_is_refused(tiny, tmp_path):
    ds, _ = tiny
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = cache_dir(ds)
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(elsewhere)
    with pytest.raises(CacheError, match="symbolic link"):
        fetch("fashion_mnist", progress=False, echo=quiet)
    assert list(elsewhere.iterdir()) == []


def test_an_extraction_temp_link_is_refused(file_server, monkeypatch, victim):
    wanted = b"a,b\n1,2\n" * 50
    arc = archive_bytes("tar", {"pkg-1/data/x.csv": wanted})
    file_server.files["a.tar.gz"] = arc
    ds = dataclasses.replace(
        registry.DATASETS["census"], system=(),
        files=(DataFile("x.csv", len(wanted), sha(wanted)),),
        downloads=(Download("a.tar.gz", (f"{file_server.url}/a.tar.gz",), len(arc), sha(arc),
                            (("pkg-1/data/x.csv", "x.csv"),)),))
    monkeypatch.setitem(registry.DATASETS, "census", ds)
    monkeypatch.delenv("COMPACTNN_CENSUS", raising=False)
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    (folder / ".x.csv.tmp").symlink_to(victim)
    with pytest.raises(CacheError, match=r"\.x\.csv\.tmp is a symbolic link"):
        fetch("census", progress=False, echo=quiet)
    assert victim.read_bytes() == PRECIOUS
    # the same link planted after the check (between download and extraction) is not
    # followed either: the temp file is created exclusively
    (folder / ".x.csv.tmp").unlink()
    real_download = fetch_mod._download

    def plant_then_download(*args, **kwargs):
        real_download(*args, **kwargs)
        (folder / ".x.csv.tmp").symlink_to(victim)

    monkeypatch.setattr(fetch_mod, "_download", plant_then_download)
    with pytest.raises(CacheError, match=r"\.x\.csv\.tmp"):
        fetch("census", progress=False, echo=quiet)
    assert victim.read_bytes() == PRECIOUS
    assert not (folder / "x.csv").exists()


def test_leftover_regular_temp_files_are_replaced_not_refused(tiny, file_server):
    ds, files = tiny
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    (folder / f".{FIRST}.part").write_bytes(files[FIRST][:100])
    folder.joinpath(f".{FIRST}.tmp").write_bytes(b"junk")
    fetch("fashion_mnist", progress=False, echo=quiet)
    assert (folder / FIRST).read_bytes() == files[FIRST]
    assert ("fm/" + FIRST, "bytes=100-") in file_server.requests


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(links=st.sets(st.sampled_from(
    [f".{FIRST}.part", FIRST, ".lock", f".{FIRST}.tmp", "t10k-images-idx3-ubyte.gz",
     ".t10k-labels-idx1-ubyte.gz.part"]), min_size=1),
    dangling=st.booleans())
def test_any_planted_links_are_refused_and_never_written_through(tmp_path_factory,
                                                                 module_file_server,
                                                                 monkeypatch, links, dangling):
    tmp = tmp_path_factory.mktemp("h")
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp / "cache"))
    files = idx_files(tmp / "src", n_train=4, n_test=2)
    for name, data in files.items():
        module_file_server.files[f"fm/{name}"] = data
    ds = use_fashion_mnist(files, module_file_server.url, monkeypatch)
    folder = cache_dir(ds)
    folder.mkdir(parents=True)
    victim = tmp / "precious"
    if not dangling:
        victim.write_bytes(PRECIOUS)
    for name in links:
        (folder / name).symlink_to(victim)
    with pytest.raises(CacheError) as e:
        fetch("fashion_mnist", progress=False, echo=quiet)
    assert any(str(folder / name) in str(e.value) for name in links)
    assert (victim.read_bytes() == PRECIOUS) if not dangling else not victim.exists()
    assert all((folder / name).is_symlink() for name in links)


@pytest.mark.parametrize("value", ["http://[::1", "ftp://example.org/data", "http://",
                                   "http://example.org:notaport/x", "example.org/data"])
@pytest.mark.parametrize("var", ["COMPACTNN_DATA_MIRROR", "COMPACTNN_DATA_URL_FASHION_MNIST"])
def test_a_malformed_mirror_url_is_one_line_naming_the_variable(tiny, monkeypatch, var, value):
    ds, _ = tiny
    monkeypatch.setenv(var, value)
    with pytest.raises(FetchError) as e:
        fetch("fashion_mnist", progress=False, echo=quiet)
    msg = str(e.value)
    assert msg.startswith(f"{var}={value!r} is not a usable URL") and "\n" not in msg
    assert not cache_dir(ds).exists()  # refused before the cache is touched


def test_a_malformed_mirror_is_one_error_line_from_the_command(tiny, monkeypatch, capsys):
    from compactnn.cli import main

    monkeypatch.setenv("COMPACTNN_DATA_MIRROR", "http://[::1")
    assert main(["data", "fetch", "fashion_mnist", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: COMPACTNN_DATA_MIRROR='http://[::1' is not a usable URL")
    assert "Traceback" not in err


class DripServer:
    """Announces ``data`` in full, then sends one byte every ``gap`` seconds, at most
    ``limit`` bytes, and closes: a server that never goes silent long enough for a
    per-read timeout, and that stops by itself. With ``headers_too`` it drips its
    status line and headers already (and never finishes them)."""

    def __init__(self, data: bytes, gap: float, limit: int, headers_too: bool = False):
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 (the http.server hook name)
                if headers_too:
                    drip = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * limit
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    drip = data
                for b in drip[:limit]:
                    try:
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        return
                    time.sleep(gap)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_a_slow_drip_server_is_cut_as_stalled_and_the_part_kept(tmp_path, monkeypatch):
    files = idx_files(tmp_path / "src")
    data = files[FIRST]
    server = DripServer(data, gap=0.02, limit=400)
    try:
        ds = use_fashion_mnist(files, server.url, monkeypatch)
        # a window in which the drip sends at most window / gap = 15 bytes (fewer when
        # the machine is slow), far below the progress asked for
        monkeypatch.setattr(transfer, "STALL_WINDOW_S", 0.3)
        monkeypatch.setattr(transfer, "STALL_BYTES", 200)
        monkeypatch.setattr(fetch_mod, "ATTEMPTS", 1)
        folder = cache_dir(ds)
        folder.mkdir(parents=True)
        part = folder / f".{FIRST}.part"
        with pytest.raises(FetchError) as e:
            fetch_mod._download(ds, ds.downloads[0], part, False, quiet)
    finally:
        server.close()
    assert "stalled" in str(e.value) and str(part) in str(e.value)
    kept = part.read_bytes()
    assert 0 < len(kept) < 200 and kept == data[:len(kept)]  # resumable as it stands
    assert leftovers(folder) == [part.name]


def test_a_server_dripping_its_headers_is_cut_as_stalled(tmp_path, monkeypatch):
    files = idx_files(tmp_path / "src")
    server = DripServer(b"", gap=0.02, limit=400, headers_too=True)
    try:
        ds = use_fashion_mnist(files, server.url, monkeypatch)
        monkeypatch.setattr(transfer, "STALL_WINDOW_S", 0.3)
        monkeypatch.setattr(fetch_mod, "ATTEMPTS", 1)
        folder = cache_dir(ds)
        folder.mkdir(parents=True)
        part = folder / f".{FIRST}.part"
        with pytest.raises(FetchError, match="stalled: no complete response headers"):
            fetch_mod._download(ds, ds.downloads[0], part, False, quiet)
    finally:
        server.close()
    assert not part.exists()
