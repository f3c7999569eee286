"""Data tests never see the user's cache: each gets an empty one of its own."""

import pytest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path_factory.mktemp("cache")))
    for var in ("COMPACTNN_DATA_MIRROR", "COMPACTNN_DATA_URL_FASHION_MNIST",
                "COMPACTNN_DATA_URL_CENSUS", "COMPACTNN_DATA_URL_MOVIELENS"):
        monkeypatch.delenv(var, raising=False)
