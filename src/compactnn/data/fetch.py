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
  for ``TIMEOUT_S`` does (the three are in :mod:`compactnn.data.transfer`);
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
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from compactnn.data.cache_files import (
    check_space,
    create_exclusive,
    fetch_lock,
    prepare_folder,
    refuse_links,
    regular_size,
)
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
from compactnn.data.transfer import CHUNK, Cut, get

__all__ = ["MIRROR_ENV", "download_urls", "fetch", "url_env_var"]

MIRROR_ENV = "COMPACTNN_DATA_MIRROR"
ATTEMPTS = 4  # per URL: the first try and up to three resumes after a cut connection


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
    prepare_folder(folder)
    with fetch_lock(folder, ds):
        refuse_links(folder, ds)
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
            check_space(folder, dl, part, [ds.file(f).size for f in wanted])
            _download(ds, dl, part, progress, echo)
            _place(ds, dl, part, folder, wanted)
    echo(f"{ds.name}: ready in {folder}")
    if os.environ.get(ds.env_var):
        echo(f"note: {ds.env_var} is set, so the loaders read {os.environ[ds.env_var]} and not "
             f"the cache; unset it to use the fetched copy")
    return folder


# -- downloading --------------------------------------------------------------------------
def _download(ds: DataSet, dl: Download, part: Path, progress: bool,
              echo: Callable[[str], None]) -> None:
    """Complete ``part`` to the pinned bytes of ``dl`` or raise; never leaves a part file
    that is longer than ``dl.size`` or that fails the checksum."""
    errors: list[str] = []
    if regular_size(part) == dl.size and sha256_of(part) != dl.sha256:
        part.unlink()  # a complete but wrong leftover: download it again, not resume it
    for url in download_urls(ds, dl):
        for _ in range(ATTEMPTS):
            have = regular_size(part) or 0
            if have > dl.size:
                part.unlink()
                have = 0
            if have == dl.size:
                break
            if have:
                echo(f"{ds.name}: resuming {dl.filename} at {have / 1e6:.1f} MB")
            try:
                get(url, part, have, dl, progress)
                break
            except (FetchError, CacheError):
                raise
            except Cut as e:
                errors.append(f"{url}: {e}")
            except urllib.error.HTTPError as e:
                errors.append(f"{url}: HTTP {e.code} {e.reason}")
                break  # try the next URL
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                errors.append(f"{url}: {reason}")
                break
        if regular_size(part) == dl.size:
            if sha256_of(part) != dl.sha256:
                part.unlink()
                raise DataIntegrityError(
                    f"{dl.filename} from {url} does not match its pinned SHA-256 (a changed "
                    "or tampered file); it was deleted and nothing was installed")
            return
    if regular_size(part) == 0:
        part.unlink()
    left = regular_size(part)
    kept = (f"; the partial download {part} ({left / 1e6:.1f} MB) is kept and resumed "
            "when you run the command again" if left is not None else "")
    raise FetchError(f"could not download {dl.filename} ({errors[-1] if errors else 'no URL'})"
                     f"; check the internet connection (and HTTPS_PROXY), or set "
                     f"{url_env_var(ds)} to a mirror{kept}")


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
    fd = create_exclusive(tmp)
    try:
        with _open_member(archive, member) as src, open(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
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
