"""CharGPT: causal, per-token mixtures in the feed-forward blocks, the aux loss summed."""

from __future__ import annotations

import pytest
import torch

from compactnn.models.char_gpt import CharGPT, CharGPTConfig

FFNS = ("dense", "softmax", "topk", "dselect_k")


def _model(ffn: str, **kw) -> CharGPT:
    torch.manual_seed(0)
    return CharGPT(CharGPTConfig(vocab=11, context=8, dim=16, layers=2, heads=2, hidden=8,
                                 ffn=ffn, num_experts=4, k=2, **kw))


@pytest.mark.parametrize("ffn", FFNS)
def test_future_tokens_do_not_change_past_logits(ffn: str) -> None:
    model = _model(ffn).eval()
    ids = torch.randint(0, 11, (3, 8))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    a, _ = model(ids)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


@pytest.mark.parametrize("ffn", FFNS)
def test_aux_is_the_sum_of_the_gates(ffn: str) -> None:
    model = _model(ffn, gate_options={"entropy_reg": 0.5} if ffn == "dselect_k" else {})
    ids = torch.randint(0, 11, (2, 6))
    captured = []
    for block in model.moe_blocks():
        block.register_forward_hook(lambda _m, _i, out: captured.append(out[1]))
    _, aux = model(ids)
    if ffn == "dense":
        assert model.moe_blocks() == [] and aux.item() == 0
    else:
        assert len(captured) == 2
        torch.testing.assert_close(aux, captured[0] + captured[1])
        assert aux.item() > 0 or ffn == "softmax"


def test_head_is_tied_and_shapes() -> None:
    model = _model("topk")
    assert model.head.weight is model.tok.weight
    logits, _ = model(torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, 11)


def test_bad_inputs() -> None:
    model = _model("dense")
    with pytest.raises(ValueError, match="long tensor"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="multiple of heads"):
        CharGPTConfig(vocab=5, dim=10, heads=3)
    with pytest.raises(ValueError, match="ffn"):
        CharGPTConfig(vocab=5, ffn="expert_choice")
