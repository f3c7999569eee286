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
- no network: one :class:`FetchError` line naming the URL, the reason and what to do.

URLs: each download has its canonical public URLs (tried in order). The environment
variable ``COMPACTNN_DATA_URL_<NAME>`` (e.g. ``COMPACTNN_DATA_URL_FASHION_MNIST``) or
``COMPACTNN_DATA_MIRROR`` (files at ``<mirror>/<name>/<file>``) replaces them with a
mirror holding the same files; the pinned checksums still apply.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tarfile
import urllib.error
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
_CHUNK = 1 << 16


def url_env_var(ds: DataSet) -> str:
    return f"COMPACTNN_DATA_URL_{ds.name.upper()}"


def download_urls(ds: DataSet, dl: Download) -> tuple[str, ...]:
    """The URLs tried for ``dl``: the override's, else the canonical ones."""
    base = os.environ.get(url_env_var(ds))
    if not base and os.environ.get(MIRROR_ENV):
        base = os.environ[MIRROR_ENV].rstrip("/") + "/" + ds.name
    if base:
        return (base.rstrip("/") + "/" + dl.filename,)
    return dl.urls


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
    folder = cache_dir(ds)
    _prepare(folder)
    with _lock(folder, ds):
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
    for p in (folder.parent, folder):
        if p.exists() and not p.is_dir():
            raise CacheError(f"cache folder {p} is a file, not a folder: move it away {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError as e:
        raise CacheError(f"cannot write to the cache folder {folder} ({e.strerror}): fix "
                         f"its permissions {hint}") from e
    except OSError as e:
        raise CacheError(f"cannot use the cache folder {folder} ({e.strerror or e}): "
                         f"free it {hint}") from e


def _check_space(folder: Path, dl: Download, part: Path, sizes: list[int]) -> None:
    have = part.stat().st_size if part.exists() else 0
    # an archive and its extracted members coexist until the archive is removed
    need = max(dl.size - have, 0) + (sum(sizes) if dl.members else 0)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CacheError(f"not enough space in {folder} for {dl.filename}: need about "
                         f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB free; free some space "
                         "or set COMPACTNN_CACHE to another disk")


@contextmanager
def _lock(folder: Path, ds: DataSet):
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): one fetch at a time is on the user
        yield
        return
    with open(folder / ".lock", "a") as fh:
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
    if part.exists() and part.stat().st_size == dl.size and sha256_of(part) != dl.sha256:
        part.unlink()  # a complete but wrong leftover: download it again, not resume it
    for url in download_urls(ds, dl):
        for _ in range(ATTEMPTS):
            have = part.stat().st_size if part.exists() else 0
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
            except FetchError:
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
        if part.exists() and part.stat().st_size == dl.size:
            if sha256_of(part) != dl.sha256:
                part.unlink()
                raise DataIntegrityError(
                    f"{dl.filename} from {url} does not match its pinned SHA-256 (a changed "
                    "or tampered file); it was deleted and nothing was installed")
            return
    if part.exists() and part.stat().st_size == 0:
        part.unlink()
    kept = (f"; the partial download ({part.stat().st_size / 1e6:.1f} MB) is kept and "
            "resumed when you run the command again" if part.exists() else "")
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
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the part does not fit the file: start over
            part.unlink()
            raise _Cut("range not satisfiable; restarting") from None
        raise
    with resp:
        start = _resume_offset(resp, have)
        total = _announced_size(resp, start)
        if total is not None and total != dl.size:
            part.unlink(missing_ok=True)
            raise DataIntegrityError(
                f"{url} serves {total} bytes but the pinned {dl.filename} has {dl.size} (a "
                "different file); nothing was installed")
        mode = "r+b" if start else "wb"
        bar = _bar(dl, start, progress)
        try:
            with open(part, mode) as f:
                f.seek(start)
                f.truncate()
                got = start
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
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
        finally:
            if bar is not None:
                bar.close()
    if got < dl.size:
        raise _Cut(f"connection closed after {got} of {dl.size} bytes")


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
    try:
        with _open_member(archive, member) as src, open(tmp, "wb") as dst:
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
