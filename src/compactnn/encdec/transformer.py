"""An ``nn.Transformer`` whose decoder layers read fused encoder layers.

:class:`FusedTransformer` wraps a built (or pretrained) ``nn.Transformer``: it runs the
encoder layer by layer, keeps every layer's output (each passed through the encoder's
final norm when it has one, the state the decoder would read had the stack ended there),
mixes them with a :class:`~compactnn.encdec.fusion.LayerFusion` and gives decoder layer
``j`` its own memory ``fused[j]``. With ``init="last"`` it computes exactly what the
wrapped transformer computes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# The encoder and decoder stacks pass their layers is_causal flags detected from the
# masks; the wrapper detects them the same way so that its layers compute the same.
from torch.nn.modules.transformer import _detect_is_causal_mask, _get_seq_len

from .fusion import LayerFusion

__all__ = ["FusedTransformer"]


class FusedTransformer(nn.Module):
    """``forward(src, tgt, ...)`` with the arguments and result of ``nn.Transformer``.

    Args:
        transformer: an ``nn.Transformer`` (its encoder and decoder are used in place, so
            pretrained weights are shared, not copied).
        init: the fusion's initialization (see :data:`~compactnn.encdec.FUSION_INITS`).
    """

    def __init__(self, transformer: nn.Transformer, *, init: str = "last") -> None:
        super().__init__()
        if not isinstance(transformer, nn.Transformer):
            raise TypeError(f"transformer must be an nn.Transformer, got "
                            f"{type(transformer).__name__}")
        self.transformer = transformer
        n_enc = len(transformer.encoder.layers)
        n_dec = len(transformer.decoder.layers)
        p = next(transformer.parameters())
        self.fusion = LayerFusion(n_enc, n_dec, init=init).to(p.device, p.dtype)

    def encoder_states(self, src: Tensor, src_mask: Tensor | None = None,
                       src_key_padding_mask: Tensor | None = None,
                       src_is_causal: bool = False) -> Tensor:
        """Every encoder layer's output, normed like the final one, ``(S, ...)``."""
        enc = self.transformer.encoder
        src_is_causal = _detect_is_causal_mask(
            src_mask, src_is_causal, _get_seq_len(src, enc.layers[0].self_attn.batch_first))
        states = []
        h = src
        for layer in enc.layers:
            h = layer(h, src_mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=src_is_causal)
            states.append(enc.norm(h) if enc.norm is not None else h)

        return torch.stack(states)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None,
                tgt_mask: Tensor | None = None, memory_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None,
                src_is_causal: bool = False, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> Tensor:
        memories = self.fusion(self.encoder_states(src, src_mask, src_key_padding_mask,
                                                   src_is_causal))
        dec = self.transformer.decoder
        tgt_is_causal = _detect_is_causal_mask(
            tgt_mask, tgt_is_causal, _get_seq_len(tgt, dec.layers[0].self_attn.batch_first))
        h = tgt
        for layer, memory in zip(dec.layers, memories.unbind(0), strict=True):
            h = layer(h, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        return dec.norm(h) if dec.norm is not None else h
