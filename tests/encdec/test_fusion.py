"""LayerFusion and FusedTransformer: the "last" initialization is the original model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactnn.encdec import FusedTransformer, LayerFusion


def test_fusion_is_a_linear_map_over_layers() -> None:
    torch.manual_seed(0)
    fusion = LayerFusion(3, 2, init="random")
    states = torch.randn(3, 4, 5)
    out = fusion(states)
    w = fusion.weight
    for t in range(2):
        torch.testing.assert_close(out[t], sum(w[t, s] * states[s] for s in range(3)))
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    assert (w > 0).all()
    assert torch.equal(fusion(list(states)), out)


def test_last_init_copies_the_last_layer_exactly() -> None:
    states = torch.randn(4, 2, 3, 6) * 1e3
    out = LayerFusion(4, 3)(states)
    for t in range(3):
        assert torch.equal(out[t], states[-1])
    torch.testing.assert_close(LayerFusion(4, 1, init="uniform")(states)[0], states.mean(0))


def test_fusion_arguments() -> None:
    with pytest.raises(ValueError, match="init"):
        LayerFusion(2, 2, init="ones")
    with pytest.raises(ValueError, match="num_sources"):
        LayerFusion(0, 2)
    fusion = LayerFusion(2, 2)
    with pytest.raises(ValueError, match="stack 2 layer outputs"):
        fusion(torch.randn(3, 4))
    with pytest.raises(ValueError, match="equal shapes"):
        fusion([torch.randn(2), torch.randn(3)])
    with pytest.raises(TypeError, match="states"):
        fusion([])


def _transformer(norm_first: bool) -> nn.Transformer:
    torch.manual_seed(0)
    return nn.Transformer(d_model=16, nhead=2, num_encoder_layers=3, num_decoder_layers=2,
                          dim_feedforward=24, dropout=0.0, batch_first=True,
                          norm_first=norm_first)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("masks", [False, True])
def test_wrapped_transformer_at_init_is_the_original_exactly(norm_first: bool,
                                                            masks: bool) -> None:
    base = _transformer(norm_first)
    fused = FusedTransformer(base)
    src, tgt = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    kw = {}
    if masks:
        pad = torch.zeros(2, 7, dtype=torch.bool)
        pad[1, 5:] = True
        kw = {"tgt_mask": nn.Transformer.generate_square_subsequent_mask(5),
              "src_key_padding_mask": pad, "memory_key_padding_mask": pad}
    want = base(src, tgt, **kw)
    got = fused(src, tgt, **kw)
    assert torch.equal(got, want)
    # the gradient of the shared weights is the original model's too
    g_want = torch.autograd.grad(want.square().sum(), list(base.parameters()))
    g_got = torch.autograd.grad(fused(src, tgt, **kw).square().sum(), list(base.parameters()))
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.equal(a, b)


def test_decoder_layers_read_their_own_memory() -> None:
    base = _transformer(True)
    fused = FusedTransformer(base, init="random")
    src, tgt = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    states = fused.encoder_states(src)
    assert states.shape == (3, 2, 7, 16)
    torch.testing.assert_close(states[-1], base.encoder(src))
    memories = fused.fusion(states)
    h = tgt
    for layer, m in zip(base.decoder.layers, memories, strict=True):
        h = layer(h, m)
    torch.testing.assert_close(fused(src, tgt), base.decoder.norm(h))
    assert not torch.allclose(fused(src, tgt), base(src, tgt))


def test_wraps_transformers_only() -> None:
    with pytest.raises(TypeError, match="nn.Transformer"):
        FusedTransformer(nn.Linear(2, 2))
