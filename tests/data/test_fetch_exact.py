"""Small parts of the downloader, exactly: which URLs pass and the refusal's text, a
cache folder several levels deep, the race message of an exclusive create, the
progress bar's options and the default of ``progress``."""

from __future__ import annotations

import inspect
import re

import pytest

from compactnn.data import fetch as fetch_mod
from compactnn.data.errors import CacheError, FetchError
from compactnn.data.registry import Download


def test_http_and_https_urls_pass_and_others_are_refused_with_the_reason() -> None:
    assert fetch_mod._check_url("V", "https://example.org/data") is None
    assert fetch_mod._check_url("V", "http://127.0.0.1:8000/x") is None
    tail = ("; set it to an http(s) URL such as https://example.org/data, or unset it")
    with pytest.raises(FetchError, match="^" + re.escape(
            "V='ftp://example.org' is not a usable URL (only http(s) URLs are used)" + tail)
            + "$"):
        fetch_mod._check_url("V", "ftp://example.org")
    with pytest.raises(FetchError, match=re.escape(
            "V='http://[::1' is not a usable URL (Invalid IPv6 URL)")):
        fetch_mod._check_url("V", "http://[::1")


def test_a_cache_folder_is_created_with_its_parents(tmp_path) -> None:
    folder = tmp_path / "a" / "b" / "c"
    fetch_mod._prepare(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_a_file_appearing_during_an_exclusive_create_is_named(tmp_path, monkeypatch) -> None:
    path = tmp_path / "x.part"
    path.write_bytes(b"theirs")
    monkeypatch.setattr(fetch_mod, "_regular_size", lambda p: None)  # it appears "late"
    with pytest.raises(CacheError, match="^" + re.escape(
            f"{path} appeared while compactnn was writing it; is another program writing to "
            "the cache? Run the command again") + "$"):
        fetch_mod._create(path)
    assert path.read_bytes() == b"theirs"


def test_progress_is_on_by_default_and_the_bar_does_not_stay() -> None:
    assert inspect.signature(fetch_mod.fetch).parameters["progress"].default is True
    pytest.importorskip("tqdm")
    dl = Download("f.bin", ("https://example.org/f.bin",), 2048, "0" * 64)
    assert fetch_mod._bar(dl, 0, False) is None
    bar = fetch_mod._bar(dl, 1024, True)
    try:
        assert (bar.total, bar.n, bar.leave, bar.desc, bar.unit_divisor) == (2048, 1024, False,
                                                                             "f.bin", 1024)
    finally:
        bar.close()


@pytest.mark.parametrize("fire_first", [False, True])
def test_the_header_deadline_shuts_the_attached_socket(fire_first: bool) -> None:
    import socket

    ours, server = socket.socketpair()
    try:
        ours.settimeout(5.0)  # a socket left open would block; shut down it reads b""
        watch = fetch_mod._HeaderDeadline()
        if fire_first:  # the deadline passed while connecting
            watch.fire()
            watch.attach(ours)
        else:
            watch.attach(ours)
            watch.fire()
        assert watch.sock is ours and ours.recv(1) == b""
    finally:
        ours.close()
        server.close()
