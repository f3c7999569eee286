"""The logistic-regression baseline: one-hot features, C chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compactnn.data.multitask import MultiTaskData, MultiTaskPart, TaskSpec
from compactnn.experiments.census_logistic import logistic_baseline, one_hot_features


def _data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, 2, generator=g)
    cat = torch.randint(0, 5, (3 * n, 2), generator=g)
    # task a depends on category 3 of column 0, task b on the first numeric feature
    logit_a = 3.0 * (cat[:, 0] == 3).float() - 1.0
    a = (torch.rand(3 * n, generator=g) < torch.sigmoid(logit_a)).float()
    b = (x[:, 0] + 0.3 * torch.randn(3 * n, generator=g) > 0).float()
    reg = torch.randn(3 * n, generator=g)

    def part(i):
        s = slice(i * n, (i + 1) * n)
        return MultiTaskPart(x[s], [a[s], b[s], reg[s]], cat[s])

    return MultiTaskData(part(0), part(1), part(2),
                         (TaskSpec("a", "binary"), TaskSpec("b", "binary"),
                          TaskSpec("r", "regression")), cat_cardinalities=(5, 5)).validate()


def test_one_hot_layout():
    d = _data(10)
    f = one_hot_features(d.train, [5, 5]).toarray()
    assert f.shape == (10, 2 + 10)
    np.testing.assert_allclose(f[:, :2], d.train.x.numpy(), rtol=1e-6)
    codes = d.train.x_cat.numpy()
    for i in range(10):
        assert f[i, 2 + codes[i, 0]] == 1 and f[i, 7 + codes[i, 1]] == 1
    assert (f[:, 2:].sum(1) == 2).all()


def test_baseline_learns_both_tasks_and_picks_c_on_validation():
    res = logistic_baseline(_data(), Cs=(0.001, 1.0))
    assert set(res) == {"a", "b"}  # the regression task is skipped
    assert res["b"]["test_auc"] > 0.95 and res["a"]["test_auc"] > 0.7
    for r in res.values():
        assert r["C"] == max(r["val_auc_by_C"], key=r["val_auc_by_C"].get)


def test_missing_targets_are_skipped():
    d = _data()
    d.train.targets[0][:50] = float("nan")
    d.test.targets[0][:50] = float("nan")
    assert np.isfinite(logistic_baseline(d, Cs=(1.0,))["a"]["test_auc"])


@pytest.mark.parametrize("kw, err", [({"Cs": ()}, ValueError), ({"Cs": (0.0,)}, ValueError),
                                     ({"max_iter": 0}, ValueError)])
def test_bad_arguments(kw, err):
    with pytest.raises(err):
        logistic_baseline(_data(50), **kw)
    with pytest.raises(TypeError):
        logistic_baseline("census")
