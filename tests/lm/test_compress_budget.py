"""Budgets counted over all linear layers: the attention projections kept dense and the
feed-forward layers taking the whole budget (compress_lm's keep_attention_dense), on
tiny random LLaMA, GPT-2 and BERT models made here."""

import math

import pytest
import torch
from torch import nn

from compactnn import LowRankLinear, factorize
from compactnn.lm.compress import attention_layers, compress_lm
from compactnn.surgery.factorize import linear_params

transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)


def llama(tie=True):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=60,
                                   tie_word_embeddings=tie, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                  num_attention_heads=4, vocab_size=50,
                                  max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


# per block: q 32x32, k 16x32, v 16x32, o 32x32 (attention); gate, up 64x32, down 32x64
ATTN, MLP = 32 * 32 * 2 + 16 * 32 * 2, 64 * 32 * 3


def test_linear_params_counts_every_linear_layer_once_and_not_a_tied_head():
    assert linear_params(llama(tie=True)) == 2 * (ATTN + MLP)
    assert linear_params(llama(tie=False)) == 2 * (ATTN + MLP) + 60 * 32  # the head
    # GPT-2: Conv1D weights and biases; the head is tied to the token embedding
    g = gpt2()
    per_block = (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)
    assert linear_params(g) == 2 * per_block
    # a plain stack: every Linear, biases included, a shared layer once
    shared = nn.Linear(4, 4)
    assert linear_params(nn.Sequential(nn.Linear(3, 4), shared, shared, nn.LayerNorm(4))) \
        == 3 * 4 + 4 + 4 * 4 + 4


def test_attention_layers_names_the_projections_of_each_architecture():
    assert attention_layers(llama()) == [f"model.layers.{i}.self_attn.{p}_proj"
                                         for i in range(2) for p in "qkvo"]
    assert attention_layers(gpt2()) == [f"transformer.h.{i}.attn.{p}"
                                        for i in range(2) for p in ("c_attn", "c_proj")]
    assert attention_layers(bert()) == [f"encoder.layer.{i}.attention.{p}"
                                        for i in range(2) for p in
                                        ("self.query", "self.key", "self.value", "output.dense")]
    assert attention_layers(nn.Sequential(nn.Linear(3, 3))) == []


def test_linear_budget_is_taken_from_the_selected_layers_alone():
    model = llama()
    out, report = factorize(model, param_ratio=0.8, budget_over="linear",
                            allocation="layerwise", include=r".*\.mlp\..*")
    # the MLP keeps q of its own parameters so that the linear layers keep 80%
    q = 1 - 0.2 * (ATTN + MLP) / MLP
    for r in report.layers:
        m, n = map(int, r.shape.split("x"))
        if "mlp" in r.name:
            assert r.rank == math.floor(q * m * n / (m + n) + 1e-9)
        elif r.name != "lm_head":
            assert r.rank is None and "include" in r.note
    assert report.linear_params_before == 2 * (ATTN + MLP)
    assert report.linear_param_ratio <= 0.8 < report.linear_param_ratio + 0.03
    assert report.selected_param_ratio < report.linear_param_ratio  # the MLP gave more
    assert report.linear_params_after == linear_params(out)
    # the same budget counted over the MLP alone removes less
    _, own = factorize(model, param_ratio=0.8, budget_over="selected", allocation="layerwise",
                       include=r".*\.mlp\..*")
    assert own.linear_param_ratio > report.linear_param_ratio
    # a budget the MLP cannot meet at rank 1 is refused, naming the scope
    with pytest.raises(ValueError, match="of the linear layers"):
        factorize(model, param_ratio=0.3, budget_over="linear", include=r".*\.mlp\..*")


def test_keep_attention_dense_leaves_the_projections_bit_identical():
    model = llama()
    out, report = compress_lm(model, "svd", 0.2, keep_attention_dense=True)
    for name in attention_layers(model):
        mod = out.get_submodule(name)
        assert type(mod) is nn.Linear
        assert torch.equal(mod.weight, model.get_submodule(name).weight)
    assert all(isinstance(out.get_submodule(r.name), LowRankLinear)
               for r in report.layers if "mlp" in r.name)
    assert 0.77 < report.linear_param_ratio <= 0.8
    # the default compresses every layer at 80% of its own parameters, about the same total
    _, every = compress_lm(model, "svd", 0.2)
    assert abs(every.linear_param_ratio - report.linear_param_ratio) < 0.03
    # budget_over="selected": the MLP keeps 80% of its own, the model more in all
    _, own = compress_lm(model, "svd", 0.2, keep_attention_dense=True, budget_over="selected")
    assert own.selected_param_ratio <= 0.8 < own.linear_param_ratio


def test_keep_attention_dense_combines_with_exclude_patterns():
    model = llama()
    # a regex exclude stays a regex (full match), joined with the attention names
    _, report = compress_lm(model, "svd", 0.2, keep_attention_dense=True,
                            exclude=r"model\.layers\.0\.mlp\.down_proj")
    ranks = {r.name: r.rank for r in report.layers}
    assert ranks["model.layers.0.mlp.down_proj"] is None
    assert ranks["model.layers.1.mlp.down_proj"] is not None
    assert all(ranks[n] is None for n in attention_layers(model))
    # a list of names is extended
    _, report = compress_lm(model, "svd", 0.2, keep_attention_dense=True, exclude=["up_proj"])
    ranks = {r.name: r.rank for r in report.layers}
    assert ranks["model.layers.1.mlp.up_proj"] is None
    assert ranks["model.layers.1.mlp.gate_proj"] is not None


def test_keep_attention_dense_and_budget_over_are_checked():
    model = llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match="keep_attention_dense"):
        compress_lm(model, "svd", 0.2, keep_attention_dense=1)
    with pytest.raises(ValueError, match="budget_over"):
        compress_lm(model, "svd", 0.2, budget_over="model")
    with pytest.raises(ValueError, match="no attention module"):
        compress_lm(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), "svd", 0.2,
                    keep_attention_dense=True)
    # 70% removed cannot come from the MLP alone (it is 2/3 of the linear layers)
    with pytest.raises(ValueError, match="cannot be met"):
        compress_lm(model, "svd", 0.7, keep_attention_dense=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("variant", ["attention", "kv"])
def test_the_studys_quick_mode_budget_equals_the_library_default(variant):
    # lm_compress's quick mode restricts the blocks (include) and converts the budget to
    # the share of the compressed layers by hand; over every block that gives the
    # library's ranks
    from compactnn.experiments.lm_compress_attention import compress, dense_layers

    model = llama()
    _, lib = compress(model, "svd", 0.3, None, None, variant)
    _, quick = compress(model, "svd", 0.3, None, r"model\.layers\.\d+\..*", variant)
    assert [(r.name, r.rank) for r in lib.layers] == [(r.name, r.rank) for r in quick.layers]
    kept = {r.name for r in lib.layers if r.rank is None and r.name != "lm_head"}
    assert kept == set(dense_layers(model, variant))
    assert lib.linear_param_ratio <= 0.7 < lib.linear_param_ratio + 0.05
    if variant == "kv":
        assert kept == {f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "kv"}


@pytest.mark.parametrize("bad, error, message", [
    (5, TypeError, "got 5$"), ([3], TypeError, r"got \[3\]$"),
    ("(", ValueError, "exclude='\\(' is not a valid regex"),
    ("nomatch", ValueError, "'nomatch' matched no module"),
    (["nomatch"], ValueError, "'nomatch' matched no module")])
def test_keep_attention_dense_reports_the_users_own_exclude(bad, error, message):
    # the attention names are joined to exclude only after the user's value is checked,
    # so an error names what the user passed, not the joined pattern
    with pytest.raises(error, match=message):
        compress_lm(llama(), "svd", 0.2, keep_attention_dense=True, exclude=bad)


def test_linear_scope_of_a_flop_budget_is_the_models_mac_count():
    # MACs are counted over the linear layers in every scope, so "linear" and "model"
    # plan the same ranks for a FLOP budget
    model = llama(tie=False)
    x = torch.zeros(1, 8, dtype=torch.long)
    _, lin = factorize(model, flop_ratio=0.6, budget_over="linear", example_inputs=x)
    _, mod = factorize(model, flop_ratio=0.6, budget_over="model", example_inputs=x)
    assert [r.rank for r in lin.layers] == [r.rank for r in mod.layers]
    assert lin.flop_ratio <= 0.6


def test_the_documented_kv_recipe_is_the_studys_kv_variant():
    from compactnn.experiments.lm_compress_attention import compress

    model = llama()
    _, recipe = compress_lm(model, "svd", 0.3, exclude=["k_proj", "v_proj"])
    _, study = compress(model, "svd", 0.3, None, None, "kv")
    assert [(r.name, r.rank) for r in recipe.layers] == [(r.name, r.rank) for r in study.layers]
