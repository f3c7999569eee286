"""One resumable HTTP(S) transfer into a cache part file: a ``Range`` request from the
bytes already there, a deadline on the response headers and a progress floor on the
body (a server that stalls counts as a cut connection, :class:`Cut`, which the caller
resumes), and the announced size checked against the pin before a byte is written."""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from compactnn.data.cache_files import create_exclusive, open_part
from compactnn.data.errors import DataIntegrityError, FetchError
from compactnn.data.registry import Download

TIMEOUT_S = 30.0
STALL_WINDOW_S = 60.0  # a download must make ...
STALL_BYTES = 16 * 1024  # ... this much progress in each such window, or it is cut
CHUNK = 1 << 16


class Cut(Exception):
    """The connection ended before the whole file arrived (resumable)."""


def get(url: str, part: Path, have: int, dl: Download, progress: bool) -> None:
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"refusing to download from {url!r}: only http(s) URLs are used")
    headers = {"User-Agent": "compactnn-data-fetch"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    # the per-read timeout never fires on a server that drips its headers: close the
    # connection when they are not complete within one stall window
    watch = _HeaderDeadline()
    timer = threading.Timer(STALL_WINDOW_S, watch.fire)
    timer.daemon = True
    timer.start()
    try:
        resp = _opener(watch).open(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part does not fit the file: start over
            part.unlink()
            raise Cut("range not satisfiable; restarting") from None
        raise
    except (OSError, http.client.HTTPException):
        if watch.fired:
            raise Cut(f"stalled: no complete response headers within "
                       f"{STALL_WINDOW_S:g} s") from None
        raise
    finally:
        timer.cancel()
    if watch.fired:  # headers cut short by the deadline may still parse: never trust them
        resp.close()
        raise Cut(f"stalled: no complete response headers within {STALL_WINDOW_S:g} s")
    with resp:
        start = _resume_offset(resp, have)
        total = _announced_size(resp, start)
        if total is not None and total != dl.size:
            part.unlink(missing_ok=True)
            raise DataIntegrityError(
                f"{url} serves {total} bytes but the pinned {dl.filename} has {dl.size} (a "
                "different file); nothing was installed")
        fd = open_part(part) if start else create_exclusive(part)
        bar = _bar(dl, start, progress)
        try:
            with open(fd, "r+b") as f:
                f.seek(start)
                f.truncate()
                got = start
                window_t, window_got = time.monotonic(), got
                while True:
                    try:  # read1: what has arrived, so a slow drip is seen as it drips
                        chunk = resp.read1(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise Cut(f"connection lost after {got} bytes ({e})") from None
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > dl.size:
                        f.close()
                        part.unlink()
                        raise DataIntegrityError(
                            f"{url} sent more than the pinned {dl.size} bytes of "
                            f"{dl.filename}; it was deleted and nothing was installed")
                    f.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                    now = time.monotonic()
                    if now - window_t >= STALL_WINDOW_S and got < dl.size:
                        if got - window_got < STALL_BYTES:  # kept: resumed like a cut
                            raise Cut(f"stalled: {got - window_got} bytes in "
                                       f"{now - window_t:.0f} s, after {got} bytes")
                        window_t, window_got = now, got
        finally:
            if bar is not None:
                bar.close()
    if got < dl.size:
        raise Cut(f"connection closed after {got} of {dl.size} bytes")


class _HeaderDeadline:
    """The socket of one request, shut down by :meth:`fire` (from a timer thread)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.fired = False

    def attach(self, sock: socket.socket) -> None:
        self.sock = sock
        if self.fired:  # the deadline passed while connecting
            self._shut()

    def fire(self) -> None:
        self.fired = True
        self._shut()

    def _shut(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once
            except OSError:
                pass


def _opener(watch: _HeaderDeadline) -> urllib.request.OpenerDirector:
    """urllib's opener (proxies from the environment included) whose connections hand
    their socket to ``watch``."""

    class HTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watch.attach(self.sock)

    class HTTPS(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watch.attach(self.sock)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(HTTP, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(HTTPS, req, context=self._context)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _resume_offset(resp, have: int) -> int:
    """Where the body of ``resp`` starts in the file: ``have`` for a matching partial
    answer, 0 when the server sent the whole file."""
    if have and resp.status == 206:
        rng = resp.headers.get("Content-Range", "")
        if rng.startswith(f"bytes {have}-"):
            return have
        raise Cut(f"server answered an unexpected range {rng!r}")
    if resp.status != 200:
        raise Cut(f"unexpected HTTP status {resp.status}")
    return 0


def _announced_size(resp, start: int) -> int | None:
    """The whole file's size as the server states it, if it does."""
    rng = resp.headers.get("Content-Range", "")
    if rng and "/" in rng and not rng.endswith("/*"):
        try:
            return int(rng.rsplit("/", 1)[1])
        except ValueError:
            return None
    length = resp.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _bar(dl: Download, start: int, progress: bool):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra: no bar, same download
        return None
    return tqdm(total=dl.size, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dl.filename, leave=False)
