"""layer_io_statistics on a decoder that passes the hidden states by keyword (as recent
Hugging Face models do), against the cosines computed by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from compactnn.depth import layer_io_statistics


class _Layer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        return (hidden_states + self.lin(hidden_states),)


class _Decoder(nn.Module):
    def __init__(self, n: int = 3, dim: int = 4, vocab: int = 7) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=n)
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(_Layer(dim) for _ in range(n))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        for layer in self.layers:
            h = layer(hidden_states=h)[0]
        return h


def test_hidden_states_passed_by_keyword_are_seen() -> None:
    torch.manual_seed(0)
    model = _Decoder()
    batches = [torch.randint(0, 7, (2, 5)), torch.randint(0, 7, (1, 3))]
    states = []  # per batch: the input of every layer, then the last output
    with torch.no_grad():
        for ids in batches:
            h = [model.embed(ids)]
            for layer in model.layers:
                h.append(layer(hidden_states=h[-1])[0])
            states.append(h)
    tokens = sum(ids.numel() for ids in batches)
    cos_io, span = layer_io_statistics(model, batches)
    for a in range(3):
        for b in range(3):
            if b < a:
                assert math.isnan(span[a, b])
                continue
            want = sum(float(nn.functional.cosine_similarity(s[a], s[b + 1], dim=-1,
                                                             eps=1e-12).double().sum())
                       for s in states) / tokens
            assert abs(float(span[a, b]) - want) < 1e-6
    assert torch.equal(cos_io, span.diagonal())
    assert model.training  # left in its mode


def test_no_tokens_is_an_error() -> None:
    import pytest

    with pytest.raises(ValueError, match=r"^batches held no tokens$"):
        layer_io_statistics(_Decoder(), [])
