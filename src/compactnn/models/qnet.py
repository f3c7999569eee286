"""A one-hidden-layer Q-network over image observations whose hidden layer has one of
four structures at the same number of connections (nonzero entries of the hidden
layer's input-to-unit matrix):

- ``conv``: ``units`` filters of ``kernel x kernel`` (stride 1, no padding), as in
  MinAtar's reference network; its connections are ``units * Ho * Wo * C * kernel^2``,
  its distinct weights only ``units * C * kernel^2``;
- ``local``: the same connectivity without weight sharing (each hidden unit sees one
  patch: the spatially biased sparse structure);
- ``random``: as many hidden units as ``local``, the same number of connections placed
  uniformly at random;
- ``dense``: fully connected, as many units as fit in that number of connections (the
  capacity reference).

Then ReLU and a linear output per action. ``learn_hidden=False`` freezes the hidden
layer at its initialization (only the output layer learns).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compactnn._checks import check_bool, check_choice, check_int
from compactnn.sparse.fixed import (
    FixedSparseLinear,
    conv_connections,
    equal_dense_width,
    local_mask,
    random_mask,
)

__all__ = ["STRUCTURES", "StructuredQNet"]

STRUCTURES = ("dense", "random", "local", "conv")


class StructuredQNet(nn.Module):
    """``(batch, C, H, W)`` observations to ``(batch, num_actions)`` Q-values."""

    def __init__(self, in_shape: tuple[int, int, int], num_actions: int, structure: str,
                 kernel: int = 3, units: int = 16, learn_hidden: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_choice("structure", structure, STRUCTURES)
        check_int("num_actions", num_actions, 1)
        check_bool("learn_hidden", learn_hidden)
        if not isinstance(in_shape, tuple | list) or len(in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width), got {in_shape!r}")
        c, h, w = (check_int(f"in_shape[{i}]", v, 1) for i, v in enumerate(in_shape))
        check_int("units", units, 1)
        check_int("kernel", kernel, 1, min(h, w))
        conv = nn.Conv2d(c, units, kernel)
        self.connections = conv_connections(conv, (c, h, w))
        n_in = c * h * w
        if structure == "conv":
            self.hidden = conv
            width = units * (h - kernel + 1) * (w - kernel + 1)
        elif structure == "local":
            self.hidden = FixedSparseLinear(local_mask((c, h, w), kernel, units))
            width = self.hidden.out_features
        elif structure == "random":
            width = units * (h - kernel + 1) * (w - kernel + 1)
            self.hidden = FixedSparseLinear(
                random_mask(width, n_in, self.connections, generator))
        else:
            width = equal_dense_width(self.connections, n_in)
            self.hidden = nn.Linear(n_in, width)
        self.structure, self.in_shape, self.width = structure, (c, h, w), width
        self.head = nn.Linear(width, num_actions)
        self.hidden.requires_grad_(learn_hidden)

    def forward(self, x: Tensor) -> Tensor:
        if self.structure == "conv":
            return self.head(torch.relu(self.hidden(x)).flatten(1))
        return self.head(torch.relu(self.hidden(x.flatten(1))))

    def hidden_connections(self) -> int:
        """Nonzero entries of the hidden layer's unrolled input-to-unit matrix."""
        if isinstance(self.hidden, FixedSparseLinear):
            return self.hidden.nonzeros()
        if isinstance(self.hidden, nn.Conv2d):
            return conv_connections(self.hidden, self.in_shape)
        return self.hidden.weight.numel()

    def hidden_weights(self) -> int:
        """Distinct weights of the hidden layer that can be nonzero (a conv shares them)."""
        if isinstance(self.hidden, FixedSparseLinear):
            return self.hidden.nonzeros()
        return self.hidden.weight.numel()
