"""A small decoder-only transformer for character-level language modelling (nanoGPT's
shape: pre-norm blocks of causal self-attention and a feed-forward block, learned
positions, a tied output head), whose feed-forward block may be a mixture of experts.

``forward(ids)`` returns ``(logits, aux_loss)``: ``aux_loss`` sums the mixtures' gate
regularizers (zero for dense blocks and in eval mode), for the training loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compactnn._checks import check_choice, check_float, check_int
from compactnn.moe import MoEFeedForward

__all__ = ["CharGPT", "CharGPTConfig"]


@dataclass(frozen=True)
class CharGPTConfig:
    """Shape of a :class:`CharGPT`.

    ``ffn="dense"`` is one MLP ``dim -> hidden -> dim`` per block; otherwise ``ffn`` names
    a gate of :class:`~compactnn.moe.MoEFeedForward` (``"softmax"``, ``"topk"``,
    ``"noisy_topk"``, ``"dselect_k"``) over ``num_experts`` experts of width ``hidden``
    each, ``k`` per token, with ``gate_options`` and ``execution``."""

    vocab: int
    context: int = 64
    dim: int = 128
    layers: int = 4
    heads: int = 4
    hidden: int = 512
    dropout: float = 0.0
    ffn: str = "dense"
    num_experts: int = 8
    k: int = 2
    gate_options: dict[str, Any] = field(default_factory=dict)
    execution: str = "auto"

    def __post_init__(self) -> None:
        check_int("vocab", self.vocab, minimum=2)
        check_int("context", self.context, minimum=1)
        check_int("dim", self.dim, minimum=1)
        check_int("layers", self.layers, minimum=1)
        check_int("heads", self.heads, minimum=1)
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} must be a multiple of heads={self.heads}")
        check_int("hidden", self.hidden, minimum=1)
        check_float("dropout", self.dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        check_choice("ffn", self.ffn, ("dense", "softmax", "topk", "noisy_topk", "dselect_k"))
        if not isinstance(self.gate_options, dict):
            raise TypeError(f"gate_options must be a dict, got {type(self.gate_options).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _DenseFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.dropout(self.down(F.gelu(self.up(x)))), x.new_zeros(())


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, c: CharGPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(c.dim)
        self.attn = _Attention(c.dim, c.heads, c.dropout)
        self.ln2 = nn.LayerNorm(c.dim)
        if c.ffn == "dense":
            self.ffn: nn.Module = _DenseFFN(c.dim, c.hidden, c.dropout)
        else:
            self.ffn = MoEFeedForward(c.dim, c.hidden, c.num_experts, gate=c.ffn, k=c.k,
                                      gate_options=dict(c.gate_options), dropout=c.dropout,
                                      execution=c.execution)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.attn(self.ln1(x))
        h, aux = self.ffn(self.ln2(x))
        return x + h, aux


class CharGPT(nn.Module):
    """``ids (batch, tokens <= context)`` (long) to ``(logits (batch, tokens, vocab), aux)``."""

    def __init__(self, config: CharGPTConfig) -> None:
        super().__init__()
        if not isinstance(config, CharGPTConfig):
            raise TypeError(f"config must be a CharGPTConfig, got {type(config).__name__}")
        self.config = config
        self.tok = nn.Embedding(config.vocab, config.dim)
        self.pos = nn.Embedding(config.context, config.dim)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.ln = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.vocab, bias=False)
        self.head.weight = self.tok.weight
        with torch.no_grad():  # nanoGPT's embedding scale (the head shares it)
            self.tok.weight.normal_(0, 0.02)
            self.pos.weight.normal_(0, 0.02)

    def moe_blocks(self) -> list[MoEFeedForward]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoEFeedForward)]

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2:
            raise ValueError("ids must be a long tensor of shape (batch, tokens), got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} "
                             f"{tuple(getattr(ids, 'shape', ()))}")
        t = ids.shape[1]
        if not 1 <= t <= self.config.context:
            raise ValueError(f"ids has {t} tokens; the context is 1..{self.config.context}")
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        aux = x.new_zeros(())
        for block in self.blocks:
            x, a = block(x)
            aux = aux + a
        return self.head(self.ln(x)), aux
