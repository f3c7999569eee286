"""Metrics: AUC, per-task losses with missing targets, expert selection ARI, paired tests."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from compactnn.data.multitask import TaskSpec
from compactnn.tasks.mtl.metrics import (
    expert_selection_ari,
    experts_per_task,
    paired_test,
    roc_auc,
    selection_labels,
    task_loss,
    task_losses,
    task_metrics,
)


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_task_loss_and_metrics_skip_missing_targets():
    spec = TaskSpec("r", "regression")
    out = torch.tensor([[1.0], [2.0], [5.0]])
    y = torch.tensor([1.0, float("nan"), 3.0])
    assert float(task_loss(spec, out, y)) == pytest.approx(2.0)  # (0 + 4) / 2
    assert task_metrics(spec, out, y) == {"mse": pytest.approx(2.0)}
    mc = TaskSpec("m", "multiclass", 3)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0]])
    m = task_metrics(mc, logits, torch.tensor([0, -1]))
    assert m["accuracy"] == 1.0
    b = TaskSpec("b", "binary")
    m = task_metrics(b, torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1.0, 0.0, 0.0]))
    assert m["accuracy"] == pytest.approx(2 / 3) and m["auc"] == 1.0
    # every row missing: zero loss that still has a graph
    out = torch.zeros(2, 1, requires_grad=True)
    loss = task_loss(spec, out, torch.tensor([float("nan")] * 2))
    loss.backward()
    assert float(loss.detach()) == 0.0


def test_ari_is_one_on_the_planted_assignment_and_permutation_invariant():
    clusters = np.array([0, 0, 1, 1, 2, 2])
    w = np.zeros((6, 6))
    for t, c in enumerate(clusters):  # cluster c uses experts {2c, 2c+1}
        w[t, 2 * c], w[t, 2 * c + 1] = 0.7, 0.3
    assert expert_selection_ari(w, clusters, "support") == 1.0
    assert expert_selection_ari(w, clusters, "argmax") == 1.0
    assert expert_selection_ari(w, clusters, "topk", k=2) == 1.0
    rng = np.random.default_rng(0)
    perm_e, perm_c = rng.permutation(6), np.array([2, 0, 1])
    assert expert_selection_ari(w[:, perm_e], perm_c[clusters], "support") == 1.0
    # tasks in random order with their clusters: still 1
    order = rng.permutation(6)
    assert expert_selection_ari(w[order], clusters[order]) == 1.0
    # every task on the same experts: ARI 0
    assert expert_selection_ari(np.ones((6, 4)), clusters) == 0.0
    # a torch tensor works too
    assert expert_selection_ari(torch.tensor(w), clusters) == 1.0


def test_experts_per_task_and_labels():
    w = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.2, 0.3, 0.5]])
    assert experts_per_task(w).tolist() == [2, 1, 3]
    assert experts_per_task(w, tol=0.25).tolist() == [2, 1, 2]
    assert selection_labels(w, "support").tolist() == [0, 1, 2]
    assert selection_labels(w, "argmax").tolist() == [0, 2, 2]
    with pytest.raises(ValueError, match="mode"):
        selection_labels(w, "best")


def test_paired_test():
    a = [0.10, 0.12, 0.09, 0.11, 0.10]
    b = [0.12, 0.15, 0.10, 0.14, 0.13]
    t = paired_test(a, b)
    assert t["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert t["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    w = paired_test(a, b, method="wilcoxon", alternative="less")
    assert w["p"] == pytest.approx(stats.wilcoxon(a, b, alternative="less").pvalue)
    assert math.isnan(paired_test([1.0], [2.0])["p"])
    assert math.isnan(paired_test([1.0, 2.0], [1.0, 2.0])["p"])
    with pytest.raises(ValueError, match="equal length"):
        paired_test([1.0, 2.0], [1.0])


def test_batched_task_losses_equal_the_per_task_losses_and_their_gradients():
    g = torch.Generator().manual_seed(0)
    specs = [TaskSpec("r0", "regression"), TaskSpec("b0", "binary"), TaskSpec("m", "multiclass", 3),
             TaskSpec("r1", "regression"), TaskSpec("b1", "binary"), TaskSpec("r2", "regression")]
    n = 9
    outs = [torch.randn(n, 3 if s.kind == "multiclass" else 1, generator=g, dtype=torch.float64,
                        requires_grad=True) for s in specs]
    ys = [torch.randn(n, generator=g, dtype=torch.float64),
          torch.randint(0, 2, (n,), generator=g).double(),
          torch.randint(0, 3, (n,), generator=g),
          torch.randn(n, generator=g, dtype=torch.float64),
          torch.randint(0, 2, (n,), generator=g).double(),
          torch.full((n,), float("nan"), dtype=torch.float64)]  # every row missing
    ys[0][[1, 4]] = float("nan")
    ys[1][0] = float("nan")
    ys[2][3] = -1
    weights = torch.arange(1.0, 7.0, dtype=torch.float64)
    batched = task_losses(specs, outs, ys)
    reference = torch.stack([task_loss(s, o, y) for s, o, y in zip(specs, outs, ys, strict=True)])
    torch.testing.assert_close(batched, reference, rtol=1e-12, atol=1e-12)
    assert float(batched[5].detach()) == 0.0
    g1 = torch.autograd.grad((batched * weights).sum(), outs)
    g2 = torch.autograd.grad((reference * weights).sum(), outs)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not g1[5].any()
