"""Shared models and helpers of the surgery tests."""

from __future__ import annotations

import torch
from torch import nn

from compactnn import LowRankLayer
from compactnn.models import MLP, MLPConfig


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(64, 64, (3, 1), padding="same", groups=2, padding_mode="reflect")
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64, 96)
        self.fc2 = nn.Linear(96, 10)

    def forward(self, x):
        x = self.conv1(x).relu()
        x = self.conv2(x).relu()
        x = self.conv3(x).relu()
        x = self.bn(self.conv4(x)).relu()
        return self.fc2(self.fc1(x.mean((2, 3))).relu())


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(self.fc1(self.norm(x)).relu())


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(24, 64)
        self.blocks = nn.ModuleList([Block(64), Block(64)])
        self.heads = nn.ModuleDict({
            "cls": nn.Linear(64, 10),
            "reg": nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16)),
        })

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return torch.cat([self.heads["cls"](x), self.heads["reg"](x)], -1)


def make_mlp() -> nn.Module:
    return MLP(MLPConfig(in_features=64, hidden=(256, 256), num_classes=10))


MODELS = {
    "mlp": (make_mlp, lambda: torch.randn(4, 64)),
    "cnn": (SmallCNN, lambda: torch.randn(2, 3, 8, 8)),
    "nested": (Nested, lambda: torch.randn(3, 5, 24)),
}


def build(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    make, example = MODELS[name]
    torch.manual_seed(seed)
    model = make().eval()
    return model, example()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def snapshot(model: nn.Module) -> tuple[dict, dict]:
    """The state dict, and each module's type and train/eval mode."""
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: (type(m), m.training) for n, m in model.named_modules()})


def assert_unchanged(model: nn.Module, snap: tuple[dict, dict]) -> None:
    state, types = snap
    assert {n: (type(m), m.training) for n, m in model.named_modules()} == types
    now = model.state_dict()
    assert set(now) == set(state)
    for k, v in state.items():
        torch.testing.assert_close(now[k], v, rtol=0, atol=0, equal_nan=True)


def lowrank_names(model: nn.Module) -> dict[str, LowRankLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LowRankLayer)}


