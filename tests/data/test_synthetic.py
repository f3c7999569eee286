"""Synthetic multi-task generators: exact task-vector cosines, label correlation trend,
orthogonal clusters, determinism and argument checks."""

import numpy as np
import pytest
import torch

from compactnn.data.synthetic import (
    clustered_task_weights,
    make_clustered_synthetic,
    make_mmoe_synthetic,
    mmoe_task_weights,
)


def cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("p", [-0.3, 0.0, 0.5, 0.9, 1.0])
def test_mmoe_task_vectors_have_cosine_p(p):
    w = mmoe_task_weights(100, p, scale=2.5, seed=3)
    assert cos(w[0], w[1]) == pytest.approx(p, abs=1e-12)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 2.5)
    data = make_mmoe_synthetic(n_train=50, n_val=5, n_test=5, correlation=p, seed=3)
    assert cos(*data.meta["task_weights"]) == pytest.approx(p, abs=1e-12)


def test_label_correlation_increases_with_p():
    corr = []
    for p in (0.0, 0.5, 0.9, 1.0):
        d = make_mmoe_synthetic(n_train=20_000, n_val=1, n_test=1, correlation=p, seed=0)
        corr.append(float(np.corrcoef(d.train.targets[0], d.train.targets[1])[0, 1]))
    assert corr == sorted(corr)
    assert abs(corr[0]) < 0.05 and corr[-1] > 0.95


def test_clustered_weights_cosines_and_orthogonal_clusters():
    w, cl = clustered_task_weights(num_tasks=13, num_clusters=4, input_dim=17,
                                   correlation=0.7, seed=1)
    assert np.bincount(cl).tolist() == [4, 3, 3, 3]
    n = w / np.linalg.norm(w, axis=1, keepdims=True)
    c = n @ n.T
    same = cl[:, None] == cl[None, :]
    off = ~np.eye(len(cl), dtype=bool)
    np.testing.assert_allclose(c[same & off], 0.7, atol=1e-12)
    np.testing.assert_allclose(c[~same], 0.0, atol=1e-12)


def test_clustered_data_layout_and_determinism():
    a = make_clustered_synthetic(num_tasks=8, num_clusters=2, n_train=64, n_val=8, n_test=8,
                                 seed=5)
    b = make_clustered_synthetic(num_tasks=8, num_clusters=2, n_train=64, n_val=8, n_test=8,
                                 seed=5)
    assert a.task_names == [f"t{i}" for i in range(8)]
    assert a.input_shape == (100,)
    assert all(t.kind == "regression" for t in a.tasks)
    assert a.meta["clusters"].tolist() == [0, 1] * 4
    assert torch.equal(a.train.x, b.train.x)
    assert all(torch.equal(x, y) for x, y in zip(a.test.targets, b.test.targets, strict=True))
    # targets standardized with the training statistics
    y = torch.stack(a.train.targets, 1)
    torch.testing.assert_close(y.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    c = make_clustered_synthetic(num_tasks=8, num_clusters=2, n_train=64, n_val=8, n_test=8,
                                 seed=6)
    assert not torch.equal(a.train.x, c.train.x)


def test_within_cluster_labels_correlate_more_than_across():
    d = make_clustered_synthetic(num_tasks=6, num_clusters=2, n_train=20_000, n_val=1,
                                 n_test=1, correlation=0.9, seed=0)
    y = torch.stack(d.train.targets, 1).numpy()
    c = np.corrcoef(y.T)
    assert c[0, 2] > 0.5 and abs(c[0, 1]) < 0.05  # tasks 0, 2 share cluster 0


@pytest.mark.parametrize("kwargs,match", [
    ({"num_tasks": 128, "num_clusters": 8, "input_dim": 100}, "input_dim must be"),
    ({"num_tasks": 4, "num_clusters": 5}, "num_clusters must be"),
    ({"correlation": 1.5}, "correlation must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_clustered_synthetic(n_train=10, n_val=1, n_test=1, **kwargs)
