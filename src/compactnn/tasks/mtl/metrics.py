"""Metrics for multi-task mixtures of experts: per-task prediction metrics, expert-selection
quality of static gates, and a paired significance test across seeds.

Prediction (:func:`task_metrics`): binary tasks get accuracy (threshold 0 on the logit),
AUC (:func:`roc_auc`, the tie-correct rank formula) and log-loss; multiclass tasks
accuracy and cross-entropy; regression tasks the mean squared error. Missing targets
(NaN / -1) are skipped.

Expert selection, for a task x expert weight matrix ``W`` (``(T, n)``, e.g. from
:func:`compactnn.moe.task_expert_weights`) and the planted clusters of the tasks:

- :func:`experts_per_task`: the number of experts with weight above ``tol`` (``tol = 0``:
  the exact support, which is what sparse execution runs; a softmax gate uses all ``n``).
- :func:`selection_labels`: a label per task from its *selected* experts: ``"support"``
  (tasks with the same set of nonzero experts share a label), ``"argmax"`` (the expert of
  largest weight) or ``"topk"`` (the set of its ``k`` largest weights).
- :func:`expert_selection_ari`: the adjusted Rand index (scikit-learn's
  ``adjusted_rand_score``) between those labels and the planted clusters: 1 when tasks
  select the same experts exactly when they share a cluster, about 0 for an assignment
  unrelated to the clusters. It is invariant to renaming experts and clusters.

Significance (:func:`paired_test`): the runs of two methods with the same seed share the
data and the initialization of the experts, so their scores are compared *paired*, with
the paired t-test (``scipy.stats.ttest_rel``) or the Wilcoxon signed-rank test
(``scipy.stats.wilcoxon``; exact for small samples without ties). Two-sided by default.
With few seeds the tests have little power: with 2 seeds the t-test has 1 degree of
freedom and the smallest two-sided Wilcoxon p-value with n pairs is ``2 / 2^n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from compactnn.data.multitask import TaskSpec, missing_mask

__all__ = ["expert_selection_ari", "experts_per_task", "paired_test", "roc_auc",
           "selection_labels", "task_loss", "task_metrics"]


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve, ``P(score_pos > score_neg) + P(tie) / 2``, by the rank
    formula with average ranks for ties. NaN when only one class is present."""
    from scipy.stats import rankdata

    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in shape: {y.shape} vs {s.shape}")
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks for ties
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def task_loss(spec: TaskSpec, output: Tensor, target: Tensor) -> Tensor:
    """Mean loss of one task over its non-missing rows (0 when every row is missing):
    BCE-with-logits (binary), cross-entropy (multiclass) or MSE (regression)."""
    keep = ~missing_mask(spec, target)
    if spec.kind == "multiclass":
        if bool(keep.all()):
            return F.cross_entropy(output, target)
        out, tgt = output[keep], target[keep]
        return F.cross_entropy(out, tgt) if len(tgt) else output.sum() * 0.0
    out = output.reshape(-1)
    if not bool(keep.all()):
        out, target = out[keep], target[keep]
        if not len(target):
            return output.sum() * 0.0
    if spec.kind == "binary":
        return F.binary_cross_entropy_with_logits(out, target)
    return F.mse_loss(out, target)


def task_metrics(spec: TaskSpec, output: Tensor, target: Tensor) -> dict[str, float]:
    """Metrics of one task on a whole split (``output``: the model's outputs for it)."""
    keep = ~missing_mask(spec, target)
    output, target = output[keep].detach().float().cpu(), target[keep].cpu()
    if not len(target):
        return {}
    if spec.kind == "multiclass":
        return {"accuracy": float((output.argmax(-1) == target).float().mean()),
                "loss": float(F.cross_entropy(output, target))}
    out = output.reshape(-1)
    if spec.kind == "binary":
        return {"accuracy": float(((out > 0).float() == target).float().mean()),
                "auc": roc_auc(target.numpy(), out.numpy()),
                "loss": float(F.binary_cross_entropy_with_logits(out, target))}
    return {"mse": float(F.mse_loss(out, target))}


def _matrix(weights: Any) -> np.ndarray:
    if isinstance(weights, Tensor):
        weights = weights.detach().cpu().numpy()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"expected a (tasks, experts) weight matrix, got shape {w.shape}")
    return w


def experts_per_task(weights: Any, tol: float = 0.0) -> np.ndarray:
    """Number of experts with weight ``> tol`` for each task (``(T,)`` ints)."""
    return (_matrix(weights) > tol).sum(axis=1)


def selection_labels(weights: Any, mode: Literal["support", "argmax", "topk"] = "support",
                     k: int = 1, tol: float = 0.0) -> np.ndarray:
    """One integer label per task naming the experts it selects (see the module doc);
    tasks that select the same experts get the same label."""
    w = _matrix(weights)
    if mode == "argmax":
        return w.argmax(axis=1)
    if mode == "support":
        keys = [tuple(np.flatnonzero(row > tol)) for row in w]
    elif mode == "topk":
        if not 1 <= k <= w.shape[1]:
            raise ValueError(f"k must be in [1, {w.shape[1]}], got {k}")
        keys = [tuple(sorted(np.argsort(-row, kind="stable")[:k])) for row in w]
    else:
        raise ValueError(f"mode must be 'support', 'argmax' or 'topk', got {mode!r}")
    ids: dict[tuple, int] = {}
    return np.array([ids.setdefault(key, len(ids)) for key in keys])


def expert_selection_ari(weights: Any, clusters: Sequence[int] | np.ndarray,
                         mode: Literal["support", "argmax", "topk"] = "support", k: int = 1,
                         tol: float = 0.0) -> float:
    """Adjusted Rand index between the tasks' selected experts and the planted clusters."""
    from sklearn.metrics import adjusted_rand_score

    labels = selection_labels(weights, mode, k, tol)
    clusters = np.asarray(clusters)
    if len(clusters) != len(labels):
        raise ValueError(f"{len(clusters)} cluster labels for {len(labels)} tasks")
    return float(adjusted_rand_score(clusters, labels))


def paired_test(a: Sequence[float], b: Sequence[float],
                method: Literal["ttest", "wilcoxon"] = "ttest",
                alternative: Literal["two-sided", "less", "greater"] = "two-sided"
                ) -> dict[str, float]:
    """Paired test of ``a`` against ``b`` (equal-length, paired by seed).

    Returns ``{"n", "mean_diff" (mean of a - b), "statistic", "p"}``; ``p`` is NaN when
    it is undefined (fewer than 2 pairs, or all differences equal for the t-test / all
    zero for Wilcoxon). ``alternative="less"`` tests ``mean(a - b) < 0``.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length, got {x.shape}, "
                         f"{y.shape}")
    d = x - y
    out = {"n": float(len(d)), "mean_diff": float(d.mean()) if len(d) else math.nan,
           "statistic": math.nan, "p": math.nan}
    if len(d) < 2:
        return out
    if method == "ttest":
        if np.all(d == d[0]):
            return out
        r = stats.ttest_rel(x, y, alternative=alternative)
    elif method == "wilcoxon":
        if np.all(d == 0):
            return out
        r = stats.wilcoxon(x, y, alternative=alternative)
    else:
        raise ValueError(f"method must be 'ttest' or 'wilcoxon', got {method!r}")
    out.update(statistic=float(r.statistic), p=float(r.pvalue))
    return out
