"""CharSeq2Seq: adding the fusion at the original init keeps the function exactly."""

from __future__ import annotations

import pytest
import torch

from compactnn.models.char_seq2seq import CharSeq2Seq


def _model() -> CharSeq2Seq:
    torch.manual_seed(0)
    return CharSeq2Seq(13, context=10, dim=16, heads=2, encoder_layers=3, decoder_layers=2,
                       hidden=24)


def test_add_fusion_keeps_the_function_exactly() -> None:
    model = _model()
    src, tgt = torch.randint(0, 13, (3, 10)), torch.randint(0, 13, (3, 7))
    before = model(src, tgt)
    model.add_fusion("last")
    assert torch.equal(model(src, tgt), before)
    assert model.fusion.weight.shape == (2, 3)
    with pytest.raises(ValueError, match="already"):
        model.add_fusion()
    with torch.no_grad():
        model.fusion.weight[0] = torch.tensor([0.5, 0.25, 0.25])
    assert not torch.allclose(model(src, tgt), before)


def test_decoder_is_causal() -> None:
    model = _model().eval()
    src, tgt = torch.randint(0, 13, (2, 10)), torch.randint(0, 13, (2, 6))
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 13
    torch.testing.assert_close(model(src, tgt)[:, :4], model(src, changed)[:, :4])


def test_bad_inputs() -> None:
    model = _model()
    with pytest.raises(ValueError, match="src"):
        model(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(2, 11, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of heads"):
        CharSeq2Seq(5, dim=10, heads=3)
