"""Multi-Fashion-MNIST: overlay construction on tiny idx.gz fixtures in the real format."""

import numpy as np
import pytest
import torch

from compactnn.data.fashion_mnist import write_idx
from compactnn.data.multi_fashion_mnist import (
    load_multi_fashion_mnist,
    overlay_pairs,
)


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_overlay_places_items_and_takes_max():
    a = np.zeros((2, 28, 28), np.uint8)
    a[0] = 100
    a[1, 27, 27] = 7
    canv = overlay_pairs(a, np.array([0]), np.array([1]))
    assert canv.shape == (1, 36, 36)
    assert (canv[0, :8, :28] == 100).all() and (canv[0, 28:, :8] == 0).all()
    assert canv[0, 35, 35] == 7 and canv[0, 27, 27] == 100  # max in the overlap


def test_loader_shapes_labels_and_determinism(root):
    d = load_multi_fashion_mnist(root, val_size=10, seed=1)
    assert d.task_names == ["top_left", "bottom_right"]
    assert all(t.kind == "multiclass" and t.num_classes == 10 for t in d.tasks)
    assert (len(d.train), len(d.val), len(d.test)) == (30, 10, 12)
    assert d.train.x.shape == (30, 1, 36, 36) and d.train.x.dtype == torch.float32
    # standardized with the training canvases
    assert abs(float(d.train.x.mean())) < 1e-4
    for part in (d.train, d.val, d.test):
        assert part.targets[0].dtype == torch.int64
    # the two labels are the labels of the two placed items
    raw = load_multi_fashion_mnist(root, val_size=10, seed=1, normalize=False)
    assert float(raw.train.x.max()) <= 1 and float(raw.train.x.min()) >= 0
    again = load_multi_fashion_mnist(root, val_size=10, seed=1)
    assert torch.equal(d.train.x, again.train.x)
    other = load_multi_fashion_mnist(root, val_size=10, seed=2)
    assert not torch.equal(d.test.x, other.test.x)


def test_labels_match_the_source_images(root):
    from compactnn.data.fashion_mnist import read_idx

    images = read_idx(root / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(root / "t10k-labels-idx1-ubyte.gz")
    d = load_multi_fashion_mnist(root, val_size=10, seed=0, normalize=False)
    canv = d.test.x[:, 0].numpy()
    for j in range(len(canv)):
        tl = int(d.test.targets[0][j])
        # the top-left corner (outside the overlap) is an untouched copy of some image
        # whose label is the top-left label
        match = [i for i in range(len(images))
                 if np.allclose(images[i, :8, :8] / 255.0, canv[j, :8, :8])]
        assert match and all(labels[i] == tl for i in match)
    # every test image appears once in each position
    assert sorted(d.test.targets[0].tolist()) == sorted(labels.tolist())
    assert sorted(d.test.targets[1].tolist()) == sorted(labels.tolist())


def test_limits_and_missing_files(root, tmp_path):
    d = load_multi_fashion_mnist(root, val_size=10, max_train=7, max_val=3, max_test=4)
    assert (len(d.train), len(d.val), len(d.test)) == (7, 3, 4)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_multi_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="max_train"):
        load_multi_fashion_mnist(root, max_train=0)
