"""Downloading a registered data set into the per-user cache, only when asked
(``compactnn data fetch NAME`` or ``compactnn reproduce --fetch``).

Guarantees:

- every downloaded byte is checked against the pinned SHA-256 before anything uses it;
  a mismatch deletes the download and raises :class:`DataIntegrityError`;
- files appear in the cache folder only complete and verified (written under a
  temporary name in the same folder, then renamed), so a crash never leaves a file
  that a loader would read;
- a cut download keeps its partial file (``.NAME.part``) and is resumed with an HTTP
  ``Range`` request, within the same call (a bounded number of attempts) or by running
  the command again; a server that ignores ``Range`` restarts it from the start;
- no network: one :class:`FetchError` line naming the URL, the reason and what to do;
- a server that stalls (sends fewer than ``STALL_BYTES`` of the file in
  ``STALL_WINDOW_S`` seconds, e.g. one byte every few seconds, or has not finished its
  response headers after ``STALL_WINDOW_S``) counts as a cut connection, as silence
  for ``TIMEOUT_S`` does;
- nothing is written through a symbolic link: the cache's own files (the downloads, the
  ``.part``, extraction and lock files) must be regular files or absent, and temporary
  files are created exclusively, so a planted link can never redirect a write elsewhere.

URLs: each download has its canonical public URLs (tried in order). The environment
variable ``COMPACTNN_DATA_URL_<NAME>`` (e.g. ``COMPACTNN_DATA_URL_FASHION_MNIST``) or
``COMPACTNN_DATA_MIRROR`` (files at ``<mirror>/<name>/<file>``) replaces them with a
mirror holding the same files; the pinned checksums still apply.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import stat
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from compactnn.data.errors import CacheError, DataIntegrityError, DataNotFoundError, FetchError
from compactnn.data.registry import (
    DataSet,
    Download,
    cache_dir,
    find_files,
    get_dataset,
    locate,
    sha256_of,
    verify_file,
)

__all__ = ["MIRROR_ENV", "download_urls", "fetch", "url_env_var"]

MIRROR_ENV = "COMPACTNN_DATA_MIRROR"
TIMEOUT_S = 30.0
ATTEMPTS = 4  # per URL: the first try and up to three resumes after a cut connection
STALL_WINDOW_S = 60.0  # a download must make ...
STALL_BYTES = 16 * 1024  # ... this much progress in each such window, or it is cut
_CHUNK = 1 << 16
# never follow a link when opening the cache's files (O_NOFOLLOW is POSIX; Windows has
# no symlinks a normal user can plant)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def url_env_var(ds: DataSet) -> str:
    return f"COMPACTNN_DATA_URL_{ds.name.upper()}"


def download_urls(ds: DataSet, dl: Download) -> tuple[str, ...]:
    """The URLs tried for ``dl``: the override's, else the canonical ones."""
    var = url_env_var(ds)
    base = os.environ.get(var)
    if not base and os.environ.get(MIRROR_ENV):
        var = MIRROR_ENV
        _check_url(var, os.environ[MIRROR_ENV])
        base = os.environ[MIRROR_ENV].rstrip("/") + "/" + ds.name
    if base:
        _check_url(var, base)
        return (base.rstrip("/") + "/" + dl.filename,)
    return dl.urls


def _check_url(var: str, value: str) -> None:
    """A URL from the environment, refused in one line naming the variable when it is not
    a well-formed http(s) URL with a host."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 (parsing the port raises on a bad one)
    except ValueError as e:
        reason = str(e)
    else:
        if parts.scheme not in ("http", "https"):
            reason = "only http(s) URLs are used"
        elif not parts.hostname:
            reason = "it names no host"
        else:
            return
    raise FetchError(f"{var}={value!r} is not a usable URL ({reason}); set it to an "
                     "http(s) URL such as https://example.org/data, or unset it")


def fetch(name: str | DataSet, progress: bool = True, echo: Callable[[str], None] = print
          ) -> Path:
    """Make data set ``name`` present and verified in its cache folder; return the folder
    the loaders will read it from.

    A data set installed elsewhere (its environment variable, the system copy) is left
    alone. In the cache, files matching their pins are kept; missing or corrupt ones are
    downloaded (and extracted from their archive). ``echo`` receives one line per action.

    Raises:
        ValueError: unknown name. CacheError: the cache folder is unusable.
        FetchError: the download failed. DataIntegrityError: it does not match the pin.
    """
    ds = name if isinstance(name, DataSet) else get_dataset(name)
    try:
        loc = locate(ds, verify=False)
    except (DataNotFoundError, DataIntegrityError):
        loc = None
    if loc is not None and loc.origin != "cache":
        echo(f"{ds.name}: already installed in {loc.folder} ({loc.origin}); nothing to fetch")
        return loc.folder
    for dl in ds.downloads:  # a malformed URL override fails before anything is written
        download_urls(ds, dl)
    folder = cache_dir(ds)
    _prepare(folder)
    with _lock(folder, ds):
        _refuse_links(folder, ds)
        found, _ = find_files(folder, ds)
        for dl in ds.downloads:
            wanted = [f for f in dl.provides()
                      if f not in found or not verify_file(found[f], ds.file(f))]
            if not wanted:
                continue
            for f in wanted:  # corrupt copies go before anything new is written
                if f in found:
                    echo(f"{ds.name}: {found[f].name} does not match its checksum; "
                         "downloading it again")
                    found[f].unlink()
            part = folder / f".{dl.filename}.part"
            _check_space(folder, dl, part, [ds.file(f).size for f in wanted])
            _download(ds, dl, part, progress, echo)
            _place(ds, dl, part, folder, wanted)
    echo(f"{ds.name}: ready in {folder}")
    if os.environ.get(ds.env_var):
        echo(f"note: {ds.env_var} is set, so the loaders read {os.environ[ds.env_var]} and not "
             f"the cache; unset it to use the fetched copy")
    return folder


# -- the cache folder ---------------------------------------------------------------------
def _prepare(folder: Path) -> None:
    hint = "or set COMPACTNN_CACHE to another folder"
    if folder.is_symlink():
        raise CacheError(f"cache folder {folder} is a symbolic link (to "
                         f"{os.readlink(folder)}); the cache never writes through links: "
                         f"remove it {hint}")
    for p in (folder.parent, folder):
        if p.exists() and not p.is_dir():
            raise CacheError(f"cache folder {p} is a file, not a folder: move it away {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)  # exclusive
        os.close(fd)
        os.unlink(probe)
    except PermissionError as e:
        raise CacheError(f"cannot write to the cache folder {folder} ({e.strerror}): fix "
                         f"its permissions {hint}") from e
    except OSError as e:
        raise CacheError(f"cannot use the cache folder {folder} ({e.strerror or e}): "
                         f"free it {hint}") from e


def _check_space(folder: Path, dl: Download, part: Path, sizes: list[int]) -> None:
    have = _regular_size(part) or 0
    # an archive and its extracted members coexist until the archive is removed
    need = max(dl.size - have, 0) + (sum(sizes) if dl.members else 0)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CacheError(f"not enough space in {folder} for {dl.filename}: need about "
                         f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB free; free some space "
                         "or set COMPACTNN_CACHE to another disk")


def _regular_size(path: Path) -> int | None:
    """The size of ``path`` when it is a regular file, None when it is absent; anything
    else (a symbolic link, even a dangling one, a folder, ...) is refused naming it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISLNK(st.st_mode):
        what = f"a symbolic link (to {os.readlink(path)})"
    elif stat.S_ISDIR(st.st_mode):
        what = "a folder"
    else:
        what = "not a regular file"
    raise CacheError(f"{path} is {what}; the cache holds only regular files and never "
                     "writes through links: remove it and run the command again")


def _refuse_links(folder: Path, ds: DataSet) -> None:
    """Check every name the fetch may read or write in ``folder`` (see _regular_size)."""
    for f in ds.files:
        for c in f.candidates():
            _regular_size(folder / c)
            _regular_size(folder / f".{c}.tmp")
    for dl in ds.downloads:
        _regular_size(folder / f".{dl.filename}.part")


def _create(path: Path) -> int:
    """A new empty file at ``path`` for writing, created exclusively (a leftover regular
    file is removed first; a link or anything else is refused)."""
    if _regular_size(path) is not None:
        path.unlink()
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o644)
    except FileExistsError:  # something appeared in between: name it, never follow it
        _regular_size(path)
        raise CacheError(f"{path} appeared while compactnn was writing it; is another "
                         "program writing to the cache? Run the command again") from None


@contextmanager
def _lock(folder: Path, ds: DataSet):
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): one fetch at a time is on the user
        yield
        return
    path = folder / ".lock"
    _regular_size(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o644)
    except OSError as e:
        _regular_size(path)
        raise CacheError(f"cannot open the lock file {path} ({e.strerror or e})") from e
    with open(fd, "r+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FetchError(f"another `{ds.command}` is running on {folder}; wait for it "
                             "to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- downloading --------------------------------------------------------------------------
class _Cut(Exception):
    """The connection ended before the whole file arrived (resumable)."""


def _download(ds: DataSet, dl: Download, part: Path, progress: bool,
              echo: Callable[[str], None]) -> None:
    """Complete ``part`` to the pinned bytes of ``dl`` or raise; never leaves a part file
    that is longer than ``dl.size`` or that fails the checksum."""
    errors: list[str] = []
    if _regular_size(part) == dl.size and sha256_of(part) != dl.sha256:
        part.unlink()  # a complete but wrong leftover: download it again, not resume it
    for url in download_urls(ds, dl):
        for _ in range(ATTEMPTS):
            have = _regular_size(part) or 0
            if have > dl.size:
                part.unlink()
                have = 0
            if have == dl.size:
                break
            if have:
                echo(f"{ds.name}: resuming {dl.filename} at {have / 1e6:.1f} MB")
            try:
                _get(url, part, have, dl, progress)
                break
            except (FetchError, CacheError):
                raise
            except _Cut as e:
                errors.append(f"{url}: {e}")
            except urllib.error.HTTPError as e:
                errors.append(f"{url}: HTTP {e.code} {e.reason}")
                break  # try the next URL
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                errors.append(f"{url}: {reason}")
                break
        if _regular_size(part) == dl.size:
            if sha256_of(part) != dl.sha256:
                part.unlink()
                raise DataIntegrityError(
                    f"{dl.filename} from {url} does not match its pinned SHA-256 (a changed "
                    "or tampered file); it was deleted and nothing was installed")
            return
    if _regular_size(part) == 0:
        part.unlink()
    left = _regular_size(part)
    kept = (f"; the partial download {part} ({left / 1e6:.1f} MB) is kept and resumed "
            "when you run the command again" if left is not None else "")
    raise FetchError(f"could not download {dl.filename} ({errors[-1] if errors else 'no URL'})"
                     f"; check the internet connection (and HTTPS_PROXY), or set "
                     f"{url_env_var(ds)} to a mirror{kept}")


def _get(url: str, part: Path, have: int, dl: Download, progress: bool) -> None:
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
            raise _Cut("range not satisfiable; restarting") from None
        raise
    except (OSError, http.client.HTTPException):
        if watch.fired:
            raise _Cut(f"stalled: no complete response headers within "
                       f"{STALL_WINDOW_S:g} s") from None
        raise
    finally:
        timer.cancel()
    if watch.fired:  # headers cut short by the deadline may still parse: never trust them
        resp.close()
        raise _Cut(f"stalled: no complete response headers within {STALL_WINDOW_S:g} s")
    with resp:
        start = _resume_offset(resp, have)
        total = _announced_size(resp, start)
        if total is not None and total != dl.size:
            part.unlink(missing_ok=True)
            raise DataIntegrityError(
                f"{url} serves {total} bytes but the pinned {dl.filename} has {dl.size} (a "
                "different file); nothing was installed")
        fd = _open_part(part) if start else _create(part)
        bar = _bar(dl, start, progress)
        try:
            with open(fd, "r+b") as f:
                f.seek(start)
                f.truncate()
                got = start
                window_t, window_got = time.monotonic(), got
                while True:
                    try:  # read1: what has arrived, so a slow drip is seen as it drips
                        chunk = resp.read1(_CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Cut(f"connection lost after {got} bytes ({e})") from None
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
                            raise _Cut(f"stalled: {got - window_got} bytes in "
                                       f"{now - window_t:.0f} s, after {got} bytes")
                        window_t, window_got = now, got
        finally:
            if bar is not None:
                bar.close()
    if got < dl.size:
        raise _Cut(f"connection closed after {got} of {dl.size} bytes")


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


def _open_part(part: Path) -> int:
    """The existing partial download, opened for writing without following a link."""
    _regular_size(part)
    try:
        fd = os.open(part, os.O_RDWR | _NOFOLLOW)
    except OSError as e:  # replaced by a link or removed since it was measured
        _regular_size(part)
        raise CacheError(f"cannot open the partial download {part} ({e.strerror or e}); "
                         "remove it and run the command again") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CacheError(f"{part} is not a regular file; the cache holds only regular "
                         "files: remove it and run the command again")
    return fd


def _resume_offset(resp, have: int) -> int:
    """Where the body of ``resp`` starts in the file: ``have`` for a matching partial
    answer, 0 when the server sent the whole file."""
    if have and resp.status == 206:
        rng = resp.headers.get("Content-Range", "")
        if rng.startswith(f"bytes {have}-"):
            return have
        raise _Cut(f"server answered an unexpected range {rng!r}")
    if resp.status != 200:
        raise _Cut(f"unexpected HTTP status {resp.status}")
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


# -- placing verified files ---------------------------------------------------------------
def _place(ds: DataSet, dl: Download, part: Path, folder: Path, wanted: list[str]) -> None:
    """Move the verified download (or its wanted members) into place, atomically each."""
    if not dl.members:
        os.replace(part, folder / dl.filename)
        return
    try:
        for member, fname in dl.members:
            if fname in wanted:
                _extract(ds, part, member, folder, fname)
    finally:
        part.unlink(missing_ok=True)  # a verified archive is cheap to fetch again


def _extract(ds: DataSet, archive: Path, member: str, folder: Path, fname: str) -> None:
    tmp = folder / f".{fname}.tmp"
    fd = _create(tmp)
    try:
        with _open_member(archive, member) as src, open(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
        if not verify_file(tmp, ds.file(fname)):
            raise DataIntegrityError(f"{fname} extracted from {archive.name} does not match "
                                     "its pinned SHA-256; nothing was installed")
        os.replace(tmp, folder / fname)
    finally:
        tmp.unlink(missing_ok=True)


def _open_member(archive: Path, member: str):
    # one named member, streamed: nothing else in the archive is ever written out
    tar = archive.name.endswith((".tar.gz.part", ".tgz.part"))
    container = tarfile.open(archive, "r:gz") if tar else zipfile.ZipFile(archive)
    try:
        f = container.extractfile(member) if tar else container.open(member)
    except KeyError:
        f = None
    if f is None:
        container.close()
        raise DataIntegrityError(f"{archive.name} has no file {member}; nothing was installed")
    return _closing_both(f, container)


@contextmanager
def _closing_both(f, container):
    try:
        yield f
    finally:
        f.close()
        container.close()
