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


def test_consecutive_angular_distance_reads_the_span_of_each_run(monkeypatch) -> None:
    import pytest

    from compactnn.depth import consecutive_angular_distance
    from compactnn.depth import hf as hf_mod

    model = _Decoder(n=4)
    nan = math.nan
    span = torch.tensor([[0.5, 0.2, 0.1, 0.0],
                         [nan, 0.6, 0.9, 0.3],
                         [nan, nan, 1.0 + 1e-7, -0.5],  # rounding past 1 is clamped
                         [nan, nan, nan, -1.0 - 1e-7]], dtype=torch.float64)
    monkeypatch.setattr(hf_mod, "layer_io_statistics", lambda m, b: (span.diagonal(), span))
    names, dist = consecutive_angular_distance(model, [], 2)
    assert names == ["layers.1", "layers.2"]
    assert dist == pytest.approx({0: math.acos(0.2) / math.pi, 1: math.acos(0.9) / math.pi,
                                  2: math.acos(-0.5) / math.pi}, abs=1e-12)
    names, dist = consecutive_angular_distance(model, [], 1)
    assert names == ["layers.2"] and dist[2] == 0.0 and dist[3] == 1.0
    with pytest.raises(ValueError, match=r"^n must be <= 3, got n=4$"):
        consecutive_angular_distance(model, [], 4)
    with pytest.raises(ValueError, match=r"^not an HF decoder model$"):
        consecutive_angular_distance(nn.Linear(2, 2), [], 1)


def test_remove_decoder_layers_checks_indices_and_shrinks_per_layer_lists() -> None:
    import pytest

    from compactnn.depth import remove_decoder_layers

    model = _Decoder(n=2)
    model.config.architectures = ["ToyForCausalLM", "ToyModel"]  # not per layer
    model.config.layer_types = ["full", "sliding"]
    with pytest.raises(ValueError, match=r"^index must be <= 1, got index=2$"):
        remove_decoder_layers(model, [2])
    with pytest.raises(ValueError, match=r"^Linear is not an HF decoder model with a list of "
                       r"config\.num_hidden_layers layers$"):
        remove_decoder_layers(nn.Linear(2, 2), [0])
    assert len(model.layers) == 2
    remove_decoder_layers(model, [0])
    assert len(model.layers) == 1 and model.config.num_hidden_layers == 1
    assert model.config.layer_types == ["sliding"]
    assert model.config.architectures == ["ToyForCausalLM", "ToyModel"]


def test_layers_nested_two_levels_deep_are_removed_in_place() -> None:
    from compactnn.depth import remove_decoder_layers

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(num_hidden_layers=3)
            self.outer = nn.Module()
            self.outer.inner = nn.Module()
            self.outer.inner.layers = nn.ModuleList(_Layer(2) for _ in range(3))

    model = Deep()
    kept = model.outer.inner.layers[2]
    remove_decoder_layers(model, [0, 1])
    assert list(model.outer.inner.layers) == [kept]
    assert not hasattr(model.outer, "layers")
