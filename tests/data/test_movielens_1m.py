"""MovieLens-1M: the GroupLens archive read exactly (ratings, year and genres from
movies.dat), found through the registry only when its digest is the pinned one, built into
the same two tasks as the sample, and refused clearly when it is not MovieLens-1M."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pytest

from compactnn.data import registry
from compactnn.data.errors import DataIntegrityError, DataNotFoundError
from compactnn.data.movielens import load_movielens
from compactnn.data.movielens_1m import read_movielens_1m_table

MOVIES = ("1::Toy Story (1995)::Animation|Children's|Comedy\n"
          "2::Jumanji (1995)::Adventure|Children's|Fantasy\n"
          "3::Caf\xe9 Society (1995)::Drama\n"
          "4::Untitled::Drama\n")
RATINGS = ("1::1::5::978300760\n1::3::3::978302109\n2::2::4::978301968\n"
           "2::4::1::978300275\n3::1::2::978824291\n3::2::4::978302268\n")


def archive(path, ratings=RATINGS, movies=MOVIES, extra=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ml-1m/ratings.dat", ratings.encode("latin-1"))
        z.writestr("ml-1m/movies.dat", movies.encode("latin-1"))
        z.writestr("ml-1m/users.dat", "1::F::1::10::48067\n")
        for name, text in (extra or {}).items():
            z.writestr(name, text)
    return path


def pinned(tmp_path, monkeypatch):
    """archive() in a folder that COMPACTNN_MOVIELENS_1M names, with the registry's pin
    replaced by its digest."""
    (tmp_path / "ml").mkdir()
    path = archive(tmp_path / "ml" / "ml-1m.zip")
    ds = registry.DATASETS["movielens_1m"]
    pin = registry.DataFile("ml-1m.zip", path.stat().st_size, registry.sha256_of(path))
    monkeypatch.setitem(registry.DATASETS, "movielens_1m", dataclasses.replace(ds, files=(pin,)))
    monkeypatch.setenv("COMPACTNN_MOVIELENS_1M", str(tmp_path / "ml"))
    return path


def test_the_archive_is_read_exactly(tmp_path) -> None:
    df = read_movielens_1m_table(archive(tmp_path / "ml-1m.zip"))
    assert df.userId.tolist() == [1, 1, 2, 2, 3, 3]
    assert df.movieId.tolist() == [1, 3, 2, 4, 1, 2]
    assert df.rating.tolist() == [5.0, 3.0, 4.0, 1.0, 2.0, 4.0]
    assert df.rating.dtype == np.float64
    assert df.year.tolist()[:3] == [1995.0, 1995.0, 1995.0]
    assert np.isnan(df.year.iloc[3])  # a title without "(year)"
    assert df.genres.tolist()[0] == "Animation|Children's|Comedy"


def test_it_builds_the_two_tasks_like_the_sample(tmp_path, monkeypatch) -> None:
    path = pinned(tmp_path, monkeypatch)
    d = load_movielens(dataset="movielens_1m", seed=0, val_frac=0.2, test_frac=0.2,
                       ids_only=True)
    want = load_movielens(table=read_movielens_1m_table(path), seed=0, val_frac=0.2,
                          test_frac=0.2, ids_only=True)
    assert d.cat_cardinalities == want.cat_cardinalities
    for got_part, want_part in zip((d.train, d.val, d.test), (want.train, want.val, want.test),
                                   strict=True):
        assert got_part.x_cat.tolist() == want_part.x_cat.tolist()
    watched = sum(int(p.targets[0].sum()) for p in (d.train, d.val, d.test))
    assert watched == 6 and d.train.x.shape[1] == 0


def test_a_file_that_is_not_the_pinned_archive_is_refused(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    archive(folder / "ml-1m.zip")
    monkeypatch.setenv("COMPACTNN_MOVIELENS_1M", str(folder))
    with pytest.raises(DataIntegrityError, match="SHA-256"):
        read_movielens_1m_table()
    monkeypatch.setenv("COMPACTNN_MOVIELENS_1M", str(tmp_path / "none"))
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="compactnn data fetch movielens_1m"):
        load_movielens(dataset="movielens_1m")


@pytest.mark.parametrize("ratings, movies, message", [
    ("1::1::5\n", MOVIES, "4 integer fields"),
    ("1::1::five::9\n", MOVIES, "4 integer fields"),
    ("1::1::6::9\n", MOVIES, "outside 1..5"),
    ("0::1::3::9\n", MOVIES, "id < 1"),
    ("", MOVIES, "no ratings"),
    ("1::9::3::9\n", MOVIES, "missing from ml-1m/movies.dat"),
    (RATINGS, "1::Toy Story (1995)\n", "line 1 is not"),
])
def test_malformed_archives_are_refused_naming_the_file(tmp_path, ratings, movies,
                                                        message) -> None:
    path = archive(tmp_path / "bad.zip", ratings, movies)
    with pytest.raises(ValueError, match=message) as e:
        read_movielens_1m_table(path)
    assert "bad.zip" in str(e.value)


def test_other_files_are_refused(tmp_path) -> None:
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip archive"):
        read_movielens_1m_table(tmp_path / "plain.zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("ml-100k/u.data", "1\t1\t5\t9\n")
    with pytest.raises(ValueError, match="no member 'ml-1m/ratings.dat'"):
        read_movielens_1m_table(tmp_path / "other.zip")
    with pytest.raises(TypeError, match="path"):
        read_movielens_1m_table(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset"):
        load_movielens(dataset="movielens_20m")


def test_an_oversized_member_is_refused_before_it_is_read(tmp_path, monkeypatch) -> None:
    from compactnn.data import movielens_1m

    monkeypatch.setattr(movielens_1m, "_MAX_MEMBER", len(RATINGS) - 1)
    with pytest.raises(ValueError, match="unpacks to"):
        read_movielens_1m_table(archive(tmp_path / "big.zip"))


def test_the_pin_is_the_published_one() -> None:
    ds = registry.get_dataset("movielens_1m")
    (dl,) = ds.downloads
    assert dl.urls == ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",)
    assert (dl.size, dl.sha256) == (5917549, "a6898adb50b9ca05aa231689da44c217cb524e7e"
                                             "bd39d264c56e2832f2c54e20")
    assert ds.files[0].sha256 == dl.sha256 and not dl.members and ds.verify_on_use


def test_compactnn_mtl_reads_it_as_data_name_movielens_1m(tmp_path, monkeypatch) -> None:
    from compactnn.tasks.mtl.config import DataConfig
    from compactnn.tasks.mtl.data import load_mtl_data

    path = pinned(tmp_path, monkeypatch)
    d = load_mtl_data(DataConfig(name="movielens_1m", negatives=2), seed=3)
    want = load_movielens(table=read_movielens_1m_table(path), negatives=2, seed=3)
    assert d.task_names == ["watch", "rating"]
    assert d.train.x_cat.tolist() == want.train.x_cat.tolist()
    # 2 negatives a rating, capped by each user's 2 unrated movies of the 4
    assert len(d.train) + len(d.val) + len(d.test) == 6 + 3 * 2
