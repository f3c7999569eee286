"""Token ids (cached per tokenizer and text) and seeded calibration windows."""

from __future__ import annotations

import pytest
import torch

from compactnn.lm.tokens import calibration_batches, token_ids


class CountingTokenizer:
    def __init__(self, out=None):
        self.calls = []
        self.out = out

    def encode(self, text, add_special_tokens=True):
        self.calls.append((text, add_special_tokens))
        return self.out if self.out is not None else [ord(c) for c in text]


def test_ids_are_cached_per_text_and_returned_as_copies():
    tok = CountingTokenizer()
    a = token_ids(tok, "abc")
    assert a.dtype == torch.int64 and a.tolist() == [97, 98, 99]
    a[0] = -5  # the caller's copy
    assert token_ids(tok, "abc").tolist() == [97, 98, 99]
    assert tok.calls == [("abc", False)]  # once, without special tokens
    token_ids(tok, "abd")
    assert len(tok.calls) == 2
    other = CountingTokenizer()
    token_ids(other, "abc")
    assert len(other.calls) == 1  # the cache is per tokenizer


@pytest.mark.parametrize("out", [[1, -2], [1.5], [True], ["a"]])
def test_bad_tokenizer_output_is_refused(out):
    with pytest.raises(ValueError, match="non-negative integer ids"):
        token_ids(CountingTokenizer(out), "x")


def test_argument_checks():
    with pytest.raises(TypeError, match="text must be a str"):
        token_ids(CountingTokenizer(), b"x")
    with pytest.raises(TypeError, match="tokenizer must have an encode method"):
        token_ids(object(), "x")


def test_windows_are_contiguous_seeded_and_in_range():
    ids = torch.arange(100, 150)
    b = calibration_batches(ids, n_samples=64, seq_len=10, seed=3)
    assert b.shape == (64, 10) and b.dtype == torch.int64
    assert torch.equal(b - b[:, :1], torch.arange(10).expand(64, 10))  # consecutive tokens
    assert int(b.min()) >= 100 and int(b.max()) <= 149
    starts = set(b[:, 0].tolist())
    assert 100 in starts or 140 in starts or len(starts) > 20  # spread over the range
    torch.manual_seed(0)
    again = calibration_batches(ids, 64, 10, 3)
    torch.manual_seed(1)
    assert torch.equal(again, b) and torch.equal(calibration_batches(ids, 64, 10, 3), b)
    assert not torch.equal(calibration_batches(ids, 64, 10, 4), b)


def test_a_window_as_long_as_the_text_is_the_text():
    ids = torch.arange(7)
    assert torch.equal(calibration_batches(ids, 3, 7, 0), ids.expand(3, 7))


def test_every_start_is_reachable():
    ids = torch.arange(5)
    starts = set(calibration_batches(ids, 400, 3, 0)[:, 0].tolist())
    assert starts == {0, 1, 2}


def test_window_argument_checks():
    ids = torch.arange(5)
    with pytest.raises(ValueError, match="fewer than seq_len=6"):
        calibration_batches(ids, 1, 6, 0)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        calibration_batches(ids, 0, 2, 0)
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        calibration_batches(ids.float(), 1, 2, 0)
    with pytest.raises(ValueError, match="ids must have 1 dimensions"):
        calibration_batches(ids[None], 1, 2, 0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        calibration_batches(ids, 1, 2, -1)
