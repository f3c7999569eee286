"""Model surgery on Hugging Face transformers (tiny random models made here): GPT-2's
Conv1D, LLaMA with grouped-query attention and a tied head, BERT with an attention
mask; block-wise calibration against the module-by-module reference; budgets over
the selected layers; the save / reload round trip."""

import warnings

import pytest
import torch
from torch import nn

from compactnn import LowRankLinear, factorize, merge
from compactnn.lowrank import dense_matrix, is_transposed_linear, linear_view, to_lowrank
from compactnn.surgery.blockwise import find_blocks
from compactnn.surgery.sequential import compress_sequential

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


def gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50,
                                  n_positions=32, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama(seed=0, tie=True):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=60,
                                   tie_word_embeddings=tie, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def ids(vocab, n=4, t=16, seed=1):
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits


# ---------------------------------------------------------------- GPT-2's Conv1D


def test_conv1d_is_a_transposed_linear_and_converts_exactly():
    model = gpt2()
    c_attn = model.transformer.h[0].attn.c_attn
    assert is_transposed_linear(c_attn) and not is_transposed_linear(nn.Linear(3, 4))
    lin = linear_view(c_attn)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(lin(x), c_attn(x))
    assert lin.weight.data_ptr() == c_attn.weight.data_ptr()  # a view, no copy
    # the matrix view is the (out, in) weight; full rank reproduces the layer exactly
    torch.testing.assert_close(dense_matrix(c_attn)[0], c_attn.weight.t())
    full = to_lowrank(c_attn, 32)
    assert isinstance(full, LowRankLinear) and (full.in_features, full.out_features) == (32, 96)
    torch.testing.assert_close(full(x), c_attn(x), rtol=1e-5, atol=1e-5)


def test_gpt2_factorize_by_name_and_merge_back():
    model = gpt2()
    x = ids(50)
    out, report = factorize(model, rank=8, include=["c_attn"])
    assert [r.name for r in report.layers if r.rank is not None] == [
        "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert all(isinstance(b.attn.c_attn, LowRankLinear) for b in out.transformer.h)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"  # a copy by default
    # the factorized model computes with the factors: merging them gives the same logits
    merged = merge(out)
    torch.testing.assert_close(logits(merged, x), logits(out, x), rtol=1e-4, atol=1e-5)
    # the spectral factors are the truncated SVD of the (out, in) weight
    w = model.transformer.h[0].attn.c_attn.weight.t()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    best = (u[:, :8] * s[:8]) @ vh[:8]
    torch.testing.assert_close(out.transformer.h[0].attn.c_attn.dense_weight(), best,
                               rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- LLaMA: GQA, ties, budgets


def test_llama_tied_head_is_kept_with_a_note_and_budgets_count_selected_layers():
    model = llama()
    out, report = factorize(model, param_ratio=0.5, budget_over="selected",
                            allocation="layerwise")
    head = next(r for r in report.layers if r.name == "lm_head")
    assert head.rank is None and not head.selected and "tied to model.embed_tokens" in head.note
    assert out.lm_head.weight is out.model.embed_tokens.weight
    # every selected layer keeps about half of its own parameters: rank floor(q m n / (m + n))
    for r in report.layers:
        if r.selected:
            m, n = map(int, r.shape.split("x"))
            assert r.rank == int(0.5 * m * n / (m + n)) or r.rank == int(0.5 * m * n / (m + n)) - 1
    assert report.selected_param_ratio <= 0.5 < report.selected_param_ratio + 0.05
    # the whole-model ratio counts the embedding too, so it is higher
    assert report.param_ratio > report.selected_param_ratio
    # over the whole model the same budget is out of reach (the embedding alone is big)
    with pytest.raises(ValueError, match="budget_over='selected'"):
        factorize(model, param_ratio=0.1)
    # GQA: k and v project to num_kv_heads * head_dim = 16
    kv = next(r for r in report.layers if r.name.endswith("k_proj"))
    assert kv.shape == "16x32"


def build_whitened(rank):
    def build(dense, inputs, activation=None, **_):
        return to_lowrank(dense, rank, "whitened", inputs=inputs)
    return build


def test_blockwise_sequential_equals_the_module_by_module_reference():
    model = llama()
    x = ids(60)
    out, report = factorize(model, rank=6, init="whitened", calibration=x)
    names = [r.name for r in report.layers if r.rank is not None]
    ref = llama()
    compress_sequential(ref, [(n, build_whitened(6)) for n in names], x)
    torch.testing.assert_close(logits(out, x), logits(ref, x), rtol=1e-4, atol=1e-4)
    # and it is better on the calibration data than the data-free spectral factors
    spectral, _ = factorize(model, rank=6)
    dense = logits(model, x)
    assert (logits(out, x) - dense).pow(2).mean() < (logits(spectral, x) - dense).pow(2).mean()


def test_blockwise_one_pass_fits_every_layer_on_the_dense_activations():
    model = llama()
    x = ids(60)
    out, report = factorize(model, rank=6, init="whitened", calibration=x, sequential=False)
    captured = {}
    hooks = [m.register_forward_pre_hook(
        lambda _m, a, n=n: captured.setdefault(n, []).append(a[0].detach()))
        for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    logits(model, x)
    for h in hooks:
        h.remove()
    for name, rows in captured.items():
        expect = to_lowrank(model.get_submodule(name), 6, "whitened", inputs=rows)
        torch.testing.assert_close(out.get_submodule(name).dense_weight(),
                                   expect.dense_weight(), rtol=1e-4, atol=1e-5)
    seq, _ = factorize(model, rank=6, init="whitened", calibration=x)
    assert not torch.allclose(logits(seq, x), logits(out, x))


def test_token_rows_of_3d_activations_are_the_calibration_rows():
    model = llama()
    x = ids(60)
    out, _ = factorize(model, rank=6, init="lstsq", calibration=x, sequential=False,
                       include=["k_proj", "v_proj"])
    rows = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, a, n=n: rows.setdefault(n, a[0].detach().reshape(-1, 32)))
        for n in ("model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj")]
    logits(model, x)
    for h in hooks:
        h.remove()
    for name, r in rows.items():
        assert r.shape == (4 * 16, 32)  # every token of every sequence is a row
        expect = to_lowrank(model.get_submodule(name), 6, "lstsq", inputs=r)
        torch.testing.assert_close(out.get_submodule(name).dense_weight(),
                                   expect.dense_weight(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.get_submodule(name).bias, expect.bias)


def test_find_blocks_names_the_decoder_layers():
    assert find_blocks(llama()).name == "model.layers"
    assert find_blocks(gpt2()).name == "transformer.h"
    assert find_blocks(nn.Sequential(nn.Linear(2, 2))) is None


def test_bert_encoder_with_a_padding_mask_is_calibrated_blockwise():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                  num_attention_heads=4, vocab_size=50,
                                  max_position_embeddings=32)
    model = transformers.BertModel(cfg).eval()
    x = ids(50)
    mask = torch.ones_like(x)
    mask[:, -4:] = 0
    batch = {"input_ids": x, "attention_mask": mask}
    out, report = factorize(model, rank=8, init="whitened", calibration=[batch],
                            include=r"encoder\.layer\.\d+\..*")
    names = [r.name for r in report.layers if r.rank is not None]
    assert len(names) == 12
    ref = transformers.BertModel(cfg).eval()
    ref.load_state_dict(model.state_dict())
    compress_sequential(ref, [(n, build_whitened(8)) for n in names], [batch])
    with torch.no_grad():
        torch.testing.assert_close(out(**batch).last_hidden_state,
                                   ref(**batch).last_hidden_state, rtol=1e-4, atol=1e-4)


def test_a_failing_blockwise_build_leaves_the_model_as_it_was(assert_same_state):
    model = llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        factorize(model, rank=6, init="whitened", inplace=True,
                  calibration=ids(60).float() * float("nan"))
    assert_same_state(model.state_dict(), before)
    assert all(type(m) is not LowRankLinear for m in model.modules())


# ---------------------------------------------------------------- save and reload


@pytest.mark.parametrize("make", [gpt2, llama])
def test_save_pretrained_round_trip(tmp_path, make):
    from compactnn.lm.pretrained import load_pretrained, save_pretrained

    model = make()
    x = ids(50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = factorize(model, rank=5)
    save_pretrained(out, tmp_path / "m")
    back = load_pretrained(tmp_path / "m")
    assert sum(isinstance(m, LowRankLinear) for m in back.modules()) == \
        sum(isinstance(m, LowRankLinear) for m in out.modules())
    torch.testing.assert_close(logits(back, x), logits(out, x))
    # Hugging Face's own loader finds no dense weights there, instead of random ones
    with pytest.raises(OSError):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    # Hugging Face's own save_pretrained of the factorized model loads back exactly too
    out.save_pretrained(tmp_path / "hf")
    hf = load_pretrained(tmp_path / "hf")
    torch.testing.assert_close(logits(hf, x), logits(out, x))
    # ... but not a dense model's folder, nor a folder without weights
    make().save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="holds no low-rank factors"):
        load_pretrained(tmp_path / "dense")
    (tmp_path / "e").mkdir()
    with pytest.raises(FileNotFoundError, match="compactnn.safetensors not found"):
        load_pretrained(tmp_path / "e")
    # a folder holding a dense model's weights is refused as a destination
    with pytest.raises(ValueError, match="model.safetensors exists"):
        save_pretrained(out, tmp_path / "dense")
    with pytest.raises(TypeError, match="PreTrainedModel"):
        save_pretrained(nn.Linear(2, 2), tmp_path / "x")


def test_nonlinear_refits_the_swiglu_gate_and_up_through_the_block_output():
    model = llama()
    x = ids(60, n=8, t=16)
    captured = {}
    h = model.model.layers[0].mlp.register_forward_pre_hook(
        lambda _m, a: captured.setdefault("x", a[0].detach()))
    logits(model, x)
    h.remove()
    mlp_in = captured["x"]
    dense_mlp = model.model.layers[0].mlp

    def mlp_error(m):
        with torch.no_grad():
            return float((m.model.layers[0].mlp(mlp_in) - dense_mlp(mlp_in)).pow(2).mean())

    opts = dict(rank=6, init="nonlinear", calibration=x, include=["gate_proj", "up_proj"])
    fitted, _ = factorize(model, gated_steps=60, **opts)
    unfitted, _ = factorize(model, gated_steps=0, **opts)
    assert mlp_error(fitted) < 0.9 * mlp_error(unfitted)
    # the refit touched gate and up only (down stays the dense layer)
    assert type(fitted.model.layers[0].mlp.down_proj) is nn.Linear
    torch.testing.assert_close(fitted.model.layers[0].mlp.down_proj.weight,
                               dense_mlp.down_proj.weight)
    # the other methods take no gated options: they are dropped with a warning, not passed on
    with pytest.warns(UserWarning, match="gated_steps ignored"):
        factorize(model, rank=6, init="whitened", calibration=x, gated_steps=5)


def test_blockwise_reports_its_calibration_and_decomposition_time():
    _, report = factorize(llama(), rank=6, init="whitened", calibration=ids(60))
    assert set(report.timings) == {"calibration_s", "decomposition_s"}
    assert all(v > 0 for v in report.timings.values())
    assert factorize(llama(), rank=6)[1].timings == {}


def test_svd_llm_refit_fits_the_dense_models_outputs_in_sequential_mode():
    model = llama()
    x = ids(60, n=8)
    plain, _ = factorize(model, rank=4, init="whitened", calibration=x)
    refit, _ = factorize(model, rank=4, init="whitened", calibration=x, refit="u")
    # the first group sees the dense inputs, so its refit changes nothing ...
    q = "model.layers.0.self_attn.q_proj"
    torch.testing.assert_close(refit.get_submodule(q).dense_weight(),
                               plain.get_submodule(q).dense_weight(), rtol=1e-4, atol=1e-5)
    # ... later layers are refitted to the dense outputs: the output of the first block
    # moves closer to the dense model's
    def block_out_error(m):
        got = {}
        hooks = [mm.model.layers[0].register_forward_hook(
            lambda _m, _a, o, k=k: got.setdefault(k, o[0] if isinstance(o, tuple) else o))
            for k, mm in (("m", m), ("d", model))]
        logits(m, x)
        logits(model, x)
        for h in hooks:
            h.remove()
        return float((got["m"] - got["d"]).pow(2).mean())

    e_plain, e_refit = map(block_out_error, (plain, refit))
    assert e_refit < 0.9 * e_plain
