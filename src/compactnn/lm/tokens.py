"""Token ids of a text and seeded calibration windows drawn from them."""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import Tensor

from compactnn._checks import check_int, check_tensor

__all__ = ["calibration_batches", "token_ids"]

# tokenizer -> {sha256 of the text: ids}; weak, so a dropped tokenizer frees its entries
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def token_ids(tokenizer, text: str) -> Tensor:
    """The token ids of ``text`` as a 1-D ``int64`` tensor, without special tokens (no
    BOS/EOS: perplexity is measured on the text alone).

    ``tokenizer`` is a Hugging Face tokenizer, or anything with
    ``encode(text, add_special_tokens=False) -> list[int]``. Results are kept in memory
    per tokenizer and SHA-256 of the text; each call returns a fresh copy.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode method, got {type(tokenizer).__name__}")
    key = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    try:
        per = _CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable or not hashable: no caching
        per = {}
    if key not in per:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise ValueError("tokenizer.encode returned something other than non-negative "
                             "integer ids")
        per[key] = torch.tensor(ids, dtype=torch.long).reshape(-1)
    return per[key].clone()


def calibration_batches(ids: Tensor, n_samples: int, seq_len: int, seed: int) -> Tensor:
    """``n_samples`` windows of ``seq_len`` consecutive tokens of ``ids``, stacked as a
    ``(n_samples, seq_len)`` ``int64`` tensor.

    The start of each window is drawn uniformly from ``0 .. len(ids) - seq_len`` by a
    ``torch.Generator`` seeded with ``seed`` (independent of the global RNG), so the same
    arguments give the same windows on every machine; windows may overlap.
    """
    ids = check_tensor("ids", ids, ndim=1)
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"ids must be an integer tensor, got dtype {ids.dtype}")
    n_samples = check_int("n_samples", n_samples, minimum=1)
    seq_len = check_int("seq_len", seq_len, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if ids.numel() < seq_len:
        raise ValueError(f"ids holds {ids.numel()} tokens, fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=gen)
    offsets = torch.arange(seq_len)
    return ids.long().cpu()[starts[:, None] + offsets[None, :]]
