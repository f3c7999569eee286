"""Perplexity against hand computations on a tiny random LLaMA and a closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compactnn.lm.evaluate import perplexity, perplexity_windows

transformers = pytest.importorskip("transformers")

V = 50


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def stream(n, seed=0):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def hand_nll(model, ids, seq_len):
    """Sum and count of -log p over non-overlapping windows, one window at a time."""
    total, count = 0.0, 0
    for b in range(0, len(ids), seq_len):
        w = ids[b:b + seq_len]
        if len(w) < 2:
            continue
        with torch.no_grad():
            logp = torch.log_softmax(model(w[None]).logits[0].double(), -1)
        for j in range(1, len(w)):
            total -= float(logp[j - 1, w[j]])
            count += 1
    return total, count


def test_non_overlapping_windows_match_the_hand_computation(tiny_llama):
    ids = stream(3 * 16 + 5)  # three full windows and a short one, in batches of 2
    total, count = hand_nll(tiny_llama, ids, 16)
    assert count == 3 * 15 + 4
    got = perplexity(tiny_llama, ids, seq_len=16, batch_size=2)
    assert got == pytest.approx(math.exp(total / count), rel=1e-6)
    for bs in (1, 3, 8):
        assert perplexity(tiny_llama, ids, seq_len=16, batch_size=bs) == pytest.approx(
            got, rel=1e-6)


def test_strided_windows_score_each_token_once_with_its_window_context(tiny_llama):
    ids, seq_len, stride = stream(40, 1), 12, 5
    total, count = 0.0, 0
    for b, e, first in perplexity_windows(len(ids), seq_len, stride):
        for t in range(first, e):  # the model sees ids[b:t] when predicting token t
            with torch.no_grad():
                logits = tiny_llama(ids[b:t][None]).logits[0, -1].double()
            total -= float(torch.log_softmax(logits, -1)[ids[t]])
            count += 1
    assert count == len(ids) - 1
    got = perplexity(tiny_llama, ids, seq_len=seq_len, stride=stride, batch_size=4)
    assert got == pytest.approx(math.exp(total / count), rel=1e-6)


@pytest.mark.parametrize("n,seq_len,stride", [(2, 2, 2), (53, 16, 16), (53, 16, 4),
                                              (40, 12, 5), (10, 3, 1), (17, 17, 9)])
def test_windows(n, seq_len, stride):
    wins = perplexity_windows(n, seq_len, stride)
    scored = [t for _, e, first in wins for t in range(first, e)]
    if stride == seq_len:  # the first token of each window is context only
        assert scored == [t for t in range(1, n) if t % seq_len]
    else:  # every token but the first, once, in order
        assert scored == list(range(1, n))
    for i, (b, e, first) in enumerate(wins):
        assert e - b <= seq_len and b < first <= e
        if i > 0:
            assert first - b >= min(seq_len - stride, first)  # context of scored tokens
    if stride == seq_len:
        assert all(b == i * seq_len for i, (b, _, _) in enumerate(wins))


class Uniform(nn.Module):
    """Zero logits: every token has probability 1/vocab, so perplexity is vocab."""

    def __init__(self, vocab, out="tensor"):
        super().__init__()
        self.vocab, self.out = vocab, out

    def forward(self, x):
        logits = torch.zeros(*x.shape, self.vocab)
        return (logits,) if self.out == "tuple" else logits


@pytest.mark.parametrize("out", ["tensor", "tuple"])
def test_a_uniform_model_has_perplexity_vocab(out):
    assert perplexity(Uniform(37, out), stream(100) % 37, seq_len=8) == pytest.approx(37)


def test_max_tokens_truncates_and_the_training_flag_is_restored(tiny_llama):
    ids = stream(80)
    tiny_llama.train()
    try:
        a = perplexity(tiny_llama, ids, seq_len=16, max_tokens=40)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()
    assert a == pytest.approx(perplexity(tiny_llama, ids[:40], seq_len=16), rel=1e-9)


def test_argument_checks(tiny_llama):
    ids = stream(20)
    with pytest.raises(ValueError, match="stride must be <= 8"):
        perplexity(tiny_llama, ids, seq_len=8, stride=9)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        perplexity(tiny_llama, ids, seq_len=1)
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        perplexity(tiny_llama, ids.float())
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(tiny_llama, ids[:1])
    with pytest.raises(ValueError, match="non-negative"):
        perplexity(tiny_llama, ids - 100)
    with pytest.raises(ValueError, match="outside the model's vocabulary of 50"):
        perplexity(tiny_llama, ids + V)
    with pytest.raises(ValueError, match="ids must have 1 dimensions"):
        perplexity(tiny_llama, ids[None])
    with pytest.raises(TypeError, match="model must be a Module"):
        perplexity(lambda x: x, ids)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        perplexity(tiny_llama, ids, batch_size=0)
    with pytest.raises(ValueError, match=r"logits of shape \(1, 20\) for input of shape"):
        perplexity(nn.Identity(), ids, seq_len=32)

    class NoLogits(nn.Module):
        def forward(self, x):
            return {"hidden": x}

    with pytest.raises(TypeError, match="model must return logits"):
        perplexity(NoLogits(), ids)


def test_every_module_gets_its_own_mode_back(tiny_llama):
    tiny_llama.train()
    tiny_llama.model.layers[1].eval()  # a frozen block inside a training model
    modes = [(n, m.training) for n, m in tiny_llama.named_modules()]
    try:
        perplexity(tiny_llama, stream(40), seq_len=16)
        assert [(n, m.training) for n, m in tiny_llama.named_modules()] == modes
    finally:
        tiny_llama.eval()
