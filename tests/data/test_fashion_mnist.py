"""Tests of the Fashion-MNIST loader and the idx reader/writer, on a tiny fixture
in the real format (50 train / 20 test images), plus one test on the real files
when the Debian package is installed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from compactnn.data.fashion_mnist import (
    DEFAULT_ROOT,
    ENV_VAR,
    FASHION_MNIST_CLASSES,
    _decode_cached,
    fashion_mnist_stats,
    load_fashion_mnist,
    read_idx,
    write_idx,
)

N_TRAIN, N_TEST = 50, 20


def make_fixture(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0,
                 gz: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        write_idx(root / (name + (".gz" if gz else "")), a)
    return arrays


@pytest.fixture
def fixture_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "fmnist"
    return root, make_fixture(root)


def raw_pixels(x: torch.Tensor) -> np.ndarray:
    """uint8 images back from a normalize=False tensor."""
    return np.rint(x.numpy().reshape(-1, 28, 28) * 255).astype(np.uint8)


# -- idx format ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip(tmp_path, dtype, suffix):
    a = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    assert b.flags.writeable


def test_idx_header_is_the_mnist_layout(tmp_path):
    write_idx(tmp_path / "x", np.zeros((3, 28, 28), np.uint8))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert raw[4:16] == (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(raw) == 16 + 3 * 28 * 28
    # gzip detected by content, not by name; output deterministic
    write_idx(tmp_path / "y.gz", np.ones(5, np.int32))
    (tmp_path / "noext").write_bytes((tmp_path / "y.gz").read_bytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "noext"), np.ones(5, np.int32))
    write_idx(tmp_path / "z.gz", np.ones(5, np.int32))
    assert (tmp_path / "z.gz").read_bytes() == (tmp_path / "y.gz").read_bytes()


def _header(code: int, dims: list[int]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("raw, match", [
    (b"\x00\x00", "too short"),
    (b"\x08\x03\x08\x01" + (1).to_bytes(4, "big") + b"\x00", "magic"),
    (_header(0x07, [1]) + b"\x00", "dtype code 0x07"),
    (_header(0x08, []), "0 dimensions"),
    (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated idx header"),
    (_header(0x08, [2, 3]) + b"\x00" * 5, "5 bytes"),
    (_header(0x08, [2, 3]) + b"\x00" * 7, "7 bytes"),
    (_header(0x0C, [2]) + b"\x00" * 4, "needs 8"),
])
def test_read_idx_rejects_malformed(tmp_path, raw, match):
    for name, data in (("bad", raw), ("bad.gz", gzip.compress(raw))):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=match):
            read_idx(tmp_path / name)


def test_read_idx_corrupt_gzip_and_missing(tmp_path):
    (tmp_path / "c.gz").write_bytes(gzip.compress(_header(0x08, [4]) + b"abcd")[:-6])
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(tmp_path / "c.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope")


def test_write_idx_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError, match="no idx code"):
        write_idx(tmp_path / "a", np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "a", np.zeros((), np.uint8))


# -- the loader ---------------------------------------------------------------------------------
def test_shapes_dtypes_and_sizes(fixture_root):
    root, _ = fixture_root
    s = load_fashion_mnist(root, val_size=10)
    assert s.x_train.shape == (40, 1, 28, 28) and s.x_val.shape == (10, 1, 28, 28)
    assert s.x_test.shape == (N_TEST, 1, 28, 28)
    for x in (s.x_train, s.x_val, s.x_test):
        assert x.dtype == torch.float32 and x.is_contiguous()
    for y in (s.y_train, s.y_val, s.y_test):
        assert y.dtype == torch.int64
    assert s.num_classes == 10 == len(FASHION_MNIST_CLASSES)
    flat = load_fashion_mnist(root, val_size=10, flatten=True)
    assert flat.x_train.shape == (40, 784) and flat.x_test.shape == (N_TEST, 784)
    torch.testing.assert_close(flat.x_train, s.x_train.flatten(1))
    empty = load_fashion_mnist(root, val_size=0)
    assert empty.x_val.shape == (0, 1, 28, 28) and empty.y_val.shape == (0,)
    assert len(empty.x_train) == N_TRAIN
    batch = next(iter(s.loader("train", 8, shuffle=True)))
    assert batch[0].shape == (8, 1, 28, 28)


def test_split_is_disjoint_complete_stratified_and_deterministic(fixture_root):
    root, arrays = fixture_root
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    s = load_fashion_mnist(root, val_size=10, seed=3, normalize=False)
    assert float(s.x_train.min()) >= 0 and float(s.x_train.max()) <= 1
    tr, va = raw_pixels(s.x_train), raw_pixels(s.x_val)
    index = {img.tobytes(): i for i, img in enumerate(images)}
    tr_idx = [index[img.tobytes()] for img in tr]
    va_idx = [index[img.tobytes()] for img in va]
    assert not set(tr_idx) & set(va_idx)
    assert sorted(tr_idx + va_idx) == list(range(N_TRAIN))
    np.testing.assert_array_equal(s.y_train.numpy(), labels[tr_idx])
    np.testing.assert_array_equal(s.y_val.numpy(), labels[va_idx])
    assert torch.bincount(s.y_val, minlength=10).tolist() == [1] * 10  # 10 of 10 classes
    np.testing.assert_array_equal(raw_pixels(s.x_test), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(s.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])

    again = load_fashion_mnist(root, val_size=10, seed=3, normalize=False)
    torch.testing.assert_close(again.x_val, s.x_val, rtol=0, atol=0)
    torch.testing.assert_close(again.y_train, s.y_train, rtol=0, atol=0)
    others = [load_fashion_mnist(root, val_size=10, seed=k, normalize=False) for k in range(4)]
    assert any(not torch.equal(o.x_val, s.x_val) for o in others)


def test_stratified_rounding_of_uneven_val_size(fixture_root):
    root, _ = fixture_root
    s = load_fashion_mnist(root, val_size=13)
    counts = torch.bincount(s.y_val, minlength=10)
    assert int(counts.sum()) == 13 and set(counts.tolist()) <= {1, 2}
    assert len(s.y_train) == N_TRAIN - 13


def test_normalization_uses_training_split_stats(fixture_root):
    root, _ = fixture_root
    raw = load_fashion_mnist(root, val_size=10, seed=1, normalize=False)
    s = load_fashion_mnist(root, val_size=10, seed=1)
    x = raw.x_train.double()
    mean, std = fashion_mnist_stats(root, val_size=10, seed=1)
    assert mean == pytest.approx(float(x.mean()), abs=1e-7)
    assert std == pytest.approx(float(x.std(unbiased=False)), abs=1e-7)
    assert float(s.x_train.double().mean()) == pytest.approx(0, abs=1e-5)
    assert float(s.x_train.double().std(unbiased=False)) == pytest.approx(1, abs=1e-5)
    for part in ("val", "test"):  # the same affine map, with the training split's stats
        expected = (getattr(raw, f"x_{part}").double() - mean) / std
        torch.testing.assert_close(getattr(s, f"x_{part}").double(), expected, atol=1e-5,
                                   rtol=0)


def test_plain_files_and_env_var(tmp_path, monkeypatch):
    root = tmp_path / "plain"
    make_fixture(root, gz=False)
    monkeypatch.setenv(ENV_VAR, str(root))
    s = load_fashion_mnist(val_size=5)
    assert len(s.x_train) == N_TRAIN - 5 and len(s.x_test) == N_TEST


def test_missing_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist()
    msg = str(info.value)
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg and ENV_VAR in msg
    assert "nowhere" in msg and "train-images-idx3-ubyte.gz" in msg
    root = tmp_path / "partial"
    make_fixture(root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-labels-idx1-ubyte\.gz\)"):
        load_fashion_mnist(root)


def test_inconsistent_files_are_rejected(tmp_path):
    root = tmp_path / "bad"
    make_fixture(root)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(49, np.uint8))
    with pytest.raises(ValueError, match="50 images but .* 49 labels"):
        load_fashion_mnist(root)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.full(50, 10, np.uint8))
    with pytest.raises(ValueError, match="label 10 out of range"):
        load_fashion_mnist(root)
    make_fixture(root)
    write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32), np.uint8))
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28\)"):
        load_fashion_mnist(root)
    make_fixture(root)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        load_fashion_mnist(root)
    make_fixture(root)
    with pytest.raises(ValueError, match="expected 60000 images"):
        load_fashion_mnist(root, strict=True)


@pytest.mark.parametrize("kwargs, err", [
    ({"val_size": 50}, ValueError), ({"val_size": -1}, ValueError),
    ({"val_size": 2.5}, TypeError), ({"seed": -1}, ValueError),
])
def test_bad_arguments(fixture_root, kwargs, err):
    with pytest.raises(err):
        load_fashion_mnist(fixture_root[0], **kwargs)


def test_decoded_arrays_are_cached_and_refreshed_on_change(fixture_root):
    root, _ = fixture_root
    load_fashion_mnist(root, val_size=10)
    hits = _decode_cached.cache_info().hits
    load_fashion_mnist(root, val_size=10, seed=5)
    assert _decode_cached.cache_info().hits >= hits + 4
    make_fixture(root, n_train=60)  # rewritten files (other size) are read again
    assert len(load_fashion_mnist(root, val_size=10).x_train) == 50


@pytest.mark.skipif(not Path(DEFAULT_ROOT, "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    s = load_fashion_mnist(DEFAULT_ROOT, strict=True)
    assert len(s.x_train) + len(s.x_val) == 60_000 and len(s.x_val) == 5000
    assert s.x_test.shape == (10_000, 1, 28, 28)
    y = torch.cat([s.y_train, s.y_val])
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(s.y_test).tolist() == [1000] * 10
    assert torch.bincount(s.y_val).tolist() == [500] * 10
    mean, std = fashion_mnist_stats(DEFAULT_ROOT)
    assert (round(mean, 5), round(std, 5)) == (0.28590, 0.35299)  # as documented
    assert abs(float(s.x_train.mean())) < 1e-4
