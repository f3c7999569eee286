"""A plain ReLU multilayer perceptron with a dataclass config."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["MLP", "MLPConfig"]


@dataclass
class MLPConfig:
    in_features: int = 64
    hidden: tuple[int, ...] = (256, 256, 256)
    num_classes: int = 10
    dropout: float = 0.0


class MLP(nn.Module):
    """``Linear -> ReLU`` blocks then a linear classifier. Layers are named
    ``layers.0 .. layers.{L-1}`` (hidden) and ``head`` so that surgery patterns
    can address them."""

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MLPConfig()
        dims = [cfg.in_features, *cfg.hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:],
                                                                       strict=True))
        self.act = nn.ReLU()
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(dims[-1], cfg.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = self.drop(self.act(layer(x)))
        return self.head(x)
