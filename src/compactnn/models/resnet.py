"""CIFAR-style ResNet (He, Zhang, Ren & Sun 2016, Sec. 4.2) for small images.

The layout of the CIFAR ResNets: a 3x3 ``stem`` convolution to 16 channels,
then three stages of ``n = (depth - 2) / 6`` BasicBlocks at widths 16, 32, 64
(the first block of stages 2 and 3 halves the resolution with a stride-2 conv),
global average pooling and a linear classifier ``fc``. ``depth=20`` gives
ResNet-20 (n = 3): with the default option-A shortcuts 269,722 parameters on
3-channel CIFAR (the paper's 0.27M) and 269,434 on 1-channel input (option B:
272,474 and 272,186). With ``in_channels=1`` it takes
28x28 grayscale images (Fashion-MNIST): the stages run at 28x28, 14x14 and 7x7.

Shortcuts where a block changes shape (``ResNetConfig.shortcut``):

* ``"A"`` (default, the paper's CIFAR choice): identity, subsampled by taking
  every second pixel and zero-padded in channels; it has no parameters, so
  every parameter of a residual branch is in a Conv2d that ``factorize`` or a
  pruner can reach.
* ``"B"``: a 1x1 convolution with the block's stride, followed by BatchNorm
  (a projection, as in the ImageNet ResNets); adds 2 small convs.

Module names, for surgery patterns and forward hooks:
``stem``, ``stem_bn``, ``stem_relu``; ``layer{1,2,3}.{i}.{conv1,bn1,relu1,conv2,
bn2,shortcut,relu2}`` (``shortcut`` is ``shortcut.conv`` / ``shortcut.bn`` for
option B); ``pool``; ``fc``. Every ReLU is its own ``nn.ReLU`` module:
``relu1`` follows ``conv1``/``bn1``; ``relu2`` follows the sum of ``bn2`` and
the shortcut. Convolutions have no bias (BatchNorm follows each of them).

Initialization: convolutions Kaiming-normal for ReLU (``fan_out`` mode, as
torchvision); BatchNorm weight 1 and bias 0 (``zero_init_residual`` sets the
weight of each block's last BatchNorm to 0, Goyal et al. 2017); ``fc`` keeps
PyTorch's default Linear init. Draws come from the global torch generator, so
``torch.manual_seed`` makes them reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNet", "ResNetConfig", "BasicBlock", "RESNET_DENSE_EXCLUDE"]

SHORTCUTS = ("A", "B")
# Names of the first and last layer of a ResNet, kept dense by custom:
# factorize(model, ..., exclude=RESNET_DENSE_EXCLUDE)
RESNET_DENSE_EXCLUDE: tuple[str, ...] = ("stem", "fc")


@dataclass
class ResNetConfig:
    depth: int = 20  # 6n + 2: 20, 32, 44, 56, 110
    widths: tuple[int, int, int] = (16, 32, 64)
    in_channels: int = 1
    num_classes: int = 10
    shortcut: str = "A"  # "A": zero-padded identity, "B": 1x1 conv + BN projection
    zero_init_residual: bool = False

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    def validate(self) -> None:
        if (isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 8
                or (self.depth - 2) % 6):
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got "
                             f"{self.depth!r}")
        if len(self.widths) != 3 or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be three positive ints, got {self.widths!r}")
        w1, w2, w3 = self.widths
        if self.shortcut == "A" and not w1 <= w2 <= w3:
            raise ValueError("option-A shortcuts zero-pad channels, so widths must not "
                             f"decrease; got {self.widths!r} (use shortcut='B')")
        for name in ("in_channels", "num_classes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")


class _PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra, self.stride = out_channels - in_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.extra}"


class _ProjShortcut(nn.Module):
    """Option B: 1x1 convolution with the block's stride, then BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``, 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = _ProjShortcut(in_channels, out_channels, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-layout ResNet (see the module docstring); input ``(N, C, H, W)``,
    output logits ``(N, num_classes)``."""

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ResNetConfig()
        cfg.validate()
        w1, w2, w3 = cfg.widths
        self.stem = nn.Conv2d(cfg.in_channels, w1, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(w1)
        self.stem_relu = nn.ReLU()
        n = cfg.blocks_per_stage
        self.layer1 = self._stage(w1, w1, n, 1)
        self.layer2 = self._stage(w1, w2, n, 2)
        self.layer3 = self._stage(w2, w3, n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, cfg.num_classes)
        self.reset_parameters()

    def _stage(self, c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(c_in, c_out, stride, self.config.shortcut)]
        blocks += [BasicBlock(c_out, c_out, 1, self.config.shortcut) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.config.zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_relu(self.stem_bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))
