"""Synthetic multi-task regression with controlled task relatedness.

Two generators, both after the recipe of [MMoE] (Ma et al., KDD 2018, section 3.2):

**Two tasks** (:func:`make_mmoe_synthetic`). Draw orthonormal ``u1, u2`` in ``R^d``
(QR of a Gaussian matrix), set ``w1 = c u1`` and ``w2 = c (p u1 + sqrt(1 - p^2) u2)``,
so that ``cos(w1, w2) = p`` *exactly* (up to float rounding). With ``x ~ N(0, I_d)``,

    y_t = w_t . x + sum_{i=1..m} sin(alpha_i w_t . x + beta_i) + eps,

``m = 10`` sinusoids with ``alpha_i, beta_i ~ N(0, 1)`` shared by the tasks (drawn once
per data seed), ``eps ~ N(0, noise_std^2)`` (``noise_std = 0.1``: variance 0.01). The
label correlation increases with ``p``: at ``p = 1`` the tasks differ only by noise.

**Many tasks in clusters** (:func:`make_clustered_synthetic`). ``T`` tasks in ``C``
clusters (task ``t`` in cluster ``t mod C``, so cluster sizes differ by at most one).
``R^d`` is split into ``C`` mutually orthogonal subspaces (blocks of columns of one random
orthogonal matrix); cluster ``c`` has a unit centre ``u_c`` and its tasks have unit
directions ``v_t`` in its own subspace, orthogonal to ``u_c`` and to each other, and

    w_t = c (sqrt(p) u_c + sqrt(1 - p) v_t).

Hence ``cos(w_s, w_t) = p`` for two tasks of the same cluster and exactly ``0`` for tasks
of different clusters (the clusters are orthogonal), and the ideal task-to-expert
assignment is known: one group of experts per cluster. The labels follow the formula
above. This needs ``d >= T + C`` (one centre per cluster plus one direction per task);
the default ``input_dim=None`` takes ``max(100, T + C)``.

All randomness comes from ``numpy.random.default_rng(seed)``: the same arguments give the
same data, bit for bit. The returned :class:`~compactnn.data.multitask.MultiTaskData` has
regression tasks named ``t0, t1, ...`` and ``meta`` entries ``task_weights`` (``(T, d)``
array), ``clusters`` (cluster of each task), ``alpha`` and ``beta``.

Inputs are not rescaled; the targets are standardized per task with the *training*
split's mean and standard deviation (``standardize_targets=True``), so the task losses
(MSE) are on one scale; the statistics are in ``meta["target_mean"]`` / ``["target_std"]``.
"""

from __future__ import annotations

import numpy as np

from compactnn.data.multitask import MultiTaskData, regression_data

__all__ = ["clustered_task_weights", "make_clustered_synthetic", "make_mmoe_synthetic",
           "mmoe_task_weights", "synthetic_targets"]


def _check(name: str, value, lo: float, hi: float | None = None, integer: bool = False):
    if integer and (isinstance(value, bool) or not isinstance(value, int | np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if not integer and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {value}")


def _orthonormal(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """``k`` orthonormal columns in ``R^d`` (a ``(d, k)`` matrix), Haar-distributed."""
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))  # sign fix: a uniformly random orthogonal frame


def mmoe_task_weights(input_dim: int, correlation: float, scale: float = 1.0,
                      seed: int = 0) -> np.ndarray:
    """``(2, d)`` weight vectors ``w1, w2`` of norm ``scale`` with cosine ``correlation``."""
    _check("input_dim", input_dim, 2, integer=True)
    _check("correlation", correlation, -1.0, 1.0)
    u = _orthonormal(np.random.default_rng(seed), input_dim, 2).T
    p = float(correlation)
    return scale * np.stack([u[0], p * u[0] + np.sqrt(1.0 - p * p) * u[1]])


def clustered_task_weights(num_tasks: int, num_clusters: int, input_dim: int,
                           correlation: float, scale: float = 1.0,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(T, d)`` task weight vectors and ``(T,)`` cluster ids (see the module docstring):
    cosine ``correlation`` within a cluster, exactly 0 across clusters."""
    _check("num_tasks", num_tasks, 1, integer=True)
    _check("num_clusters", num_clusters, 1, num_tasks, integer=True)
    _check("correlation", correlation, 0.0, 1.0)
    _check("input_dim", input_dim, num_tasks + num_clusters, integer=True)
    clusters = np.arange(num_tasks) % num_clusters
    basis = _orthonormal(np.random.default_rng(seed), input_dim, input_dim)
    # cluster c owns a contiguous block of columns of `basis`: 1 centre + one per task
    sizes = np.bincount(clusters, minlength=num_clusters)
    starts = np.concatenate([[0], np.cumsum(sizes + 1)[:-1]])
    w = np.zeros((num_tasks, input_dim))
    p = float(correlation)
    for c in range(num_clusters):
        centre = basis[:, starts[c]]
        for j, t in enumerate(np.flatnonzero(clusters == c)):
            v = basis[:, starts[c] + 1 + j]
            w[t] = scale * (np.sqrt(p) * centre + np.sqrt(1.0 - p) * v)
    return w, clusters


def synthetic_targets(x: np.ndarray, weights: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                      noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """``(N, T)`` targets ``w_t.x + sum_i sin(alpha_i w_t.x + beta_i) + eps``."""
    z = x @ weights.T  # (N, T)
    y = z + np.sin(z[..., None] * alpha + beta).sum(-1)
    return y + noise_std * rng.standard_normal(y.shape)


def _build(weights: np.ndarray, n_train: int, n_val: int, n_test: int, num_sines: int,
           noise_std: float, seed: int, standardize_targets: bool,
           meta: dict) -> MultiTaskData:
    _check("n_train", n_train, 2, integer=True)
    _check("n_val", n_val, 0, integer=True)
    _check("n_test", n_test, 0, integer=True)
    _check("num_sines", num_sines, 0, integer=True)
    _check("noise_std", noise_std, 0.0)
    rng = np.random.default_rng([seed, 1])  # independent of the weight draw
    alpha, beta = rng.standard_normal(num_sines), rng.standard_normal(num_sines)
    n = n_train + n_val + n_test
    x = rng.standard_normal((n, weights.shape[1]))
    y = synthetic_targets(x, weights, alpha, beta, noise_std, rng)
    meta = {**meta, "task_weights": weights, "alpha": alpha, "beta": beta,
            "noise_std": noise_std}
    return regression_data(x, y, n_train, n_val, standardize_targets, meta)


def make_mmoe_synthetic(n_train: int = 10_000, n_val: int = 1000, n_test: int = 1000,
                        input_dim: int = 100, correlation: float = 0.5, scale: float = 1.0,
                        num_sines: int = 10, noise_std: float = 0.1, seed: int = 0,
                        standardize_targets: bool = True) -> MultiTaskData:
    """The two-task data of [MMoE] with task correlation ``p = correlation`` (the cosine of
    the task weight vectors), as a :class:`MultiTaskData` (see the module docstring)."""
    w = mmoe_task_weights(input_dim, correlation, scale, seed)
    return _build(w, n_train, n_val, n_test, num_sines, noise_std, seed, standardize_targets,
                  {"correlation": float(correlation)})


def make_clustered_synthetic(num_tasks: int = 16, num_clusters: int = 4,
                             n_train: int = 10_000, n_val: int = 1000, n_test: int = 1000,
                             input_dim: int | None = None, correlation: float = 0.9,
                             scale: float = 1.0, num_sines: int = 10, noise_std: float = 0.1,
                             seed: int = 0, standardize_targets: bool = True) -> MultiTaskData:
    """``num_tasks`` regression tasks in ``num_clusters`` orthogonal clusters, cosine
    ``correlation`` within a cluster (see the module docstring). ``meta["clusters"]`` is
    the planted cluster of each task."""
    d = max(100, num_tasks + num_clusters) if input_dim is None else input_dim
    w, clusters = clustered_task_weights(num_tasks, num_clusters, d, correlation, scale, seed)
    return _build(w, n_train, n_val, n_test, num_sines, noise_std, seed, standardize_targets,
                  {"clusters": clusters, "correlation": float(correlation),
                   "num_clusters": num_clusters})
