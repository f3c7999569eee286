"""TRSP machinery on a Hugging Face decoder (a tiny random LLaMA): scales on decoder
layers, pruning that keeps an HF model which generates, saves and reloads, and the
ShortGPT / consecutive-similarity rankings against the model's own hidden states."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn.depth import (
    LayerScales,
    block_influence,
    consecutive_angular_distance,
    decoder_layers,
    layer_io_statistics,
    prune_layers,
    remove_decoder_layers,
)

transformers = pytest.importorskip("transformers")
NAMES = [f"model.layers.{i}" for i in range(4)]


def llama(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=4, hidden_size=32, intermediate_size=48,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   vocab_size=50, tie_word_embeddings=True,
                                   max_position_embeddings=64, bos_token_id=0,
                                   eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_scales_choose_decoder_layers_and_scale_their_residual_branch() -> None:
    model = llama()
    ids = torch.randint(0, 50, (2, 9))
    want = model(ids).logits
    scales = LayerScales(model)
    assert scales.names == NAMES and set(scales.kinds().values()) == {"plain"}
    assert torch.equal(model(ids).logits, want)  # every scale 1: the same model
    with torch.no_grad():
        scales.weight[2] = 0.0
    zeroed = model(ids).logits
    scales.remove(fold=False)
    pruned, _ = prune_layers(model, names=["model.layers.2"])
    torch.testing.assert_close(zeroed, pruned(ids).logits, rtol=0, atol=1e-6)
    # a = 0.5: x + 0.5 (f(x) - x), read off the layer by hooks
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight[1] = 0.5
    seen = {}
    layer = model.model.layers[1]
    h = layer.register_forward_hook(lambda m, a, out: seen.update(x=a[0], y=out))
    scales.remove(fold=False)  # raw layer output
    model(ids)
    raw_x, raw_y = seen["x"], seen["y"]
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight[1] = 0.5
    out = {}
    h2 = model.model.layers[2].register_forward_pre_hook(
        lambda m, a, kw: out.update(x=a[0] if a else kw["hidden_states"]), with_kwargs=True)
    model(ids)
    h.remove()
    h2.remove()
    torch.testing.assert_close(out["x"], raw_x + 0.5 * (raw_y - raw_x))
    scales.remove(fold=False)


def test_stage_two_penalty_is_the_layer_output_minus_input() -> None:
    model = llama()
    scales = LayerScales(model)
    scales.track(["model.layers.3"])
    ids = torch.randint(0, 50, (2, 7))
    seen = {}
    hook = model.model.layers[3].register_forward_hook(
        lambda m, a, out: seen.update(x=a[0], y=out))
    model.train()
    model(ids)
    hook.remove()
    pen = scales.difference_penalty(2.0)
    # the capture hook runs after the scale hook: y is the scaled output (= raw at a = 1)
    torch.testing.assert_close(pen, 2.0 * (seen["y"] - seen["x"]).pow(2).mean())
    (g,) = torch.autograd.grad(pen, model.model.layers[3].mlp.down_proj.weight)
    assert g.abs().sum() > 0
    scales.remove(fold=False)


def _greedy_without_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def test_pruned_model_is_an_hf_model_that_generates_and_saves(tmp_path) -> None:
    model = llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune_layers(model, names=["model.layers.0", "model.layers.2"])
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, before[
        "model.layers.0.mlp.up_proj.weight"])  # the original is untouched
    assert len(model.model.layers) == 4 and model.config.num_hidden_layers == 4
    assert isinstance(pruned, transformers.LlamaForCausalLM)
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    assert report.removed == ["model.layers.0", "model.layers.2"]
    assert report.kinds == dict.fromkeys(report.removed, "decoder layer")
    assert report.params_after < report.params_before
    # the kept layers are the original layers 1 and 3
    assert torch.equal(pruned.model.layers[1].self_attn.q_proj.weight,
                       before["model.layers.3.self_attn.q_proj.weight"])
    prompt = torch.randint(1, 50, (1, 5))
    gen = pruned.generate(prompt, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert torch.equal(gen, _greedy_without_cache(pruned, prompt, 6))
    pruned.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 2
    ids = torch.randint(0, 50, (2, 8))
    assert torch.equal(loaded(ids).logits, pruned(ids).logits)


def test_pruning_by_scales_takes_the_smallest() -> None:
    model = llama()
    scales = LayerScales(model)
    with torch.no_grad():
        scales.weight.copy_(torch.tensor([0.9, 0.1, 0.5, -0.05]))
    scales.remove(fold=False)
    pruned, report = prune_layers(model, ratio=0.5, scores=scales)
    assert report.removed == ["model.layers.3", "model.layers.1"]
    assert pruned.config.num_hidden_layers == 2


def test_block_influence_matches_the_hidden_states() -> None:
    model = llama()
    batches = [torch.randint(0, 50, (2, 6)) for _ in range(2)]
    bi = block_influence(model, batches)
    assert list(bi) == NAMES
    hs = [model(b, output_hidden_states=True).hidden_states for b in batches]
    for i in range(3):  # hidden_states[-1] has the final norm: layers 0..2 only
        cos = torch.cat([torch.nn.functional.cosine_similarity(h[i], h[i + 1], dim=-1)
                         .flatten() for h in hs])
        assert bi[NAMES[i]] == pytest.approx(1 - cos.mean().item(), abs=1e-5)
    cos_io, span = layer_io_statistics(model, batches)
    torch.testing.assert_close(cos_io, span.diagonal())
    assert torch.isnan(span[2, 1])
    names, dist = consecutive_angular_distance(model, batches, 2)
    best = min(dist, key=dist.get)
    assert names == [f"model.layers.{best}", f"model.layers.{best + 1}"]
    assert len(dist) == 3


def test_errors_and_non_hf_models() -> None:
    model = llama()
    with pytest.raises(ValueError, match="all 4 decoder layers"):
        prune_layers(model, names=NAMES)
    with pytest.raises(ValueError, match="all 4 decoder layers"):
        remove_decoder_layers(model, range(4))
    assert model.config.num_hidden_layers == 4
    with pytest.raises(ValueError, match="index"):
        remove_decoder_layers(model, [7])
    assert decoder_layers(nn.Sequential(nn.Linear(2, 2))) is None
    with pytest.raises(ValueError, match="not an HF decoder"):
        remove_decoder_layers(nn.Linear(2, 2), [0])
