"""The moe_lm experiment end to end on a tiny setting, and its character-level helpers."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from compactnn.experiments import moe_lm
from compactnn.experiments.char_lm import bits_per_char, char_data, random_windows


def test_char_data_maps_unseen_characters_to_zero() -> None:
    d = char_data("abca", "abz", "cc")
    assert d.chars[1:] == "abc"
    assert d.val.tolist() == [1, 2, 0]
    assert d.decode(d.train) == "abca"


def test_windows_are_shifted_by_one() -> None:
    ids = torch.arange(50)
    x, y = random_windows(ids, 4, 6, torch.Generator().manual_seed(0))
    assert torch.equal(y, x + 1) and x.shape == (4, 6)
    with pytest.raises(ValueError, match="too short"):
        random_windows(ids[:6], 1, 6, torch.Generator())


def test_bits_per_char_of_a_uniform_model_is_log2_vocab() -> None:
    def uniform(ids):
        return torch.zeros(*ids.shape, 7), torch.zeros(())

    assert bits_per_char(uniform, torch.arange(100) % 7, 8, 90) == pytest.approx(math.log2(7))


TINY = replace(moe_lm.QUICK, dim=8, layers=1, heads=2, context=8, batch=4, experts=4,
               expert_hidden=4, steps=4, n_trials=1, seeds=(0, 1), log_every=2,
               speed_repeats=1, eval_chars=64)


def test_study_end_to_end(tmp_path, monkeypatch) -> None:
    text = "to be or not to be, that is the question\n" * 20
    monkeypatch.setitem(moe_lm.SETTINGS, "quick", TINY)
    monkeypatch.setattr(moe_lm, "_data", lambda s: char_data(text, text[:200], text[:200]))
    result = moe_lm.run_study(tmp_path, quick=True, log=lambda _m: None)
    for arm in moe_lm.ARMS:
        assert f"| {arm} | 2 |" in result.markdown
    assert (tmp_path / "dselect_sparsity.png").exists()
    final = (tmp_path / "tune" / "final" / "dselect_k__s1.json").read_text()
    assert '"sparse_history"' in final
    # resumed: the finished final runs and the benchmark cell are read back, not re-run
    monkeypatch.setattr(moe_lm, "train_run", lambda *a: pytest.fail("re-ran a final run"))
    monkeypatch.setattr(moe_lm, "speed_cell", lambda *a: pytest.fail("re-ran the benchmark"))
    again = moe_lm.run_study(tmp_path, quick=True, log=lambda _m: None)
    assert again.markdown.split("tuning and finals")[1].split("\n", 1)[1] == \
        result.markdown.split("tuning and finals")[1].split("\n", 1)[1]


def test_dense_arm_has_the_active_size_of_k_experts() -> None:
    d = char_data("abcdefgh" * 10, "abc" * 10, "abc" * 10)
    cfg = moe_lm._config(moe_lm.FULL, d, "dense", {"lr": 1e-3})
    assert cfg.hidden == moe_lm.FULL.k * moe_lm.FULL.expert_hidden
    cfg = moe_lm._config(moe_lm.FULL, d, "dselect_k",
                         {"lr": 1e-3, "entropy_reg": 0.2, "gamma": 5.0})
    assert cfg.gate_options == {"entropy_reg": 0.2, "gamma": 5.0}
