"""Reference models used by the experiments, written once and made low-rank
through ``compactnn.factorize``."""

from compactnn.models.mlp import MLP, MLPConfig
from compactnn.models.resnet import RESNET_DENSE_EXCLUDE, ResNet, ResNetConfig
from compactnn.models.shortcut import ShortcutConvNet

__all__ = ["MLP", "MLPConfig", "RESNET_DENSE_EXCLUDE", "ResNet", "ResNetConfig",
           "ShortcutConvNet"]
