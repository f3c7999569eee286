"""A small character-level encoder-decoder (``nn.Transformer``, pre-norm, learned
positions, shared embeddings and tied head) that can be given an encoder-layer fusion
after it is built or pretrained (:meth:`CharSeq2Seq.add_fusion`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactnn._checks import check_int
from compactnn.encdec import FusedTransformer

__all__ = ["CharSeq2Seq"]


class CharSeq2Seq(nn.Module):
    """``forward(src_ids, tgt_ids) -> logits (batch, tgt_len, vocab)`` with a causal
    decoder; ``vocab`` includes any special ids the task uses."""

    def __init__(self, vocab: int, *, context: int = 64, dim: int = 64, heads: int = 4,
                 encoder_layers: int = 3, decoder_layers: int = 3, hidden: int = 256) -> None:
        super().__init__()
        self.vocab = check_int("vocab", vocab, minimum=2)
        self.context = check_int("context", context, minimum=1)
        check_int("dim", dim, minimum=1)
        check_int("heads", heads, minimum=1)
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.core: nn.Module = nn.Transformer(
            d_model=dim, nhead=heads, num_encoder_layers=check_int("encoder_layers",
                                                                  encoder_layers, minimum=1),
            num_decoder_layers=check_int("decoder_layers", decoder_layers, minimum=1),
            dim_feedforward=check_int("hidden", hidden, minimum=1), dropout=0.0,
            batch_first=True, norm_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight
        with torch.no_grad():
            self.tok.weight.normal_(0, 0.02)
            self.pos.weight.normal_(0, 0.02)

    @property
    def fusion(self) -> nn.Module | None:
        return self.core.fusion if isinstance(self.core, FusedTransformer) else None

    def add_fusion(self, init: str = "last") -> None:
        """Route the encoder layers to the decoder layers through a
        :class:`~compactnn.encdec.LayerFusion` (``init="last"``: the same function)."""
        if isinstance(self.core, FusedTransformer):
            raise ValueError("the model already has a fusion layer")
        self.core = FusedTransformer(self.core, init=init)

    def _embed(self, ids: Tensor, what: str) -> Tensor:
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise ValueError(f"{what} must be a long tensor (batch, tokens)")
        if not 1 <= ids.shape[1] <= self.context:
            raise ValueError(f"{what} has {ids.shape[1]} tokens; the context is 1..{self.context}")
        return self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)
        h = self.core(self._embed(src, "src"), self._embed(tgt, "tgt"), tgt_mask=mask,
                      tgt_is_causal=True)
        return self.head(h)
