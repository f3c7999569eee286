"""Data tests never see the user's cache: each gets an empty one of its own."""

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in ("COMPACTNN_DATA_MIRROR", "COMPACTNN_DATA_URL_FASHION_MNIST",
                "COMPACTNN_DATA_URL_CENSUS", "COMPACTNN_DATA_URL_MOVIELENS"):
        monkeypatch.delenv(var, raising=False)


class FileServer:
    """A local HTTP server on 127.0.0.1 serving ``files`` (path -> bytes) with Range
    support. ``cut[path] = [k, ...]``: the next responses for ``path`` stop after ``k``
    body bytes and close the connection (one entry used per response).
    ``ignore_range``: answer every request with the whole file. ``requests`` logs
    ``(path, Range header or None)``."""

    def __init__(self):
        import http.server
        import threading

        self.files: dict[str, bytes] = {}
        self.cut: dict[str, list[int]] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_GET(self):  # noqa: N802 (the http.server hook name)
                path = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range",
                                     f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cuts = server.cut.get(path)
                if cuts:
                    self.wfile.write(body[:cuts.pop(0)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

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


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def module_file_server():
    """One server for a whole module (for property tests that run many examples)."""
    server = FileServer()
    yield server
    server.close()
