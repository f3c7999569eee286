"""Layer fusion inside tiny random Hugging Face BART and T5 models: exact at the original
initialization (training and evaluation mode, generation with beams), each decoder layer
reads exactly its row of the fusion, one-hot rows equal a truncated encoder, gradients
reach the weight, and misuse fails with a clear error."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compactnn.encdec import fuse_encoder_layers

transformers = pytest.importorskip("transformers")


def bart(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BartConfig(
        vocab_size=40, d_model=16, encoder_layers=3, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
        decoder_ffn_dim=24, max_position_embeddings=32, dropout=dropout,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
        forced_eos_token_id=None)
    return transformers.BartForConditionalGeneration(cfg).eval()


def t5(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.T5Config(
        vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=3, num_decoder_layers=2,
        num_heads=2, dropout_rate=dropout, decoder_start_token_id=0, pad_token_id=0,
        eos_token_id=1)
    return transformers.T5ForConditionalGeneration(cfg).eval()


MODELS = {"bart": bart, "t5": t5}


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 40, (2, 7), generator=g)
    mask = torch.ones_like(src)
    mask[1, 5:] = 0  # padding in the second example
    tgt = torch.randint(3, 40, (2, 5), generator=g)
    return src, mask, tgt


def logits(model: nn.Module, src: torch.Tensor, mask: torch.Tensor,
           tgt: torch.Tensor) -> torch.Tensor:
    return model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits


@pytest.mark.parametrize("family", sorted(MODELS))
def test_last_init_is_the_original_model_exactly(family: str) -> None:
    model = MODELS[family]()
    src, mask, tgt = batch()
    want = logits(model, src, mask, tgt)
    handle = fuse_encoder_layers(model)
    assert model.encoder_layer_fusion is handle
    assert torch.equal(logits(model, src, mask, tgt), want)
    assert "encoder_layer_fusion.fusion.weight" in model.state_dict()
    assert any(p is handle.fusion.weight for p in model.parameters())
    handle.remove()
    assert not hasattr(model, "encoder_layer_fusion")
    assert torch.equal(logits(model, src, mask, tgt), want)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_last_init_is_exact_in_training_mode_with_dropout(family: str) -> None:
    plain = MODELS[family](dropout=0.3).train()
    fused = copy.deepcopy(plain)
    fuse_encoder_layers(fused)
    src, mask, tgt = batch()
    torch.manual_seed(5)
    want = logits(plain, src, mask, tgt)
    torch.manual_seed(5)
    got = logits(fused, src, mask, tgt)
    assert torch.equal(got, want)


def spy_memories(model: nn.Module) -> list[torch.Tensor]:
    """What each decoder layer actually receives as ``encoder_hidden_states``."""
    seen: list[torch.Tensor] = []
    decoder = model.get_decoder()
    layers = decoder.block if hasattr(decoder, "block") else decoder.layers
    import inspect
    for layer in layers:
        sig = inspect.signature(layer.forward)

        def hook(_m, args, kwargs, sig=sig):
            seen.append(sig.bind_partial(*args, **kwargs).arguments["encoder_hidden_states"])

        layer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def truncated_encoder_output(model: nn.Module, keep: int, src: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor:
    """The output of the model's encoder with only its first ``keep`` layers."""
    enc = copy.deepcopy(model.get_encoder())
    layers = enc.block if hasattr(enc, "block") else enc.layers
    del layers[keep:]
    return enc(input_ids=src, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("family", sorted(MODELS))
def test_each_decoder_layer_reads_its_row_of_the_fusion(family: str) -> None:
    model = MODELS[family]()
    src, mask, tgt = batch()
    states = [truncated_encoder_output(model, k, src, mask) for k in (1, 2, 3)]
    handle = fuse_encoder_layers(model, init="random")
    with torch.no_grad():
        handle.fusion.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [0.0, 3.0, 0.25]]))
    seen = spy_memories(model)
    logits(model, src, mask, tgt)
    assert len(seen) == 2
    w = handle.fusion.weight.detach()
    for j in range(2):
        want = sum(w[j, s] * states[s] for s in range(3))
        torch.testing.assert_close(seen[j], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_a_one_hot_fusion_equals_the_model_with_a_shorter_encoder(family: str) -> None:
    model = MODELS[family]()
    src, mask, tgt = batch()
    short = copy.deepcopy(model)
    enc = short.get_encoder()
    del (enc.block if hasattr(enc, "block") else enc.layers)[2:]
    want = logits(short, src, mask, tgt)
    handle = fuse_encoder_layers(model)
    with torch.no_grad():
        handle.fusion.weight.zero_()
        handle.fusion.weight[:, 1] = 1.0
    torch.testing.assert_close(logits(model, src, mask, tgt), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_generate_with_beams_and_cache_matches_a_cache_free_greedy_loop(family: str) -> None:
    model = MODELS[family]()
    handle = fuse_encoder_layers(model, init="random")
    src, mask, _ = batch()
    start = model.config.decoder_start_token_id
    out = model.generate(input_ids=src, attention_mask=mask, max_new_tokens=4, do_sample=False,
                         num_beams=1, min_new_tokens=4)
    # the reference reruns the whole model (encoder included) on every prefix, no cache;
    # min_new_tokens bans the end token, as here
    ids = torch.full((2, 1), start)
    for _ in range(4):
        step = logits(model, src, mask, ids)[:, -1]
        step[:, model.config.eos_token_id] = -torch.inf
        nxt = step.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(out[:, :5], ids)
    beams = model.generate(input_ids=src, attention_mask=mask, max_new_tokens=3, num_beams=3,
                           do_sample=False)
    assert beams.shape[0] == 2
    handle.remove()


def test_the_fusion_weight_trains() -> None:
    model = bart().train()
    handle = fuse_encoder_layers(model)
    src, mask, tgt = batch()
    loss = model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt, labels=tgt).loss
    loss.backward()
    grad = handle.fusion.weight.grad
    assert grad is not None and grad.shape == (2, 3)
    assert grad[:, :-1].abs().sum() > 0  # the earlier layers get gradient through the fusion


def test_misuse_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        fuse_encoder_layers("bart")  # type: ignore[arg-type]
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=1, hidden_size=16, intermediate_size=16, num_attention_heads=2,
        vocab_size=20))
    with pytest.raises(TypeError, match="encoder-decoder"):
        fuse_encoder_layers(llama)
    model = bart()
    with pytest.raises(ValueError, match="init"):
        fuse_encoder_layers(model, init="ones")
    assert not hasattr(model, "encoder_layer_fusion")
    fuse_encoder_layers(model)
    with pytest.raises(ValueError, match="already has a layer fusion"):
        fuse_encoder_layers(model)
    src, mask, tgt = batch()
    plain_out = transformers.modeling_outputs.BaseModelOutput(
        last_hidden_state=torch.zeros(2, 7, 16))
    with pytest.raises(ValueError, match="fusion_states"):
        model(encoder_outputs=plain_out, attention_mask=mask, decoder_input_ids=tgt)
    enc = model.get_encoder()(input_ids=src, attention_mask=mask)
    with pytest.raises(ValueError, match="did not produce"):
        model.get_decoder()(input_ids=tgt, encoder_hidden_states=enc.last_hidden_state + 1)


def test_layerdrop_is_refused_while_training() -> None:
    model = bart().train()
    model.config.encoder_layerdrop = 1.0
    model.get_encoder().layerdrop = 1.0
    fuse_encoder_layers(model)
    src, mask, tgt = batch()
    with pytest.raises(RuntimeError, match="LayerDrop"):
        logits(model, src, mask, tgt)
