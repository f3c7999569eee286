"""MovieLens-1M (GroupLens, 1,000,209 ratings of 3,706 movies by 6,040 users), the data
set of the DSelect-k paper's MovieLens experiment.

No package ships it, and its licence forbids redistribution, so it is only ever
downloaded from GroupLens by ``compactnn data fetch movielens_1m``, into the user cache.
The archive ``ml-1m.zip`` is pinned by the size and SHA-256 that TensorFlow Datasets
publishes for that URL (``tensorflow_datasets/url_checksums/movielens.txt``); it is kept
whole and read from there, after its digest is checked.

:func:`read_movielens_1m_table` returns the ratings in the columns of the sample that
:mod:`compactnn.data.movielens` reads (``userId``, ``movieId``, ``rating``, ``year``,
``genres``), so ``load_movielens(dataset="movielens_1m")`` builds the same two tasks.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from compactnn.data.registry import locate

__all__ = ["read_movielens_1m_table"]

ARCHIVE = "ml-1m.zip"
_RATINGS = "ml-1m/ratings.dat"
_MOVIES = "ml-1m/movies.dat"
_MAX_MEMBER = 64 * 2**20  # ratings.dat is 24 MB; a larger member is not this data set
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _member(archive: zipfile.ZipFile, name: str, where: Path) -> str:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ValueError(f"{where} has no member {name!r}: not the MovieLens-1M archive") \
            from None
    if info.file_size > _MAX_MEMBER:
        raise ValueError(f"{where}: member {name} unpacks to {info.file_size} bytes, more "
                         f"than MovieLens-1M's ({_MAX_MEMBER} at most)")
    return archive.read(info).decode("latin-1")


def _ratings(text: str, where: Path):
    import pandas as pd

    # "UserID::MovieID::Rating::Timestamp"; "::" never occurs inside a field here
    try:
        df = pd.read_csv(io.StringIO(text.replace("::", "\t")), sep="\t", header=None,
                         names=["userId", "movieId", "rating", "timestamp"],
                         dtype=np.int64)
    except (ValueError, pd.errors.ParserError) as e:
        raise ValueError(f"{where}: {_RATINGS} is not 4 integer fields a line: {e}") from None
    if df.empty:
        raise ValueError(f"{where}: {_RATINGS} holds no ratings")
    bad = df[(df.rating < 1) | (df.rating > 5) | (df.userId < 1) | (df.movieId < 1)]
    if len(bad):
        raise ValueError(f"{where}: {_RATINGS} has a rating outside 1..5 or an id < 1, "
                         f"first at line {int(bad.index[0]) + 1}")
    return df


def _movies(text: str, where: Path) -> dict[int, tuple[float, str]]:
    out: dict[int, tuple[float, str]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].isdigit():
            raise ValueError(f"{where}: {_MOVIES} line {n} is not 'MovieID::Title::Genres'")
        year = _YEAR.search(parts[1])
        out[int(parts[0])] = (float(year.group(1)) if year else float("nan"), parts[2])
    return out


def read_movielens_1m_table(path: str | os.PathLike | None = None):
    """The MovieLens-1M ratings as a DataFrame (``userId``, ``movieId``, ``rating``,
    ``timestamp``, and the movie's ``year`` and ``genres``).

    Args:
        path: an ``ml-1m.zip``; by default the one :func:`~compactnn.data.locate` finds
            (``$COMPACTNN_MOVIELENS_1M`` or the cache), checked against its pinned
            SHA-256 first (``DataNotFoundError`` saying how to get it when it is missing).

    Raises ``ValueError`` naming the file for an archive that is not MovieLens-1M.
    """
    if path is None:
        where = locate("movielens_1m", verify=True).files[ARCHIVE]
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a path, got {type(path).__name__}")
        where = Path(path)
    try:
        archive = zipfile.ZipFile(where)
    except zipfile.BadZipFile:
        raise ValueError(f"{where} is not a zip archive") from None
    with archive:
        df = _ratings(_member(archive, _RATINGS, where), where)
        movies = _movies(_member(archive, _MOVIES, where), where)
    unknown = sorted(set(df.movieId.unique()) - set(movies))
    if unknown:
        raise ValueError(f"{where}: ratings of movie ids missing from {_MOVIES}, e.g. "
                         f"{unknown[:3]}")
    df["year"] = df.movieId.map(lambda m: movies[m][0]).astype(np.float64)
    df["genres"] = df.movieId.map(lambda m: movies[m][1])
    df["rating"] = df.rating.astype(np.float64)
    return df
