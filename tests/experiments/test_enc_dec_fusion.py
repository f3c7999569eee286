"""The enc_dec_fusion experiment on a tiny setting: corruption, set-ups, resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compactnn.experiments import enc_dec_fusion as exp
from compactnn.experiments.char_lm import char_data


def test_corrupt_masks_spans_of_three_up_to_the_rate() -> None:
    rows = torch.arange(40).view(2, 20)
    src, masked = exp.corrupt(rows, 99, torch.Generator().manual_seed(0))
    assert (masked.sum(1) >= 3).all()  # ceil(0.15 * 20)
    assert torch.equal(src[masked], torch.full_like(src[masked], 99))
    assert torch.equal(src[~masked], rows[~masked])
    for b in range(2):  # every masked run is a union of length-3 spans
        runs, n = [], 0
        for m in masked[b].tolist() + [False]:
            if m:
                n += 1
            elif n:
                runs.append(n)
                n = 0
        assert all(r >= 3 for r in runs)


TINY = replace(exp.QUICK, dim=8, heads=2, encoder_layers=2, decoder_layers=2, hidden=8,
               context=12, batch=4, pretrain_steps=3, finetune_steps=2, seeds=(0, 1),
               eval_windows=4)


def test_study_end_to_end_and_resume(tmp_path, monkeypatch) -> None:
    text = "and the lord said unto them, go forth\n" * 10
    data = char_data(text, text[:150], text[150:])
    monkeypatch.setitem(exp.SETTINGS, "quick", TINY)
    monkeypatch.setattr(exp, "_data", lambda s: (data, data.val, data.test))
    result = exp.run_study(tmp_path, quick=True, log=lambda _m: None)
    assert "equals the pretrained model's scores exactly: True" in result.markdown
    for label in exp.SETUPS.values():
        assert label in result.markdown
    a = exp.CellStore(tmp_path / "cells").load("finetune", "quick_a_s0")["result"]
    c = exp.CellStore(tmp_path / "cells").load("finetune", "quick_c_s0")["result"]
    assert a["at_init"] == c["pretrained"] and len(a["fusion"]) == 2
    assert "fusion" not in c
    monkeypatch.setattr(exp, "finetune_cell", lambda *a: pytest.fail("re-ran a finished cell"))
    monkeypatch.setattr(exp, "pretrain_cell", lambda *a: pytest.fail("re-ran a pretraining"))
    assert exp.run_study(tmp_path, quick=True, log=lambda _m: None).markdown == result.markdown
