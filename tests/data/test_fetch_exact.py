"""Small parts of the downloader, exactly: which URLs pass and the refusal's text, a
cache folder several levels deep, the race message of an exclusive create, the
progress bar's options and the default of ``progress``."""

from __future__ import annotations

import inspect
import re

import pytest

from compactnn.data import cache_files, transfer
from compactnn.data import fetch as fetch_mod
from compactnn.data.errors import CacheError, FetchError
from compactnn.data.registry import Download


def test_http_and_https_urls_pass_and_others_are_refused_with_the_reason() -> None:
    assert fetch_mod._check_url("V", "https://example.org/data") is None
    assert fetch_mod._check_url("V", "http://127.0.0.1:8000/x") is None
    tail = ("; set it to an http(s) URL such as https://example.org/data, or unset it")
    with pytest.raises(FetchError, match="^" + re.escape(
            "V='ftp://example.org' is not a usable URL (only http(s) URLs are used)" + tail)
            + "$"):
        fetch_mod._check_url("V", "ftp://example.org")
    with pytest.raises(FetchError, match=re.escape(
            "V='http://[::1' is not a usable URL (Invalid IPv6 URL)")):
        fetch_mod._check_url("V", "http://[::1")


def test_a_cache_folder_is_created_with_its_parents(tmp_path) -> None:
    folder = tmp_path / "a" / "b" / "c"
    cache_files.prepare_folder(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_file_appearing_during_an_exclusive_create_is_named(tmp_path, monkeypatch) -> None:
    path = tmp_path / "x.part"
    path.write_bytes(b"theirs")
    monkeypatch.setattr(cache_files, "regular_size", lambda p: None)  # it appears "late"
    with pytest.raises(CacheError, match="^" + re.escape(
            f"{path} appeared while compactnn was writing it; is another program writing to "
            "the cache? Run the command again") + "$"):
        cache_files.create_exclusive(path)
    assert path.read_bytes() == b"theirs"


def test_progress_is_on_by_default_and_the_bar_does_not_stay() -> None:
    assert inspect.signature(fetch_mod.fetch).parameters["progress"].default is True
    pytest.importorskip("tqdm")
    dl = Download("f.bin", ("https://example.org/f.bin",), 2048, "0" * 64)
    assert transfer._bar(dl, 0, False) is None
    bar = transfer._bar(dl, 1024, True)
    try:
        assert (bar.total, bar.n, bar.leave, bar.desc, bar.unit_divisor) == (2048, 1024, False,
                                                                             "f.bin", 1024)
    finally:
        bar.close()


@pytest.mark.parametrize("fire_first", [False, True])
def test_the_header_deadline_shuts_the_attached_socket(fire_first: bool) -> None:
    import socket

    ours, server = socket.socketpair()
    try:
        ours.settimeout(5.0)  # a socket left open would block; shut down it reads b""
        watch = transfer._HeaderDeadline()
        if fire_first:  # the deadline passed while connecting
            watch.fire()
            watch.attach(ours)
        else:
            watch.attach(ours)
            watch.fire()
        assert watch.sock is ours and ours.recv(1) == b""
    finally:
        ours.close()
        server.close()


class _Server:
    """Serves ``body`` without a Content-Length (the end is the connection's close), in
    ``pieces`` parts ``gap`` seconds apart, and records the User-Agent of each request."""

    def __init__(self, body: bytes, pieces: int = 1, gap: float = 0.0) -> None:
        import http.server
        import threading
        import time

        self.agents: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 (the http.server hook name)
                outer.agents.append(self.headers.get("User-Agent"))
                self.send_response(200)
                self.end_headers()
                step = -(-len(body) // pieces)
                for i in range(0, len(body), step):
                    try:
                        self.wfile.write(body[i:i + step])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(gap)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/f.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_a_body_longer_than_the_pin_is_deleted_and_named(tmp_path) -> None:
    from compactnn.data.errors import DataIntegrityError

    server = _Server(b"x" * 20)
    dl = Download("f.bin", (server.url,), 10, "0" * 64)
    part = tmp_path / ".f.bin.part"
    try:
        with pytest.raises(DataIntegrityError, match="^" + re.escape(
                f"{server.url} sent more than the pinned 10 bytes of f.bin; it was deleted "
                "and nothing was installed") + "$"):
            transfer.get(server.url, part, 0, dl, False)
    finally:
        server.close()
    assert not part.exists()
    assert server.agents == ["compactnn-data-fetch"]


def test_a_download_making_progress_in_every_window_completes(tmp_path, monkeypatch) -> None:
    # each piece arrives after a whole stall window: the window must be renewed each time
    monkeypatch.setattr(transfer, "STALL_WINDOW_S", 0.05)
    monkeypatch.setattr(transfer, "STALL_BYTES", 1)
    body = bytes(range(40))
    server = _Server(body, pieces=4, gap=0.1)
    dl = Download("f.bin", (server.url,), len(body), "0" * 64)
    part = tmp_path / ".f.bin.part"
    try:
        transfer.get(server.url, part, 0, dl, False)
    finally:
        server.close()
    assert part.read_bytes() == body


def test_the_https_handler_opens_the_request_it_is_given() -> None:
    import urllib.request

    opener = transfer._opener(transfer._HeaderDeadline())
    handler = next(h for h in opener.handlers if isinstance(h, urllib.request.HTTPSHandler))
    seen = []
    handler.do_open = lambda cls, req, **kw: seen.append((cls.__name__, req, kw))
    req = urllib.request.Request("https://example.org/f.bin")
    handler.https_open(req)
    assert seen == [("HTTPS", req, {"context": handler._context})]


def test_a_mirror_with_trailing_slashes_gives_one_slash_per_level(monkeypatch) -> None:
    from compactnn.data.registry import get_dataset

    ds = get_dataset("fashion_mnist")
    dl = ds.downloads[0]
    monkeypatch.setenv(fetch_mod.MIRROR_ENV, "http://mirror.example//")
    assert fetch_mod.download_urls(ds, dl) == (
        f"http://mirror.example/fashion_mnist/{dl.filename}",)
    monkeypatch.setenv(fetch_mod.url_env_var(ds), "https://other.example/fm/")
    assert fetch_mod.download_urls(ds, dl) == (f"https://other.example/fm/{dl.filename}",)
