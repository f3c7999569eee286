"""The cache folder's files, handled so that nothing is ever written through a link:
names are checked with ``lstat`` (a regular file or absent), new files are created
exclusively, existing ones opened with ``O_NOFOLLOW``; one fetch at a time holds the
folder's lock. Used by :mod:`compactnn.data.fetch` and :mod:`compactnn.data.transfer`."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from compactnn._locks import hold_exclusive
from compactnn.data.errors import CacheError, FetchError
from compactnn.data.registry import DataSet, Download

# never follow a link when opening the cache's files (O_NOFOLLOW is POSIX; Windows has
# no symlinks a normal user can plant)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def prepare_folder(folder: Path) -> None:
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


def check_space(folder: Path, dl: Download, part: Path, sizes: list[int]) -> None:
    have = regular_size(part) or 0
    # an archive and its extracted members coexist until the archive is removed
    need = max(dl.size - have, 0) + (sum(sizes) if dl.members else 0)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise CacheError(f"not enough space in {folder} for {dl.filename}: need about "
                         f"{need / 1e6:.0f} MB, {free / 1e6:.0f} MB free; free some space "
                         "or set COMPACTNN_CACHE to another disk")


def regular_size(path: Path) -> int | None:
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


def refuse_links(folder: Path, ds: DataSet) -> None:
    """Check every name the fetch may read or write in ``folder`` (see _regular_size)."""
    for f in ds.files:
        for c in f.candidates():
            regular_size(folder / c)
            regular_size(folder / f".{c}.tmp")
    for dl in ds.downloads:
        regular_size(folder / f".{dl.filename}.part")


def create_exclusive(path: Path) -> int:
    """A new empty file at ``path`` for writing, created exclusively (a leftover regular
    file is removed first; a link or anything else is refused)."""
    if regular_size(path) is not None:
        path.unlink()
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
    except FileExistsError:  # something appeared in between: name it, never follow it
        regular_size(path)
        raise CacheError(f"{path} appeared while compactnn was writing it; is another "
                         "program writing to the cache? Run the command again") from None


@contextmanager
def fetch_lock(folder: Path, ds: DataSet):
    """Keeps a second fetch out of ``folder`` while this one runs (without POSIX locks,
    as on Windows, one fetch at a time is on the user)."""
    path = folder / ".lock"
    regular_size(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o644)
    except OSError as e:
        regular_size(path)
        raise CacheError(f"cannot open the lock file {path} ({e.strerror or e})") from e
    with open(fd, "r+b") as fh:
        if not hold_exclusive(fh.fileno(), block=False):
            raise FetchError(f"another `{ds.command}` is running on {folder}; wait for it "
                             "to finish")
        yield


def open_part(part: Path) -> int:
    """The existing partial download, opened for writing without following a link."""
    regular_size(part)
    try:
        fd = os.open(part, os.O_RDWR | NOFOLLOW)
    except OSError as e:  # replaced by a link or removed since it was measured
        regular_size(part)
        raise CacheError(f"cannot open the partial download {part} ({e.strerror or e}); "
                         "remove it and run the command again") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CacheError(f"{part} is not a regular file; the cache holds only regular "
                         "files: remove it and run the command again")
    return fd
