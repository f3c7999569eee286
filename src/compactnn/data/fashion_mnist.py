"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 training and 10,000 test
images, 28x28 grayscale, 10 balanced classes. Nothing is downloaded here: the four
idx files are read from ``root``, by default the first of ``$COMPACTNN_FASHION_MNIST``,
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``) and
the cache that ``compactnn data fetch fashion_mnist`` fills (see
:mod:`compactnn.data.registry`).

The idx format (LeCun et al., the MNIST file format): a big-endian header
``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then
the values in C order, big-endian. The files may be gzipped (the package ships
``*.gz``); :func:`read_idx` detects gzip by its magic bytes, not by the name.

The split (:func:`load_fashion_mnist`): ``val_size`` images of the 60,000
training images are held out as a validation set, stratified by class (each
class gives its share, rounded by largest remainder) and drawn with
``numpy.random.default_rng(seed)``; the rest is the training split; the 10,000
official test images are the test split. Pixels are scaled to [0, 1] and, with
``normalize=True``, standardized with the mean and standard deviation of the
*training split* (one scalar each, over all its pixels), so nothing of the
validation or test images leaks into the inputs. With the defaults
(``val_size=5000, seed=0``) these are mean 0.28590 and std 0.35299 (on [0, 1]
pixels; over all 60,000 training images: 0.28604 and 0.35302);
:func:`fashion_mnist_stats` returns the exact values for any split.

Decoded uint8 arrays are cached in memory per process (keyed by path, size and
modification time); no file is ever written by the loader.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch

from compactnn.data.common import TensorSplit
from compactnn.data.errors import DataNotFoundError
from compactnn.data.registry import locate

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "default_fashion_mnist_root",
    "fashion_mnist_stats",
    "load_fashion_mnist",
    "read_idx",
    "write_idx",
]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# part -> (images file, labels file), without the optional ".gz"
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ENV_VAR = "COMPACTNN_FASHION_MNIST"
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
IMAGE_SIZE = 28
TRAIN_SIZE, TEST_SIZE = 60_000, 10_000
INSTALL_HINT = ("get it with `compactnn data fetch fashion_mnist`, `sudo apt-get install "
                f"dataset-fashion-mnist`, or set {ENV_VAR} to a folder holding the four idx files")

# idx dtype code -> numpy dtype (big-endian where it matters)
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


# -- the idx format ------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (plain or gzipped) into an array of its stored shape.

    The result has the file's dtype in native byte order. Raises
    ``FileNotFoundError`` when the file is missing and ``ValueError`` (naming
    the file) when the header is malformed (bad magic, unknown dtype code, no
    dimensions) or the data does not have exactly the size the header announces.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e}); re-install or re-copy the "
                             "file") from e
    if len(raw) < 4:
        raise ValueError(f"{path}: too short for an idx header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file (magic number starts with "
                         f"0x{raw[0]:02x}{raw[1]:02x}, expected 0x0000)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx dtype code 0x{code:02x} (known: "
                         f"{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})")
    if ndim == 0:
        raise ValueError(f"{path}: idx header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated idx header ({len(raw)} bytes, {ndim} dimensions "
                         f"need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: idx data has {len(raw) - header} bytes but the header "
                         f"shape {shape} of {dtype.name} needs {expected}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an idx file, gzipped when ``path`` ends in ``.gz``
    (with a fixed gzip timestamp, so equal arrays give equal files). Used to
    build test fixtures; supports the idx dtypes (uint8, int8, int16, int32,
    float32, float64)."""
    array = np.asarray(array)
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"idx arrays need 1 to 255 dimensions, got {array.ndim}")
    codes = {dt.newbyteorder("=").str[1:]: c for c, dt in _IDX_DTYPES.items()}
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in codes:
        raise ValueError(f"dtype {array.dtype} has no idx code (use uint8, int8, int16, "
                         "int32, float32 or float64)")
    code = codes[key]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)


# -- locating and decoding the files ---------------------------------------------------
def default_fashion_mnist_root() -> Path:
    """The folder the loader reads by default: ``$COMPACTNN_FASHION_MNIST`` when set, else
    the Debian package's folder, else the fetched copy in the cache (checked against its
    pinned SHA-256). Raises :class:`~compactnn.data.errors.DataNotFoundError` (a
    ``FileNotFoundError``) saying how to get the data when none has the files."""
    return locate("fashion_mnist").folder


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _locate(root: Path) -> dict[str, tuple[Path, Path]]:
    found: dict[str, tuple[Path, Path]] = {}
    missing: list[str] = []
    for part, stems in FASHION_MNIST_FILES.items():
        paths = [_find(root, s) for s in stems]
        missing += [s + ".gz" for s, p in zip(stems, paths, strict=True) if p is None]
        if None not in paths:
            found[part] = (paths[0], paths[1])  # type: ignore[assignment]
    if missing:
        raise DataNotFoundError(f"Fashion-MNIST not found in {root} (missing "
                                f"{', '.join(missing)}): {INSTALL_HINT}", "fashion_mnist",
                                "compactnn data fetch fashion_mnist")
    return found


@functools.lru_cache(maxsize=4)
def _decode_cached(path: str, size: int, mtime_ns: int) -> np.ndarray:
    arr = read_idx(path)
    arr.flags.writeable = False  # shared between callers
    return arr


def _decode(path: Path) -> np.ndarray:
    st = path.stat()
    return _decode_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _load_part(images: Path, labels: Path, expected: int | None) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    x, y = _decode(images), _decode(labels)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{images}: expected uint8 images of shape (N, {IMAGE_SIZE}, "
                         f"{IMAGE_SIZE}), got {x.dtype} {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise ValueError(f"{labels}: expected a 1-D uint8 label array, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if expected is not None and len(x) != expected:
        raise ValueError(f"{images}: expected {expected} images, got {len(x)}")
    if len(y) and int(y.max()) >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{labels}: label {int(y.max())} out of range 0..9")
    return x, y


def _stratified_holdout(y: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices; ``size`` held out, each class contributing its
    share of ``size`` (largest-remainder rounding, ties to the smaller class id)."""
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * size / len(y)
    take = np.floor(exact).astype(np.int64)
    order = np.lexsort((classes, -(exact - take)))  # largest remainder first
    take[order[: size - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    val = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(y == c)
        val.append(rng.permutation(idx)[:k])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    keep = np.ones(len(y), dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep), val_idx


def _resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else default_fashion_mnist_root()


def _check_split_args(val_size: int, seed: int, n_train: int) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, int | np.integer):
        raise TypeError(f"val_size must be an int, got {val_size!r}")
    if not 0 <= val_size < n_train:
        raise ValueError(f"val_size must be in [0, {n_train}), got {val_size}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def _split(root: Path, val_size: int, seed: int, strict: bool):
    files = _locate(root)
    x_tr, y_tr = _load_part(*files["train"], TRAIN_SIZE if strict else None)
    x_te, y_te = _load_part(*files["test"], TEST_SIZE if strict else None)
    _check_split_args(val_size, seed, len(y_tr))
    tr, va = _stratified_holdout(y_tr, int(val_size), int(seed))
    return (x_tr[tr], y_tr[tr]), (x_tr[va], y_tr[va]), (x_te, y_te)


def fashion_mnist_stats(root: str | os.PathLike | None = None, val_size: int = 5000,
                        seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the [0, 1]-scaled pixels of the training split that
    :func:`load_fashion_mnist` makes with the same arguments (the numbers it
    standardizes with)."""
    (x, _), _, _ = _split(_resolve_root(root), val_size, seed, strict=False)
    return _pixel_stats(x)


def _pixel_stats(x: np.ndarray) -> tuple[float, float]:
    if x.size == 0:
        raise ValueError("cannot normalize with an empty training split")
    # exact, from the histogram of the 256 pixel values (no float copy of the images)
    hist = np.bincount(x.reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum()
    mean = float(hist @ levels / n)
    var = float(hist @ (levels - mean) ** 2 / n)
    std = math.sqrt(var)
    return mean, std if std > 0 else 1.0


def load_fashion_mnist(root: str | os.PathLike | None = None, val_size: int = 5000,
                       seed: int = 0, normalize: bool = True, flatten: bool = False,
                       strict: bool = False) -> TensorSplit:
    """Fashion-MNIST as a :class:`TensorSplit` (see the module docstring).

    Args:
        root: directory of the four idx files (``.gz`` or not); default
            :func:`default_fashion_mnist_root`.
        val_size: training images held out for validation (stratified), in
            ``[0, N_train)``; the default leaves 55,000 for training.
        seed: seed of the hold-out draw; the same seed gives the same split.
        normalize: standardize with the training split's pixel mean/std
            (otherwise pixels stay in [0, 1]).
        flatten: images as ``(N, 784)`` rows instead of ``(N, 1, 28, 28)``.
        strict: also require the official sizes (60,000 / 10,000 images).

    Returns:
        float32 images and int64 labels; ``num_classes == 10``; class names in
        ``FASHION_MNIST_CLASSES``.

    Raises:
        FileNotFoundError: a file is missing (the message says how to install).
        ValueError: a file is malformed, or bad ``val_size`` / ``seed``.
    """
    train, val, test = _split(_resolve_root(root), val_size, seed, strict)
    mean, std = _pixel_stats(train[0]) if normalize else (0.0, 1.0)
    shape = (-1, IMAGE_SIZE * IMAGE_SIZE) if flatten else (-1, 1, IMAGE_SIZE, IMAGE_SIZE)

    # one float32 value per pixel level: x -> (x / 255 - mean) / std
    lut = ((np.arange(256, dtype=np.float64) / 255.0 - mean) / std).astype(np.float32)

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(lut[a].reshape(shape))

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return TensorSplit(images(train[0]), labels(train[1]), images(val[0]), labels(val[1]),
                       images(test[0]), labels(test[1]),
                       num_classes=len(FASHION_MNIST_CLASSES))
