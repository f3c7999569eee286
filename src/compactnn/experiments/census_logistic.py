"""A logistic-regression baseline for binary multi-task data (Census-Income), one model
per task, on exactly the split the mixture-of-experts models see.

Features: the numeric columns as the loader gives them (Census: ``log1p`` of the money
columns, standardized with training statistics) and a one-hot code of every categorical
column (a column of cardinality ``K`` gives ``K`` indicators, the unseen-value code
included). The inverse regularization strength ``C`` is chosen per task from a small
grid by validation AUC, the same selection rule the tuned models get; the chosen model
is evaluated once on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from compactnn._checks import check_int
from compactnn.data.multitask import MultiTaskData, MultiTaskPart, missing_mask

__all__ = ["DEFAULT_CS", "logistic_baseline", "one_hot_features"]

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)


def one_hot_features(part: MultiTaskPart, cardinalities: Sequence[int]):
    """``[numeric | one-hot categoricals]`` as a sparse CSR matrix ``(N, F + sum K)``."""
    from scipy import sparse

    x = part.x.flatten(1).double().numpy()
    blocks = [sparse.csr_matrix(x)]
    if cardinalities:
        codes = part.x_cat.numpy()
        offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]])
        n, c = codes.shape
        cols = (codes + offsets).ravel()
        rows = np.repeat(np.arange(n), c)
        blocks.append(sparse.csr_matrix((np.ones(n * c), (rows, cols)),
                                        shape=(n, int(sum(cardinalities)))))
    return sparse.hstack(blocks, format="csr")


def logistic_baseline(data: MultiTaskData, Cs: Sequence[float] = DEFAULT_CS,
                      max_iter: int = 500) -> dict[str, dict[str, Any]]:
    """Per binary task: ``{"C", "val_auc", "test_auc", "val_auc_by_C"}``; ``C`` is chosen
    by validation AUC (the first of equal ones). Non-binary tasks are skipped."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    if not isinstance(data, MultiTaskData):
        raise TypeError(f"data must be a MultiTaskData, got {type(data).__name__}")
    check_int("max_iter", max_iter, 1)
    Cs = [float(c) for c in Cs]
    if not Cs or any(not np.isfinite(c) or c <= 0 for c in Cs):
        raise ValueError(f"Cs must be a non-empty list of positive numbers, got {Cs}")
    card = list(data.cat_cardinalities)
    feats = {name: one_hot_features(p, card) for name, p in data.parts().items()}
    out: dict[str, dict[str, Any]] = {}
    for t, spec in enumerate(data.tasks):
        if spec.kind != "binary":
            continue

        def xy(name: str, t: int = t, spec=spec):
            y = data.parts()[name].targets[t]
            keep = ~missing_mask(spec, y).numpy()
            return feats[name][keep], y.numpy()[keep]

        (xtr, ytr), (xva, yva), (xte, yte) = xy("train"), xy("val"), xy("test")
        best = None
        by_c = {}
        for c in Cs:
            model = LogisticRegression(C=c, max_iter=max_iter)
            model.fit(xtr, ytr)
            auc = float(roc_auc_score(yva, model.decision_function(xva)))
            by_c[c] = auc
            if best is None or auc > best[0]:
                best = (auc, c, model)
        auc, c, model = best
        out[spec.name] = {"C": c, "val_auc": auc,
                          "test_auc": float(roc_auc_score(yte, model.decision_function(xte))),
                          "val_auc_by_C": by_c}
    return out
