"""lm_layer_pruning with SmolLM2 replaced by a tiny random LLaMA: every arm removes its
share of the layers, TRSP's stage 2 tracks the smallest scales, cells resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compactnn.experiments import lm_layer_pruning as exp

transformers = pytest.importorskip("transformers")


def _load():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=8, hidden_size=16, intermediate_size=24,
                                   num_attention_heads=2, num_key_value_heads=1,
                                   vocab_size=40, tie_word_embeddings=True,
                                   max_position_embeddings=64, bos_token_id=0,
                                   eos_token_id=0, pad_token_id=0)
    stream = torch.arange(600) % 37
    return (transformers.LlamaForCausalLM(cfg).eval(),
            {"shakespeare": stream[:200], "kjv": stream[200:400]}, stream)


TINY = replace(exp.QUICK, calib_n=4, calib_len=12, batch=2, stage1_steps=2, stage2_steps=2,
               seeds=(0, 1), seq_len=16, eval_tokens=64, speed_prompt=4, speed_tokens=2)


def test_study_end_to_end_and_resume(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(exp.SETTINGS, "quick", TINY)
    result = exp.run_study(tmp_path, quick=True, log=lambda _m: None, load=_load)
    cells = exp.CellStore(tmp_path / "cells")
    for arm in exp.ARMS:
        assert f"| {arm} | 25% | 2 |" in result.markdown
        assert f"| {arm} | 40% | 3 |" in result.markdown
    trsp = cells.load("prune", "quick_TRSP_40_s1")["result"]
    assert len(trsp["tracked"]) == 3 and trsp["stage2_coef"] > 0
    assert trsp["removed"] == sorted(trsp["scales"], key=lambda n: abs(trsp["scales"][n]))[:3]
    assert trsp["tokens"] == 4 * 2 * 12
    plain = cells.load("prune", "quick_scale_no_stage_2_40_s1")["result"]
    assert plain["tracked"] == [] and plain["stage2_coef"] == 0
    run = cells.load("prune", "quick_consecutive_cosine_25_s0")["result"]["removed"]
    first = int(run[0].rsplit(".", 1)[1])
    assert run == [f"model.layers.{first}", f"model.layers.{first + 1}"]
    # two seeds: each table row is the geometric mean of the seeds' perplexities, and TRSP
    # is compared with every other arm on log perplexity
    import math

    rnd = [cells.load("prune", f"quick_random_25_s{sd}")["result"]["ppl"]["kjv"]
           for sd in (0, 1)]
    assert f"{math.sqrt(rnd[0] * rnd[1]):.2f} [" in result.markdown.split("| random | 25% |")[1]
    assert result.markdown.count("TRSP against each arm") == 4
    assert "| block influence | 2 |" in result.markdown
    monkeypatch.setattr(exp, "_choose", lambda *a: pytest.fail("re-ran a finished cell"))
    again = exp.run_study(tmp_path, quick=True, log=lambda _m: None,
                          load=lambda: pytest.fail("loaded the model"))
    assert again.markdown == result.markdown


def test_scale_training_leaves_the_weights_alone() -> None:
    model, _, stream = _load()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = torch.stack([stream[i : i + 12] for i in range(0, 48, 12)])
    run = exp.train_scales(model, calib, TINY, stage2_layers=2)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters())
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
    assert len(run["scales"]) == 8 and any(v != 1.0 for v in run["scales"].values())
