"""A bias-free fully connected map over the layer axis: ``T`` targets from ``S`` sources.

``out[t] = sum_s W[t, s] * states[s]`` with ``states`` stacked ``(S, ...)``. Initialized
``"last"``, ``W[t, S-1] = 1`` and every other entry 0, it reproduces the usual encoder-
decoder connection (every decoder layer reads the last encoder layer) *exactly*: each
output element is ``1 * x + 0 * y + ...``, and products with 0 and 1 are exact in floating
point (for finite states).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from compactnn._checks import check_choice, check_int

__all__ = ["FUSION_INITS", "LayerFusion"]

#: ``"last"``: the original connection; ``"random"``: each row uniform in (0, 1) scaled to
#: sum 1 (a random convex combination, same scale as the states); ``"uniform"``: every
#: row ``1/S`` (the mean of the layers).
FUSION_INITS = ("last", "random", "uniform")


class LayerFusion(nn.Module):
    """``T`` learned combinations of ``S`` stacked layer outputs.

    Args:
        num_sources: ``S``, the encoder layers read.
        num_targets: ``T``, the decoder layers fed.
        init: one of :data:`FUSION_INITS`.

    ``forward(states)`` takes a ``(S, ...)`` tensor or a sequence of ``S`` equal-shape
    tensors and returns ``(T, ...)``.
    """

    def __init__(self, num_sources: int, num_targets: int, *, init: str = "last") -> None:
        super().__init__()
        self.num_sources = check_int("num_sources", num_sources, minimum=1)
        self.num_targets = check_int("num_targets", num_targets, minimum=1)
        self.init = check_choice("init", init, FUSION_INITS)
        self.weight = nn.Parameter(torch.empty(self.num_targets, self.num_sources))
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"num_sources={self.num_sources}, num_targets={self.num_targets}, init={self.init!r}"

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.init == "last":
                self.weight.zero_()
                self.weight[:, -1] = 1.0
            elif self.init == "uniform":
                self.weight.fill_(1.0 / self.num_sources)
            else:
                self.weight.uniform_(0.0, 1.0)
                self.weight.div_(self.weight.sum(dim=1, keepdim=True))

    def forward(self, states: Tensor | Sequence[Tensor]) -> Tensor:
        if not isinstance(states, Tensor):
            states = list(states)
            if not states or not all(isinstance(s, Tensor) for s in states):
                raise TypeError("states must be a tensor (S, ...) or a non-empty sequence of "
                                "tensors")
            if any(s.shape != states[0].shape for s in states):
                raise ValueError("the layer outputs must have equal shapes, got "
                                 f"{[tuple(s.shape) for s in states]}")
            states = torch.stack(states)
        if states.dim() < 1 or states.shape[0] != self.num_sources:
            raise ValueError(f"states must stack {self.num_sources} layer outputs on the first "
                             f"axis, got shape {tuple(states.shape)}")
        flat = states.reshape(self.num_sources, -1)
        return (self.weight.to(flat.dtype) @ flat).view(self.num_targets, *states.shape[1:])
