"""Reference models used by the experiments, written once and made low-rank
through ``compactnn.factorize``."""

from compactnn.models.mlp import MLP, MLPConfig
from compactnn.models.qnet import STRUCTURES, StructuredQNet
from compactnn.models.resnet import RESNET_DENSE_EXCLUDE, ResNet, ResNetConfig
from compactnn.models.shortcut import ShortcutConvNet
from compactnn.models.two_layer import TwoLayerNets

__all__ = ["MLP", "MLPConfig", "RESNET_DENSE_EXCLUDE", "STRUCTURES", "ResNet", "ResNetConfig",
           "ShortcutConvNet", "StructuredQNet", "TwoLayerNets"]
