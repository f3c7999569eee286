"""Throughput helpers: exact token and forward-pass counts, greedy output equal to
Hugging Face's ``generate``. No timing thresholds."""

from __future__ import annotations

import pytest
import torch

from compactnn.lm.speed import generation_speed, greedy_generate, prefill_speed

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   eos_token_id=3, bos_token_id=1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


class Calls:
    """Records the input shape of every forward call of a module."""

    def __init__(self, model):
        self.shapes = []
        self.handle = model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        self.shapes.append(tuple(x.shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


PROMPT = torch.tensor([5, 9, 3, 7, 11])  # holds the EOS id 3: no early stop


def test_greedy_generate_matches_generate(tiny_llama):
    out = greedy_generate(tiny_llama, PROMPT, new_tokens=6, batch_size=2)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], PROMPT.expand(2, 5))
    ref = tiny_llama.generate(PROMPT[None], max_new_tokens=6, min_new_tokens=6,
                              do_sample=False, attention_mask=torch.ones(1, 5, dtype=torch.long))
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[0])


def test_generation_counts(tiny_llama):
    with Calls(tiny_llama) as c:
        speed = generation_speed(tiny_llama, PROMPT, new_tokens=4, batch_size=3, threads=1,
                                 repeats=2, warmup=1)
    assert isinstance(speed, float) and speed > 0
    one_round = [(3, 5)] + [(3, 1)] * 4  # one prefill, then 4 timed single-token steps
    assert c.shapes == one_round * 3


def test_models_are_interleaved_and_threads_restored(tiny_llama):
    other = transformers.LlamaForCausalLM(tiny_llama.config).eval()
    order = []
    h1 = tiny_llama.register_forward_pre_hook(lambda *a: order.append("a"))
    h2 = other.register_forward_pre_hook(lambda *a: order.append("b"))
    before = torch.get_num_threads()
    try:
        out = generation_speed({"a": tiny_llama, "b": other}, PROMPT, new_tokens=2,
                               threads=2, repeats=2, warmup=0)
        pre = prefill_speed({"a": tiny_llama, "b": other}, PROMPT, batch_size=2, threads=2,
                            repeats=2, warmup=0)
    finally:
        h1.remove()
        h2.remove()
    assert torch.get_num_threads() == before
    assert set(out) == set(pre) == {"a", "b"}
    assert order[:12] == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3  # round-robin
    assert order[12:] == ["a", "b", "a", "b"]


def test_prefill_counts(tiny_llama):
    with Calls(tiny_llama) as c:
        speed = prefill_speed(tiny_llama, PROMPT, batch_size=4, repeats=3, warmup=2)
    assert isinstance(speed, float) and speed > 0
    assert c.shapes == [(4, 5)] * 5


def test_training_flag_is_restored(tiny_llama):
    tiny_llama.train()
    try:
        generation_speed(tiny_llama, PROMPT, new_tokens=1, repeats=1, warmup=0)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()


def test_argument_checks(tiny_llama):
    with pytest.raises(ValueError, match="new_tokens must be >= 1"):
        generation_speed(tiny_llama, PROMPT, new_tokens=0)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        prefill_speed(tiny_llama, PROMPT, threads=0)
    with pytest.raises(TypeError, match="prompt_ids must be an integer tensor"):
        prefill_speed(tiny_llama, PROMPT.float())
    with pytest.raises(ValueError, match="at least one non-negative token id"):
        prefill_speed(tiny_llama, PROMPT[:0])
    with pytest.raises(TypeError, match="mapping of names to nn.Modules"):
        prefill_speed({}, PROMPT)
    with pytest.raises(TypeError, match="model\\['x'\\] must be a Module"):
        prefill_speed({"x": 3}, PROMPT)
